"""What the daemon shows: the current state kept in memory, the Prometheus families rendered
from it, and the HTTP server of `/metrics`, `/healthz` and `/readyz`.
"""
