"""Webhooks through a real HTTP proxy (Debian's tinyproxy) on loopback, to real receivers.

HTTPS receivers are reached through a CONNECT tunnel with TLS verified end to end, HTTP
receivers in absolute form; the proxy comes from the webhook's `proxy` key or, without it,
from the environment; its credentials work and never show.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from monitor.alerts.records import DeliveryOutcome, WebhookRequest
from monitor.alerts.sender import WebhookSender
from monitor.config.settings import WebhookSettings, parse_settings
from tests.alerts.receivers import CertificateAuthority, Receiver, refusing_url
from tests.alerts.tinyproxy import VIA_NAME, Tinyproxy

BODY = b'{"version": 1, "status": "firing", "image_id": "ami-0123456789abcdef0"}'
USER = "alice"
PASSWORD = "pr0xy-pa55word"

StartProxy = Callable[..., Tinyproxy]


def send_once(
    url: str, proxy: str | None, *, ca_file: Path | None = None, timeout: float = 5.0
) -> DeliveryOutcome:
    webhook = WebhookSettings(
        name="ops", urls=(url,), timeout=timeout, ca_file=ca_file, proxies=(proxy,)
    )
    return send_with(webhook, url)


def send_with(webhook: WebhookSettings, url: str) -> DeliveryOutcome:
    request = WebhookRequest(
        method="POST", url=url, headers={"Content-Type": "application/json"}, body=BODY
    )
    with WebhookSender(webhook) as sender:
        return sender.send(request)


def configured(text: str, env: Mapping[str, str], ca_file: Path | None = None) -> WebhookSettings:
    """The one webhook of `[[alerts.webhooks]]` `text`, read with the environment `env`."""
    if ca_file is not None:
        text += f"ca_file = '{ca_file}'\n"
    settings = parse_settings(
        "[[alerts.webhooks]]\nname = 'ops'\n" + text,
        source="config.toml",
        env=env,
        base_dir=Path("/nonexistent"),
    )
    (webhook,) = settings.webhooks
    return webhook


def host_port(receiver: Receiver) -> str:
    """The receiver's address as a CONNECT request names it."""
    return f"127.0.0.1:{receiver.port}"


# the way through the proxy


def test_a_webhook_to_an_http_receiver_goes_through_its_proxy_in_absolute_form(
    start_tinyproxy: StartProxy, receiver: Receiver
) -> None:
    proxy = start_tinyproxy()
    url = receiver.url_for("/hook?team=windows")

    outcome = send_once(url, proxy.url)

    assert outcome.status == 200
    (request,) = receiver.requests
    assert request.body == BODY
    assert request.path == "/hook?team=windows"
    via = request.header("Via")
    assert via is not None
    assert VIA_NAME in via
    assert proxy.wait_for_request("POST ") == f"POST {url} HTTP/1.1"


def test_a_webhook_to_an_https_receiver_goes_through_a_connect_tunnel_verified_end_to_end(
    start_tinyproxy: StartProxy,
    https_receiver: Receiver,
    certificate_authority: CertificateAuthority,
) -> None:
    proxy = start_tinyproxy()

    outcome = send_once(
        https_receiver.url_for("/hook"), proxy.url, ca_file=certificate_authority.ca_file
    )

    assert outcome.status == 200
    (request,) = https_receiver.requests
    assert request.body == BODY
    # Inside the tunnel the proxy sees only ciphertext: it could not add its Via header.
    assert request.header("Via") is None
    assert proxy.wait_for_request(f"CONNECT {host_port(https_receiver)} ")


def test_an_https_receiver_signed_by_an_unknown_ca_is_refused_through_the_proxy(
    start_tinyproxy: StartProxy, https_receiver: Receiver, tmp_path: Path
) -> None:
    proxy = start_tinyproxy()
    other = CertificateAuthority(tmp_path / "other", name="another CA")

    outcome = send_once(https_receiver.url_for("/hook"), proxy.url, ca_file=other.ca_file)

    assert outcome.error == "SSLError"
    assert https_receiver.requests == ()
    assert proxy.wait_for_request(f"CONNECT {host_port(https_receiver)} ")


