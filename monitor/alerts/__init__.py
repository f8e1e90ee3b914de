"""Alerts: which transitions alert (rules), what receivers get (formats), and delivery."""
