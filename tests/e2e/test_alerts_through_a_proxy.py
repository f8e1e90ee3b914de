"""A running daemon sends its alerts through the proxy its environment names (real tinyproxy)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.alerts.receivers import CertificateAuthority, Receiver
from tests.alerts.tinyproxy import Tinyproxy, tinyproxies
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.slow

USER = "alice"
PASSWORD = "pr0xy-pa55word"


@pytest.fixture
def start_tinyproxy(tmp_path: Path) -> Iterator[Callable[..., Tinyproxy]]:
    with tinyproxies(tmp_path / "proxies") as start:
        yield start


def test_the_daemon_sends_alerts_through_the_proxy_of_its_environment_and_never_logs_its_password(
    sim, start_daemon, start_tinyproxy, tmp_path: Path
) -> None:
    proxy = start_tinyproxy(credentials=(USER, PASSWORD))
    authority = CertificateAuthority(tmp_path / "ca")
    (image_id,) = sim.seed(1)
    with Receiver(tls=authority.server_context()) as receiver:
        webhook = (
            "\n[[alerts.webhooks]]\nname = 'ops'\n"
            f"url = '{receiver.url_for('/hook')}'\nca_file = '{authority.ca_file}'\n"
        )
        # The simulator is plain HTTP, so HTTPS_PROXY leaves the daemon's AWS requests direct.
        env = {"HTTPS_PROXY": proxy.url_with(USER, PASSWORD), "NO_PROXY": "example.com"}
        daemon = start_daemon(extra=webhook, log_level="DEBUG", env=env)
        wait_for(lambda: daemon.image_series(image_id), what="a first poll")

        sim.force_state(image_id, "enabled-failed", "Server.InsufficientInstanceCapacity")

        (request,) = receiver.wait_for_requests(1, timeout=20)
        assert request.json()["image_id"] == image_id
        assert proxy.wait_for_request(f"CONNECT 127.0.0.1:{receiver.port} ")
        wait_for(
            lambda: daemon.value(
                "fastlaunch_alert_deliveries_total", receiver="ops", outcome="delivered"
            ),
            what="the delivery counted",
        )
        assert daemon.terminate() == 0
    log = daemon.stderr()
    assert f"through proxy 127.0.0.1:{proxy.port}" in log
    assert PASSWORD not in log
