"""A PostgreSQL restart under a running daemon: it reconnects by itself and loses nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, make_url, select
from sqlalchemy.exc import ProgrammingError

from monitor.store.schema import history, images
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


def test_a_postgresql_database_recreated_empty_is_migrated_again_and_polled(
    sim, start_daemon, postgres_url
):
    (image,) = sim.seed(1)
    daemon = start_daemon(postgres_url)
    wait_for(lambda: daemon.value("fastlaunch_poll_success", **SCOPE) == 1, what="a poll")

    url = make_url(postgres_url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE "{url.database}" WITH (FORCE)')
        connection.exec_driver_sql(f'CREATE DATABASE "{url.database}"')
    admin.dispose()

    wait_for(
        lambda: "applying the migrations again" in daemon.stderr(),
        timeout=30,
        what="the schema restored",
    )
    engine = create_engine(postgres_url)

    def recorded() -> list[str]:
        with engine.connect() as connection:
            try:
                return list(connection.execute(select(images.c.image_id)).scalars())
            except ProgrammingError:
                return []

    wait_for(lambda: recorded() == [image], timeout=30, what="the image recorded again")
    engine.dispose()
    assert "ERROR" in daemon.stderr()
    assert daemon.value("fastlaunch_poll_success", **SCOPE) == 1
    assert daemon.terminate() == 0
