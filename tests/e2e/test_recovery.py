"""A PostgreSQL restart under a running daemon: it reconnects by itself and loses nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from monitor.store.schema import history
from tests.alerts.receivers import Receiver
from tests.e2e.conftest import ACCOUNT, REGION, TARGET, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SCOPE = {"target": TARGET, "account_id": ACCOUNT, "region": REGION}


def cluster(action: str, *options: str) -> None:
    """Stop or start this machine's PostgreSQL cluster (the one the tests use)."""
    versions = sorted(os.listdir("/etc/postgresql"))
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", action, *options],
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture
def restartable_postgres(postgres_url):
    if not Path("/etc/postgresql").is_dir() or os.geteuid() != 0:
        pytest.skip("needs root and this machine's own PostgreSQL cluster to restart")
    yield postgres_url
    # Whatever happened, leave the cluster running for the tests after this one.
    subprocess.run(
        [
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            sorted(os.listdir("/etc/postgresql"))[-1],
            "main",
            "start",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_a_postgresql_restart_is_recovered_without_a_daemon_restart(
    sim, start_daemon, restartable_postgres
):
    url = restartable_postgres
    first, second = sim.seed(2)
    with Receiver() as receiver:
        hook = f'\n[[alerts.webhooks]]\nname = "ops"\nurl = "{receiver.url_for("/hook")}"\n'
        daemon = start_daemon(url, hook)
        wait_for(lambda: daemon.value("fastlaunch_poll_success", **SCOPE) == 1, what="a poll")
        sim.force_state(first, "enabled-failed", "Server.InsufficientInstanceCapacity")
        receiver.wait_for_requests(1, timeout=20)

        cluster("stop", "-m", "immediate")
        wait_for(
            lambda: daemon.value("fastlaunch_poll_success", **SCOPE) == 0,
            what="the outage noticed",
        )
        lost = daemon.value("fastlaunch_poll_errors_total", **SCOPE, error="StoreError")
        assert lost is not None
        assert lost >= 1
        # Meanwhile the second image fails: the daemon must catch up once the database is back.
        sim.force_state(second, "enabling-failed", "Client.InvalidLaunchTemplateId.NotFound")
        cluster("start")

        wait_for(lambda: daemon.value("fastlaunch_leader") == 1, timeout=30, what="leading again")
        receiver.wait_for_requests(2, timeout=30)
        assert daemon.process.poll() is None
        assert daemon.terminate() == 0

    engine = create_engine(url)
    with engine.connect() as connection:
        recorded = connection.execute(select(func.count()).select_from(history)).scalar_one()
    engine.dispose()
    # Two first sights, the failure before the outage, the one during it: each exactly once.
    assert recorded == 4
    assert sorted(r.json()["image_id"] for r in receiver.requests) == sorted([first, second])
