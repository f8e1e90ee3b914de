"""The `alertmanager` format against a real Alertmanager (Debian's `prometheus-alertmanager`).

Each test starts its own Alertmanager on loopback (a null receiver, no gossip) and the daemon
polling the simulator, then reads back what Alertmanager made of the alerts through its own API.

What Alertmanager 0.25 reports, found by running it: `GET /api/v2/alerts` never lists an alert
whose `endsAt` has passed, whatever its `active`/`silenced`/`inhibited`/`unprocessed` filters
say (they only sort the alerts still running), so a resolve shows as the alert's absence;
that the resolve was really received, and not merely never listed, is told by the counter
`alertmanager_alerts_received_total{status="resolved",version="v2"}`, which counts every alert
posted with an `endsAt` already past.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor.alerts.dispatcher import ALERTMANAGER_RESEND
from monitor.alerts.outbox import Outbox
from monitor.demo.simulator import FastLaunchSimulator, ManualClock
from monitor.store import create_engine_for
from tests.e2e.conftest import ACCOUNT, REGION, TARGET, DaemonProcess, wait_for
from tests.processes import start_on_free_port, stop

pytestmark = pytest.mark.slow

BINARY = "prometheus-alertmanager"
RECEIVER = "am"
REASON = "Client.InvalidLaunchTemplateId.NotFound: lt-0123456789abcdef0 does not exist"
# One route to a receiver that notifies nobody: the test reads Alertmanager's API, not mail.
CONFIG = """\
route:
  receiver: "null"
receivers:
  - name: "null"
"""


@dataclass
class Alertmanager:
    """A running Alertmanager and the API calls the tests make of it."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        """`GET /api/v2/alerts` with `filters` as its query (`active="false"`, ...)."""
        query = "&".join(f"{name}={value}" for name, value in filters.items())
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts?{query}", timeout=5) as answer:
            listed: list[dict[str, Any]] = json.load(answer)
        return listed

    def received(self, status: str) -> float:
        """How many alerts of `status` (firing, resolved) arrived through API v2."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "alertmanager_alerts_received_total" and sample.labels == {
                    "status": status,
                    "version": "v2",
                }:
                    return sample.value
        return 0.0


@pytest.fixture
def alertmanager_binary() -> str:
    """The Alertmanager executable; skipped without it, except under CI=true: there, failed."""
    found = shutil.which(BINARY)
    if found is None:
        problem = f"{BINARY} is not installed (Debian package prometheus-alertmanager)"
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"ALERTMANAGER TESTS CANNOT RUN IN CI: {problem}; .ci/run must install it.",
                pytrace=False,
            )
        pytest.skip(problem)
    return found


@pytest.fixture
def start_alertmanager(
    tmp_path: Path, alertmanager_binary: str
) -> Iterator[Callable[[], Alertmanager]]:
    """Start Alertmanagers on loopback, each with its own storage; all stopped after the test."""
    config = tmp_path / "alertmanager.yml"
    config.write_text(CONFIG)
    started: list[subprocess.Popen[bytes]] = []

    def start() -> Alertmanager:
        name = f"alertmanager-{len(started)}"
        storage = tmp_path / name
        storage.mkdir()
        log = tmp_path / f"{name}.log"
        command = [
            alertmanager_binary,
            f"--config.file={config}",
            f"--storage.path={storage}",
            # Empty: no gossip listener, so nothing listens beyond loopback.
            "--cluster.listen-address=",
            "--log.level=debug",
        ]
        process, url = start_on_free_port("Alertmanager", command, log, started)
        return Alertmanager(process, url, log)

    yield start
    for process in started:
        stop(process)


def webhook(*alertmanagers: Alertmanager) -> str:
    """The daemon's config for one `alertmanager` webhook sending to every instance given."""
    urls = ", ".join(f'"{am.url}"' for am in alertmanagers)
    return f"""
[[alerts.webhooks]]
name = "{RECEIVER}"
urls = [{urls}]
format = "alertmanager"
"""


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value)


def manual_clock(sim: FastLaunchSimulator) -> ManualClock:
    """The clock the `sim` fixture put the simulator on."""
    clock = sim.clock
    assert isinstance(clock, ManualClock)
    return clock


def fail_image(sim: FastLaunchSimulator, daemon: DaemonProcess) -> tuple[str, datetime]:
    """Seed an enabled image, let the daemon see it, then fail it; returns it and its failure time.

    The simulator's clock is put in the past, so that the failure and the recovery that
    follows both happened before now, as AWS reports them.
    """
    manual_clock(sim).set(datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10))
    (image_id,) = sim.seed(1, states="enabled")
    wait_for(lambda: daemon.image_series(image_id), what="the daemon to see the image")
    failed = sim.force_state(image_id, "enabling-failed", REASON)
    return image_id, failed.state_transition_time