def test_a_certificate_for_another_host_is_refused_through_the_proxy(
    start_tinyproxy: StartProxy,
    make_receiver: Callable[..., Receiver],
    certificate_authority: CertificateAuthority,
) -> None:
    proxy = start_tinyproxy()
    impostor = make_receiver(tls=certificate_authority.server_context(["hooks.example.com"]))

    outcome = send_once(impostor.url_for("/hook"), proxy.url, ca_file=certificate_authority.ca_file)

    assert outcome.error == "SSLError"
    assert impostor.requests == ()
    assert proxy.wait_for_request("CONNECT ")


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_proxy_that_refuses_connections_is_a_proxy_error_and_is_retried(
    receiver: Receiver, https_receiver: Receiver, scheme: str
) -> None:
    target = receiver if scheme == "http" else https_receiver

    with refusing_url("") as proxy:
        outcome = send_once(target.url_for("/hook"), proxy)

    assert outcome.error == "ProxyError"
    assert not outcome.permanent
    assert target.requests == ()


def test_the_proxy_of_each_alertmanager_instance_is_its_own(
    start_tinyproxy: StartProxy, make_receiver: Callable[..., Receiver]
) -> None:
    proxy = start_tinyproxy()
    proxied, direct = make_receiver(), make_receiver()
    webhook = WebhookSettings(
        name="am", urls=(proxied.url, direct.url), format="alertmanager", proxies=(proxy.url, None)
    )

    assert send_with(webhook, proxied.url_for("/api/v2/alerts")).status == 200
    assert send_with(webhook, direct.url_for("/api/v2/alerts")).status == 200

    assert proxied.requests[0].header("Via") is not None
    assert direct.requests[0].header("Via") is None
    proxy.wait_for_request("POST ")
    assert proxy.requests() == [f"POST {proxied.url}/api/v2/alerts HTTP/1.1"]


# which proxy: the key, or the environment


def test_a_webhook_without_the_key_goes_through_the_proxy_of_the_environment(
    start_tinyproxy: StartProxy,
    https_receiver: Receiver,
    certificate_authority: CertificateAuthority,
) -> None:
    proxy = start_tinyproxy()
    url = https_receiver.url_for("/hook")
    webhook = configured(
        f"url = '{url}'\n", {"HTTPS_PROXY": proxy.url}, certificate_authority.ca_file
    )

    assert send_with(webhook, url).status == 200
    assert proxy.wait_for_request(f"CONNECT {host_port(https_receiver)} ")


def test_an_http_receiver_takes_the_http_proxy_of_the_environment(
    start_tinyproxy: StartProxy, receiver: Receiver
) -> None:
    http_proxy, https_proxy = start_tinyproxy(), start_tinyproxy()
    url = receiver.url_for("/hook")
    env = {"http_proxy": http_proxy.url, "https_proxy": https_proxy.url}

    assert send_with(configured(f"url = '{url}'\n", env), url).status == 200

    assert http_proxy.wait_for_request("POST ") == f"POST {url} HTTP/1.1"
    assert https_proxy.requests() == []


def test_an_empty_proxy_goes_direct_even_when_the_environment_names_one(
    start_tinyproxy: StartProxy,
    https_receiver: Receiver,
    certificate_authority: CertificateAuthority,
) -> None:
    proxy = start_tinyproxy()
    url = https_receiver.url_for("/hook")
    env = {"HTTPS_PROXY": proxy.url, "https_proxy": proxy.url}
    webhook = configured(f"url = '{url}'\nproxy = ''\n", env, certificate_authority.ca_file)

    assert send_with(webhook, url).status == 200
    assert len(https_receiver.requests) == 1
    assert proxy.requests() == []


def test_a_host_in_no_proxy_goes_direct_and_the_others_through_the_proxy(
    start_tinyproxy: StartProxy,
    https_receiver: Receiver,
    certificate_authority: CertificateAuthority,
) -> None:
    proxy = start_tinyproxy()
    # One receiver, by two names its certificate covers: only "localhost" is in NO_PROXY.
    bypassed = f"https://localhost:{https_receiver.port}"
    proxied = f"https://127.0.0.1:{https_receiver.port}"
    env = {"HTTPS_PROXY": proxy.url, "NO_PROXY": "example.com, localhost"}
    webhook = configured(
        f"format = 'alertmanager'\nurls = ['{bypassed}', '{proxied}']\n",
        env,
        certificate_authority.ca_file,
    )

    assert send_with(webhook, bypassed + "/api/v2/alerts").status == 200
    assert send_with(webhook, proxied + "/api/v2/alerts").status == 200

    assert len(https_receiver.requests) == 2
    proxy.wait_for_request(f"CONNECT {host_port(https_receiver)} ")
    assert [line.split()[:2] for line in proxy.requests()] == [
        ["CONNECT", host_port(https_receiver)]
    ]


