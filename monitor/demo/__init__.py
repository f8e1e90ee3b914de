"""The demo: the daemon run against the built-in EC2 simulator (a moto extension for fast
launch, also the tests' endpoint) with a local webhook receiver.
"""
