"""The HTTP endpoints, served for real on a free port and asked with real HTTP requests."""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from monitor.config.settings import HttpSettings
from monitor.core.errors import ConfigError, MonitorError
from monitor.core.model import FastLaunchImage, PollResult, Scope
from monitor.exposition.current import CurrentState
from monitor.exposition.http import HttpServer, Readiness, serve, server_tls_context
from monitor.exposition.metrics import MonitorMetrics, build_registry
from tests.pki import Pki, make_pki

PROD = Scope("prod", "111111111111", "eu-west-1")
CHANGED_AT = datetime(2026, 11, 26, 10, 0, 0, 123000, tzinfo=UTC)


def image(image_id: str, **changes: object) -> FastLaunchImage:
    base = FastLaunchImage(
        image_id=image_id,
        state="enabled",
        state_transition_reason="",
        state_transition_time=CHANGED_AT,
        resource_type="snapshot",
        target_resource_count=5,
        max_parallel_launches=6,
        owner_id="111111111111",
        launch_template_id="lt-0123456789abcdef0",
        launch_template_name="windows",
        launch_template_version="1",
    )
    return replace(base, **changes)


@dataclass
class Health:
    """What the daemon would answer; tests flip it."""

    healthy: bool = True
    readiness: Readiness = field(default_factory=lambda: Readiness(True, {"database": "ok"}))
    failure: Exception | None = None

    def ready(self) -> Readiness:
        if self.failure is not None:
            raise self.failure
        return self.readiness


@dataclass
class Monitor:
    server: HttpServer
    current: CurrentState
    metrics: MonitorMetrics
    registry: CollectorRegistry
    health: Health


@pytest.fixture
def monitor() -> Iterator[Monitor]:
    current = CurrentState()
    current.replace_scope(PROD, [image("ami-1"), image("ami-2", target_resource_count=9)])
    registry, metrics = build_registry(current)
    metrics.set_leader(True)
    health = Health()
    server = serve("127.0.0.1", 0, registry, healthy=lambda: health.healthy, ready=health.ready)
    yield Monitor(server, current, metrics, registry, health)
    server.close()


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


# No proxy from the environment may stand between a test and its loopback server.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(
    url: str, *, method: str = "GET", headers: dict[str, str] | None = None, data=None
) -> Reply:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with _opener.open(request, timeout=10) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.headers, error.read())


def gauges(text: bytes) -> dict[tuple[str, str], float]:
    """(metric, image id) -> value, for the `TargetResourceCount` gauges of an exposition."""
    return {
        (sample.name, sample.labels["image_id"]): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
        if sample.name == "fastlaunch_image_target_resources"
    }


def test_metrics_serve_the_images_gauges_in_the_prometheus_text_format(monitor: Monitor):
    reply = fetch(f"{monitor.server.url}/metrics")

    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert gauges(reply.body) == {
        ("fastlaunch_image_target_resources", "ami-1"): 5,
        ("fastlaunch_image_target_resources", "ami-2"): 9,
    }
    assert b"fastlaunch_leader 1.0\n" in reply.body


def test_metrics_follow_the_current_state_from_one_scrape_to_the_next(monitor: Monitor):
    monitor.current.replace_scope(PROD, [image("ami-2", target_resource_count=7)])

    reply = fetch(f"{monitor.server.url}/metrics")

    assert gauges(reply.body) == {("fastlaunch_image_target_resources", "ami-2"): 7}
    assert b'image_id="ami-1"' not in reply.body


def test_a_failed_poll_keeps_serving_the_last_values(monitor: Monitor):
    failed = PollResult(PROD, CHANGED_AT, 20.0, 0, None, "RequestLimitExceeded", "throttled")

    monitor.metrics.poll_finished(failed, [])
    reply = fetch(f"{monitor.server.url}/metrics")

    assert gauges(reply.body)[("fastlaunch_image_target_resources", "ami-2")] == 9
    assert (
        b'fastlaunch_poll_success{account_id="111111111111",region="eu-west-1",target="prod"} 0.0'
        in reply.body
    )


def test_a_standby_serves_its_own_series_without_any_image(monitor: Monitor):
    monitor.metrics.set_leader(False)

    reply = fetch(f"{monitor.server.url}/metrics")

    assert reply.status == 200
    assert b"fastlaunch_leader 0.0\n" in reply.body
    assert b"fastlaunch_image_" not in reply.body


def test_metrics_are_served_as_openmetrics_when_the_scraper_asks_for_it(monitor: Monitor):
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"

    reply = fetch(f"{monitor.server.url}/metrics", headers={"Accept": accept})

    assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
    assert reply.body.endswith(b"# EOF\n")
    assert reply.body.count(b"# EOF") == 1


def test_metrics_are_gzipped_when_the_scraper_accepts_it(monitor: Monitor):
    plain = fetch(f"{monitor.server.url}/metrics")

    reply = fetch(f"{monitor.server.url}/metrics", headers={"Accept-Encoding": "gzip"})

    assert reply.headers["Content-Encoding"] == "gzip"
    assert int(reply.headers["Content-Length"]) == len(reply.body)
    assert gzip.decompress(reply.body) == plain.body