def recover_image(sim: FastLaunchSimulator, image_id: str) -> None:
    manual_clock(sim).advance(300)
    sim.force_state(image_id, "enabled")


def assert_lists_the_failure(alertmanager: Alertmanager, image_id: str, since: datetime) -> None:
    (alert,) = wait_for(alertmanager.alerts, what="Alertmanager to list the alert")
    assert alert["labels"] == {
        "alertname": "FastLaunchFailed",
        "account_id": ACCOUNT,
        "region": REGION,
        "image_id": image_id,
        "state": "enabling-failed",
        "target": TARGET,
    }
    assert set(alert["annotations"]) == {"summary", "description"}
    assert image_id in alert["annotations"]["summary"]
    assert "enabling-failed" in alert["annotations"]["summary"]
    assert alert["annotations"]["description"] == REASON
    assert alert["status"] == {"state": "active", "silencedBy": [], "inhibitedBy": []}
    assert parse(alert["startsAt"]) == since
    # Alertmanager resolves an alert by itself at its `endsAt`: a firing alert must outlive
    # the re-send that renews it.
    assert parse(alert["endsAt"]) - parse(alert["updatedAt"]) > ALERTMANAGER_RESEND
    assert alertmanager.alerts(active="false") == []
    assert alertmanager.received("firing") == 1


def assert_resolved(alertmanager: Alertmanager) -> None:
    wait_for(lambda: alertmanager.received("resolved") == 1, what="Alertmanager to get the resolve")
    for filters in ({}, {"active": "false"}, {"silenced": "true", "inhibited": "true"}):
        assert alertmanager.alerts(**filters) == [], filters
    assert alertmanager.received("firing") == 1


def _utc(value: datetime) -> datetime:
    # SQLite hands datetimes back naive; the store keeps them in UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass
class DaemonOutbox:
    """The daemon's alert outbox, read from its SQLite file as the `alerts` command reads it."""

    url: str
    outbox: Outbox

    def delivered_at(self, status: str) -> datetime | None:
        """When the one alert of `status` was delivered to the receiver, if it was."""
        (view,) = [v for v in self.outbox.listing() if v.entry.status == status]
        return None if view.delivered_at is None else _utc(view.delivered_at)

    def next_send(self) -> datetime | None:
        """When the outbox next sends anything to the receiver (None: nothing left to send)."""
        due = self.outbox.next_due(datetime.now(UTC), receivers=[RECEIVER])
        return None if due is None else _utc(due)


@pytest.fixture
def daemon_outbox(tmp_path: Path) -> Iterator[DaemonOutbox]:
    url = f"sqlite:///{tmp_path / 'history.sqlite3'}"
    engine = create_engine_for(url)
    yield DaemonOutbox(url, Outbox(engine))
    engine.dispose()


def test_alertmanager_lists_a_failure_as_active_and_drops_it_once_the_image_recovers(
    start_alertmanager, sim, start_daemon, daemon_outbox
):
    alertmanager = start_alertmanager()
    daemon = start_daemon(database_url=daemon_outbox.url, extra=webhook(alertmanager))
    image_id, since = fail_image(sim, daemon)

    assert_lists_the_failure(alertmanager, image_id, since)
    # The re-send every minute that keeps the alert alive is scheduled in the outbox when the
    # firing alert is delivered; the test reads the schedule instead of waiting a minute.
    firing = wait_for(lambda: daemon_outbox.delivered_at("firing"), what="the firing delivery")
    assert daemon_outbox.next_send() == firing + ALERTMANAGER_RESEND

    recover_image(sim, image_id)
    assert_resolved(alertmanager)
    wait_for(lambda: daemon_outbox.delivered_at("resolved"), what="the resolve's delivery")
    # Resolved: nothing is re-sent any more.
    assert daemon_outbox.next_send() is None
    assert daemon.terminate() == 0
    assert "Traceback" not in daemon.stderr()


def test_every_instance_of_an_alertmanager_cluster_gets_the_alert_and_its_resolve(
    start_alertmanager, sim, start_daemon
):
    instances = (start_alertmanager(), start_alertmanager())
    daemon = start_daemon(extra=webhook(*instances))
    image_id, since = fail_image(sim, daemon)

    for alertmanager in instances:
        assert_lists_the_failure(alertmanager, image_id, since)

    recover_image(sim, image_id)
    for alertmanager in instances:
        assert_resolved(alertmanager)
    assert daemon.terminate() == 0
