"""The configuration: the TOML file read into typed settings, with one-line errors naming the
file, the key and the fix; and the proxies webhooks go through.
"""