def test_healthz_is_ok_while_healthy_and_503_when_not(monitor: Monitor):
    healthy = fetch(f"{monitor.server.url}/healthz")
    monitor.health.healthy = False
    unhealthy = fetch(f"{monitor.server.url}/healthz")

    assert (healthy.status, healthy.body) == (200, b"ok\n")
    assert unhealthy.status == 503


def test_readyz_answers_each_check_as_json_with_200_when_ready(monitor: Monitor):
    reply = fetch(f"{monitor.server.url}/readyz")

    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert json.loads(reply.body) == {"ready": True, "checks": {"database": "ok"}}


def test_readyz_is_503_and_says_which_check_fails(monitor: Monitor):
    checks = {"database": "ok", "poll prod/eu-west-1": "no successful poll yet"}
    monitor.health.readiness = Readiness(False, checks)

    reply = fetch(f"{monitor.server.url}/readyz")

    assert reply.status == 503
    assert json.loads(reply.body) == {"ready": False, "checks": checks}


def test_a_readiness_check_that_raises_is_503_without_its_message(monitor: Monitor):
    monitor.health.failure = RuntimeError("postgresql://monitor:hunter2@db/monitor is down")

    reply = fetch(f"{monitor.server.url}/readyz")

    assert reply.status == 503
    assert json.loads(reply.body)["ready"] is False
    assert b"hunter2" not in reply.body


def test_an_unknown_path_is_404(monitor: Monitor):
    assert fetch(f"{monitor.server.url}/").status == 404
    assert fetch(f"{monitor.server.url}/metrics/extra").status == 404


def test_a_query_string_does_not_change_the_route(monitor: Monitor):
    assert fetch(f"{monitor.server.url}/healthz?verbose=1").status == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_only_get_and_head_are_allowed(monitor: Monitor, method: str):
    reply = fetch(f"{monitor.server.url}/metrics", method=method, data=b"x" * 10)

    assert reply.status == 405
    assert reply.headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/readyz"])
def test_head_answers_the_headers_of_get_without_a_body(monitor: Monitor, path: str):
    get = fetch(f"{monitor.server.url}{path}")

    head = fetch(f"{monitor.server.url}{path}", method="HEAD")

    assert head.status == get.status
    assert head.body == b""
    assert head.headers["Content-Type"] == get.headers["Content-Type"]
    assert head.headers["Content-Length"] == str(len(get.body))


def test_one_kept_alive_connection_serves_several_requests(monitor: Monitor):
    connection = http.client.HTTPConnection(monitor.server.host, monitor.server.port, timeout=10)
    try:
        answers = []
        for path in ("/metrics", "/healthz", "/readyz"):
            connection.request("GET", path)
            response = connection.getresponse()
            answers.append((response.status, len(response.read()) > 0))
    finally:
        connection.close()

    assert answers == [(200, True)] * 3


def test_requests_are_logged_at_debug_and_never_on_stderr(
    monitor: Monitor, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG, logger="monitor.exposition.http")

    fetch(f"{monitor.server.url}/metrics")
    fetch(f"{monitor.server.url}/nowhere")

    assert capfd.readouterr().err == ""
    assert any("GET /nowhere" in record.getMessage() for record in caplog.records)
    assert {record.levelno for record in caplog.records} == {logging.DEBUG}


def test_a_broken_collector_costs_one_scrape_a_500_not_the_server(monitor: Monitor):
    class Broken:
        def collect(self):
            raise RuntimeError("collector bug")

    monitor.registry.register(Broken())

    assert fetch(f"{monitor.server.url}/metrics").status == 500
    assert fetch(f"{monitor.server.url}/healthz").status == 200


def test_port_zero_binds_a_free_port_and_reports_it(monitor: Monitor):
    assert monitor.server.port > 0
    assert monitor.server.url == f"http://127.0.0.1:{monitor.server.port}"


def test_close_stops_listening_and_can_be_called_twice(monitor: Monitor):
    url = f"{monitor.server.url}/healthz"

    monitor.server.close()
    monitor.server.close()

    with pytest.raises(urllib.error.URLError):
        fetch(url)


def test_close_drops_an_idle_kept_alive_connection(monitor: Monitor):
    connection = http.client.HTTPConnection(monitor.server.host, monitor.server.port, timeout=10)
    connection.request("GET", "/healthz")
    connection.getresponse().read()

    monitor.server.close()

    def ask_again() -> None:
        connection.request("GET", "/healthz")
        connection.getresponse()

    with pytest.raises((http.client.HTTPException, ConnectionError)):
        ask_again()
    connection.close()


def test_a_port_in_use_is_a_monitor_error_naming_the_address(monitor: Monitor):
    registry, _ = build_registry(CurrentState())

    with pytest.raises(MonitorError, match=f"127.0.0.1:{monitor.server.port}"):
        serve("127.0.0.1", monitor.server.port, registry, healthy=bool, ready=Health().ready)


def ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback here")
def test_it_listens_on_the_ipv6_loopback():
    registry, _ = build_registry(CurrentState())
    server = serve("::1", 0, registry, healthy=lambda: True, ready=Health().ready)
    try:
        reply = fetch(f"{server.url}/healthz")
    finally:
        server.close()

    assert server.url == f"http://[::1]:{server.port}"
    assert reply.status == 200


# --- TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    return make_pki(tmp_path_factory.mktemp("pki"))


CONFIG = "/etc/fastlaunch-monitor/config.toml"


def tls(cert: Path, key: Path | None = None, client_ca: Path | None = None):
    """The TLS context the daemon would serve with for these `[http]` files."""
    settings = HttpSettings(tls_cert_file=cert, tls_key_file=key, tls_client_ca_file=client_ca)
    return server_tls_context(settings, CONFIG)


def tls_error(cert: Path, key: Path | None = None, client_ca: Path | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        tls(cert, key, client_ca)
    return str(raised.value)


def https_server(
    pki: Pki, *, client_ca: Path | None = None, combined: Path | None = None
) -> HttpServer:
    registry, metrics = build_registry(CurrentState())
    metrics.set_leader(True)
    return serve(
        "127.0.0.1",
        0,
        registry,
        healthy=lambda: True,
        ready=Health().ready,
        tls=tls(combined, None, client_ca)
        if combined
        else tls(pki.server_cert, pki.server_key, client_ca),
    )


def client_context(pki: Pki, *, with_certificate: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca)
    if with_certificate:
        context.load_cert_chain(pki.client_cert, pki.client_key)
    return context


def fetch_tls(url: str, context: ssl.SSLContext) -> Reply:
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    with opener.open(url, timeout=10) as response:
        return Reply(response.status, response.headers, response.read())


def test_with_a_certificate_it_serves_https_only(pki: Pki):
    server = https_server(pki)
    try:
        reply = fetch_tls(f"{server.url}/metrics", client_context(pki))
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            fetch(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        server.close()

    assert server.url == f"https://127.0.0.1:{server.port}"
    assert reply.status == 200
    assert b"fastlaunch_leader 1.0" in reply.body


def test_with_a_client_ca_only_clients_with_a_certificate_get_in(
    pki: Pki, capfd: pytest.CaptureFixture[str]
):
    server = https_server(pki, client_ca=pki.ca)
    try:
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            fetch_tls(f"{server.url}/healthz", client_context(pki))
        reply = fetch_tls(f"{server.url}/healthz", client_context(pki, with_certificate=True))
    finally:
        server.close()

    assert reply.body == b"ok\n"
    assert capfd.readouterr().err == ""


def test_a_certificate_file_holding_its_key_too_serves_https(pki: Pki, tmp_path: Path):
    combined = tmp_path / "server-with-key.pem"
    combined.write_bytes(pki.server_cert.read_bytes() + pki.server_key.read_bytes())

    server = https_server(pki, combined=combined)
    try:
        reply = fetch_tls(f"{server.url}/healthz", client_context(pki))
    finally:
        server.close()

    assert reply.body == b"ok\n"


def test_a_certificate_without_its_key_is_a_config_error_naming_the_key(pki: Pki):
    message = tls_error(pki.server_cert)

    assert message.startswith(f"{CONFIG}: http.tls_cert_file: ")
    assert "holds no private key" in message
    assert "tls_key_file" in message


def test_a_file_that_is_no_certificate_is_a_config_error_naming_it(pki: Pki, tmp_path: Path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")

    message = tls_error(garbage, pki.server_key)

    assert message.startswith(f"{CONFIG}: http.tls_cert_file: {garbage} holds no PEM certificate")


def test_a_key_of_another_certificate_is_a_config_error_naming_the_key_file(pki: Pki):
    message = tls_error(pki.server_cert, pki.client_key)

    assert message.startswith(f"{CONFIG}: http.tls_key_file: ")
    assert "is not the key of the certificate" in message


def test_an_encrypted_key_is_a_config_error_and_never_a_prompt(pki: Pki, tmp_path: Path):
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )

    message = tls_error(pki.server_cert, encrypted)

    assert message.startswith(f"{CONFIG}: http.tls_key_file: ")
    assert "encrypted" in message


def test_a_client_ca_that_is_not_pem_is_a_config_error_naming_the_key(pki: Pki):
    message = tls_error(pki.server_cert, pki.server_key, pki.server_key)

    assert message.startswith(f"{CONFIG}: http.tls_client_ca_file: {pki.server_key} is not a PEM")


def test_an_unreadable_certificate_is_a_config_error_naming_the_file(pki: Pki, tmp_path: Path):
    missing = tmp_path / "missing.pem"

    message = tls_error(missing, pki.server_key)

    assert message == (
        f"{CONFIG}: http.tls_cert_file: {missing} cannot be read (No such file or directory)"
    )