def test_the_key_wins_over_the_environment(start_tinyproxy: StartProxy, receiver: Receiver) -> None:
    named, environment = start_tinyproxy(), start_tinyproxy()
    url = receiver.url_for("/hook")
    env = {"HTTP_PROXY": environment.url, "NO_PROXY": "127.0.0.1"}
    webhook = configured(f"url = '{url}'\nproxy = '{named.url}'\n", env)

    assert send_with(webhook, url).status == 200
    assert named.wait_for_request("POST ") == f"POST {url} HTTP/1.1"
    assert environment.requests() == []


# proxy credentials


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_proxy_credentials_in_the_url_authenticate_to_the_proxy(
    start_tinyproxy: StartProxy,
    receiver: Receiver,
    https_receiver: Receiver,
    certificate_authority: CertificateAuthority,
    scheme: str,
) -> None:
    proxy = start_tinyproxy(credentials=(USER, PASSWORD))
    target = receiver if scheme == "http" else https_receiver

    outcome = send_once(
        target.url_for("/hook"),
        proxy.url_with(USER, PASSWORD),
        ca_file=certificate_authority.ca_file,
    )

    assert outcome.status == 200
    assert len(target.requests) == 1


def test_percent_encoded_proxy_credentials_are_decoded(
    start_tinyproxy: StartProxy, receiver: Receiver
) -> None:
    proxy = start_tinyproxy(credentials=(USER, "s3cret"))

    outcome = send_once(receiver.url_for("/hook"), proxy.url_with("%61lice", "s%33cret"))

    assert outcome.status == 200


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_proxy_asking_for_credentials_is_a_proxy_error_and_is_retried(
    start_tinyproxy: StartProxy, receiver: Receiver, https_receiver: Receiver, scheme: str
) -> None:
    proxy = start_tinyproxy(credentials=(USER, PASSWORD))
    target = receiver if scheme == "http" else https_receiver

    outcome = send_once(target.url_for("/hook"), proxy.url)

    # A 407 is the proxy's answer, never the receiver's: the alert waits for fixed
    # credentials instead of failing as if the receiver had refused it.
    assert outcome.status is None
    assert outcome.error == "ProxyError"
    assert not outcome.permanent
    assert target.requests == ()


def test_a_proxy_refusing_the_tunnel_to_wrong_credentials_is_a_proxy_error(
    start_tinyproxy: StartProxy, https_receiver: Receiver
) -> None:
    proxy = start_tinyproxy(credentials=(USER, PASSWORD))

    outcome = send_once(https_receiver.url_for("/hook"), proxy.url_with(USER, "wrong"))

    assert outcome.error == "ProxyError"
    assert not outcome.permanent
    assert https_receiver.requests == ()


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every record at DEBUG, urllib3's included."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="urllib3")
    return caplog


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("password", [PASSWORD, PASSWORD + "-wrong"], ids=["right", "wrong"])
def test_proxy_credentials_never_reach_a_log_an_outcome_a_repr_or_the_receiver(
    start_tinyproxy: StartProxy,
    receiver: Receiver,
    https_receiver: Receiver,
    certificate_authority: CertificateAuthority,
    all_logs: pytest.LogCaptureFixture,
    scheme: str,
    password: str,
) -> None:
    proxy = start_tinyproxy(credentials=(USER, PASSWORD))
    target = receiver if scheme == "http" else https_receiver
    url = target.url_for("/hook")
    webhook = configured(
        f"url = '{url}'\n",
        {f"{scheme}_proxy": proxy.url_with(USER, password)},
        certificate_authority.ca_file,
    )

    outcome = send_with(webhook, url)

    assert outcome.delivered == (password == PASSWORD)
    assert f"through proxy 127.0.0.1:{proxy.port}" in all_logs.text
    assert PASSWORD not in all_logs.text
    for record in all_logs.records:
        assert PASSWORD not in repr(vars(record))
    assert PASSWORD not in repr(outcome)
    assert PASSWORD not in repr(webhook)
    for request in target.requests:
        assert PASSWORD not in repr(request.headers)
        assert request.header("Proxy-Authorization") is None
