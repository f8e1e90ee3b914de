"""Which HTTP proxy a webhook URL goes through, from the config or the environment (pure).

A webhook's `proxy` key names one proxy for all its URLs (`""`: none). Without the key, the
environment decides, read as Python's urllib reads it on Linux (`urllib.request.getproxies()`
and `proxy_bypass()`): `<scheme>_proxy` variables in any case, the lowercase one winning and an
empty lowercase one unsetting the other, `HTTP_PROXY` ignored under CGI (`REQUEST_METHOD` set),
and `no_proxy` hosts and domain suffixes going direct. Like urllib, only the variable of the
receiver's scheme counts (`https_proxy` for an HTTPS receiver); `all_proxy` does not.

The monitor speaks plain HTTP to a proxy: `CONNECT` for an HTTPS receiver, whose TLS then runs
end to end through the tunnel, and absolute-form requests for an HTTP receiver. A proxy URL may
carry credentials (`http://user:password@host:port`): they are secrets, so problems are
described here, never quoted.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

#: What a proxy URL looks like, for error messages.
EXAMPLE = "http://proxy.internal:3128"

_SUFFIX = "_proxy"


@dataclass(frozen=True, slots=True)
class EnvironmentProxy:
    """One `<scheme>_proxy` (or `no_proxy`) variable: its name as set, and its value."""

    variable: str
    value: str = field(repr=False)


def environment_proxies(env: Mapping[str, str]) -> dict[str, EnvironmentProxy]:
    """The proxy variables of `env` by scheme (`"no"` for `no_proxy`), as urllib's
    `getproxies()` reads `os.environ`, each with the name of the variable it came from."""
    found: dict[str, EnvironmentProxy] = {}
    for name, value in env.items():
        if value and name[-len(_SUFFIX) :].lower() == _SUFFIX:
            found[name[: -len(_SUFFIX)].lower()] = EnvironmentProxy(name, value)
    if "REQUEST_METHOD" in env:
        # A CGI server sets HTTP_PROXY from a client's `Proxy:` header (httpoxy); urllib drops it.
        found.pop("http", None)
    for name, value in env.items():
        if name[-len(_SUFFIX) :] == _SUFFIX:
            scheme = name[: -len(_SUFFIX)].lower()
            if value:
                found[scheme] = EnvironmentProxy(name, value)
            else:
                found.pop(scheme, None)
    return found


def environment_proxy_for(
    url: str, proxies: Mapping[str, EnvironmentProxy]
) -> EnvironmentProxy | None:
    """The variable whose proxy `url` goes through, or `None` when it goes direct.

    `no_proxy` is matched by urllib's own `proxy_bypass` against the URL's host and port.
    """
    parts = urlsplit(url)
    chosen = proxies.get(parts.scheme)
    if chosen is None:
        return None
    bypass = proxies.get("no")
    # The host as urllib matches it: with the port when the URL names one, never the userinfo.
    host = parts.netloc.rpartition("@")[2]
    if bypass is not None and urllib.request.proxy_bypass(host, {"no": bypass.value}):
        return None
    return chosen


def from_environment(value: str) -> str:
    """A proxy variable's value as a URL: `host:port` alone means `http://host:port`, as for
    urllib and curl."""
    return value if "://" in value else f"http://{value}"


def proxy_problem(url: str) -> str | None:
    """What is wrong with the proxy URL `url`, or `None`; never quotes it (credentials)."""
    if any(c.isspace() or not c.isprintable() for c in url):
        return "the proxy URL contains a space or a control character"
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number from 0 to 65535
    except ValueError:
        return f'not a valid proxy URL; expected one like "{EXAMPLE}"'
    if parts.scheme != "http":
        return _scheme_problem(parts.scheme)
    if not parts.hostname:
        return "the proxy URL has no host"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f'a proxy URL has no path, query or fragment; expected one like "{EXAMPLE}"'
    return None


def _scheme_problem(scheme: str) -> str:
    if scheme == "https":
        return (
            "TLS to the proxy itself is not supported; give its http:// address "
            "(HTTPS receivers stay encrypted end to end, through CONNECT)"
        )
    return f'expected an http:// proxy URL like "{EXAMPLE}"'


def proxy_address(url: str) -> str:
    """`http://host:port` of a valid proxy URL, without its credentials (port 80 by default)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"http://{host}" if parts.port is not None else f"http://{host}:80"


def proxy_credentials(url: str) -> str | None:
    """`user:password` (percent-decoded) from a proxy URL, for basic proxy authentication;
    `None` when it has none."""
    parts = urlsplit(url)
    if parts.username is None:
        return None
    return f"{unquote(parts.username)}:{unquote(parts.password or '')}"
