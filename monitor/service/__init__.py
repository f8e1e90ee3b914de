"""The service shell: the daemon's wiring and its scheduled steps, systemd notification and
watchdog, preflight checks, and keeping the schedule through wall-clock steps.
"""
