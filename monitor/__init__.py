"""fastlaunch-monitor: watches EC2 Windows fast launch images across accounts and regions."""

__version__ = "0.1.0"
