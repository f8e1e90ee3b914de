"""Which proxy each webhook URL goes through: the `proxy` key, or the environment as urllib
reads it; and the one-line errors for proxies the monitor cannot use."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pytest

from monitor.config.proxies import environment_proxies, proxy_address, proxy_credentials
from monitor.config.settings import WebhookSettings, parse_settings
from monitor.core.errors import ConfigError

FILE = "/etc/fastlaunch-monitor/config.toml"
PASSWORD = "pr0xy-pa55word"
PROXY = "http://proxy.internal:3128"


def webhook(text: str, env: Mapping[str, str] | None = None) -> WebhookSettings:
    settings = parse_settings(
        "[[alerts.webhooks]]\nname = 'ops'\n" + text,
        source=FILE,
        env=env or {},
        base_dir=Path("/etc/fastlaunch-monitor"),
    )
    (found,) = settings.webhooks
    return found


def error_of(text: str, env: Mapping[str, str] | None = None) -> str:
    """The one line the CLI would print."""
    with pytest.raises(ConfigError) as caught:
        webhook(text, env)
    line = str(caught.value)
    assert "\n" not in line
    return line


def proxies_of(urls: list[str], env: Mapping[str, str], key: str | None = None) -> tuple:
    listed = ", ".join(f"'{url}'" for url in urls)
    text = f"format = 'alertmanager'\nurls = [{listed}]\n"
    if key is not None:
        text += f"proxy = '{key}'\n"
    return webhook(text, env).proxies


# --- the proxy key ------------------------------------------------------------------------


def test_the_proxy_key_names_the_proxy_of_every_url() -> None:
    urls = ["http://am-0:9093", "https://am-1:9093"]

    assert proxies_of(urls, {}, key=PROXY) == (PROXY, PROXY)


def test_an_empty_proxy_key_goes_direct_whatever_the_environment_says() -> None:
    env = {"HTTP_PROXY": PROXY, "HTTPS_PROXY": PROXY, "https_proxy": PROXY}

    assert proxies_of(["http://am-0:9093", "https://am-1:9093"], env, key="") == (None, None)


def test_the_proxy_key_wins_over_the_environment() -> None:
    env = {"HTTPS_PROXY": "http://other:8080", "NO_PROXY": "*"}

    assert proxies_of(["https://am-0:9093"], env, key=PROXY) == (PROXY,)


def test_without_the_key_and_without_proxy_variables_every_url_goes_direct() -> None:
    assert proxies_of(["http://am-0:9093", "https://am-1:9093"], {"PATH": "/usr/bin"}) == (
        None,
        None,
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (
            "https://proxy.internal:3128",
            "TLS to the proxy itself is not supported; give its http:// address "
            "(HTTPS receivers stay encrypted end to end, through CONNECT)",
        ),
        ("socks5://proxy.internal:1080", f'expected an http:// proxy URL like "{PROXY}"'),
        ("proxy.internal:3128", f'expected an http:// proxy URL like "{PROXY}"'),
        ("http://proxy.internal:99999", f'not a valid proxy URL; expected one like "{PROXY}"'),
        ("http://:3128", "the proxy URL has no host"),
        (
            "http://proxy.internal:3128/hook",
            f'a proxy URL has no path, query or fragment; expected one like "{PROXY}"',
        ),
        ("http://proxy internal:3128", "the proxy URL contains a space or a control character"),
    ],
)
def test_a_proxy_the_monitor_cannot_use_is_one_line_naming_the_key(
    value: str, problem: str
) -> None:
    assert error_of(f"url = 'https://a.example'\nproxy = '{value}'\n") == (
        f"{FILE}: alerts.webhooks[0].proxy: {problem}"
    )


@pytest.mark.parametrize(
    "value",
    [
        f"https://alice:{PASSWORD}@proxy.internal:3128",
        f"http://alice:{PASSWORD}@proxy.internal:3128/x",
        f"http://alice:{PASSWORD}@proxy.internal:notaport",
        f"socks5://alice:{PASSWORD}@proxy.internal:1080",
    ],
)
def test_a_bad_proxy_url_is_never_shown(value: str) -> None:
    assert PASSWORD not in error_of(f"url = 'https://a.example'\nproxy = '{value}'\n")


def test_proxy_credentials_stay_out_of_the_settings_repr() -> None:
    found = webhook(f"url = 'https://a.example'\nproxy = 'http://alice:{PASSWORD}@p:3128'\n")

    assert found.proxies == (f"http://alice:{PASSWORD}@p:3128",)
    assert PASSWORD not in repr(found)


# --- the environment ----------------------------------------------------------------------


def test_each_url_takes_the_proxy_variable_of_its_scheme() -> None:
    env = {"HTTP_PROXY": "http://plain:3128", "HTTPS_PROXY": "http://tunnel:3128"}

    assert proxies_of(["http://am-0:9093", "https://am-1:9093"], env) == (
        "http://plain:3128",
        "http://tunnel:3128",
    )


def test_all_proxy_is_not_read_as_urllib_does_not() -> None:
    assert proxies_of(["https://am-0:9093"], {"ALL_PROXY": PROXY, "all_proxy": PROXY}) == (None,)


def test_a_proxy_variable_without_a_scheme_is_an_http_proxy() -> None:
    assert proxies_of(["https://am-0:9093"], {"https_proxy": "proxy.internal:3128"}) == (PROXY,)


@pytest.mark.parametrize(
    ("no_proxy", "url", "direct"),
    [
        ("hooks.example.com", "https://hooks.example.com/x", True),
        ("example.com", "https://hooks.example.com/x", True),
        (".example.com", "https://hooks.example.com/x", True),
        ("EXAMPLE.com", "https://Hooks.Example.com/x", True),
        ("example.com", "https://hooks.example.org/x", False),
        ("ample.com", "https://hooks.example.com/x", False),
        ("*", "https://anything.example/x", True),
        ("localhost, 10.0.0.7", "https://10.0.0.7:8443/x", True),
        ("hooks.example.com:8443", "https://hooks.example.com:8443/x", True),
        ("hooks.example.com:8443", "https://hooks.example.com/x", False),
        ("hooks.example.com", "https://user:pw@hooks.example.com/x", True),
    ],
)
def test_no_proxy_sends_its_hosts_and_domains_direct(no_proxy: str, url: str, direct: bool) -> None:
    env = {"HTTPS_PROXY": PROXY, "NO_PROXY": no_proxy}

    assert proxies_of([url], env) == ((None,) if direct else (PROXY,))


def test_no_proxy_is_decided_per_url() -> None:
    env = {"HTTPS_PROXY": PROXY, "no_proxy": "am-0.internal"}

    assert proxies_of(["https://am-0.internal:9093", "https://am-1.internal:9093"], env) == (
        None,
        PROXY,
    )


ENVIRONMENTS = {
    "upper case": {"HTTPS_PROXY": "http://a:1", "HTTP_PROXY": "http://b:2"},
    "lower case wins": {"HTTPS_PROXY": "http://a:1", "https_proxy": "http://b:2"},
    "empty lower case unsets": {"HTTPS_PROXY": "http://a:1", "https_proxy": ""},
    "empty upper case is nothing": {"HTTPS_PROXY": "", "NO_PROXY": ""},
    "mixed case": {"Https_Proxy": "http://c:3"},
    "CGI drops HTTP_PROXY": {"HTTP_PROXY": "http://a:1", "REQUEST_METHOD": "GET"},
    "CGI keeps http_proxy": {"http_proxy": "http://a:1", "REQUEST_METHOD": "GET"},
    "no_proxy and others": {"no_proxy": "x", "NO_PROXY": "y", "ftp_proxy": "http://f:21"},
}


@pytest.mark.parametrize("env", ENVIRONMENTS.values(), ids=ENVIRONMENTS.keys())
def test_the_environment_is_read_as_urllib_reads_it(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name == "REQUEST_METHOD":
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    ours = {scheme: found.value for scheme, found in environment_proxies(os.environ).items()}

    assert ours == urllib.request.getproxies_environment()


def test_a_proxy_variable_urllib_would_use_but_the_monitor_cannot_is_named() -> None:
    env = {"https_proxy": f"https://alice:{PASSWORD}@proxy.internal:3128"}

    line = error_of("url = 'https://a.example'\n", env)

    assert line == (
        "$https_proxy: TLS to the proxy itself is not supported; give its http:// address "
        "(HTTPS receivers stay encrypted end to end, through CONNECT); fix it, "
        'or set "proxy" in alerts.webhooks[0] ("" to go direct)'
    )
    assert PASSWORD not in line


@pytest.mark.parametrize(
    ("text", "proxy"),
    [
        ("url = 'http://a.example'\n", None),
        ("url = 'https://a.example'\nproxy = ''\n", None),
        (f"url = 'https://a.example'\nproxy = '{PROXY}'\n", PROXY),
    ],
    ids=["another scheme", "direct", "named proxy"],
)
def test_a_proxy_variable_the_webhook_does_not_use_is_not_checked(
    text: str, proxy: str | None
) -> None:
    env = {"HTTPS_PROXY": "socks5://proxy.internal:1080", "no_proxy": "b.example"}

    assert webhook(text, env).proxies == (proxy,)


def test_a_proxy_variable_of_a_host_in_no_proxy_is_not_checked() -> None:
    env = {"HTTPS_PROXY": "socks5://proxy.internal:1080", "NO_PROXY": "a.example"}

    assert webhook("url = 'https://a.example'\n", env).proxies == (None,)


# --- what the sender makes of a proxy URL ------------------------------------------------


@pytest.mark.parametrize(
    ("url", "address", "credentials"),
    [
        (PROXY, PROXY, None),
        ("http://proxy.internal", "http://proxy.internal:80", None),
        ("http://proxy.internal:3128/", PROXY, None),
        (f"http://alice:{PASSWORD}@proxy.internal:3128", PROXY, f"alice:{PASSWORD}"),
        ("http://al%40ce:p%3Aw%2Fd@proxy.internal:3128", PROXY, "al@ce:p:w/d"),
        ("http://alice@proxy.internal:3128", PROXY, "alice:"),
        ("http://[::1]:3128", "http://[::1]:3128", None),
    ],
)
def test_a_proxy_url_gives_its_address_and_decoded_credentials(
    url: str, address: str, credentials: str | None
) -> None:
    assert proxy_address(url) == address
    assert proxy_credentials(url) == credentials
