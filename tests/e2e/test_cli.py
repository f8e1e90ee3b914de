"""The commands besides `run`, each as a process, with their exit codes and output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e.conftest import ACCOUNT, REGION, TARGET, aws_env, cli, write_config

pytestmark = pytest.mark.slow


BAD_CONFIGS = {
    "an unknown key": ("[monitor]\nintervall = '5m'\n", "monitor.intervall", "interval"),
    "a bad duration": ("[monitor]\ninterval = '5 minutes'\n", "monitor.interval", "1h30m"),
    "a wrong type": ("[monitor]\nmax_concurrency = 'many'\n", "monitor.max_concurrency", "integer"),
    "an unknown database scheme": (
        "[database]\nurl = 'mysql://db/x'\n",
        "database.url",
        "postgresql+psycopg",
    ),
    "a webhook without url": (
        "[[alerts.webhooks]]\nname = 'ops'\n",
        "alerts.webhooks[0]",
        "url",
    ),
    "broken TOML": ("[monitor\n", "line 1", "TOML"),
}


@pytest.mark.parametrize(("text", "key", "hint"), BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_a_bad_config_exits_2_with_one_line_naming_file_and_key(tmp_path, text, key, hint):
    config = tmp_path / "config.toml"
    config.write_text(text)
    result = cli(config, "run", env=aws_env("http://127.0.0.1:9"))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert str(config) in line
    assert key in line
    assert hint in line
    assert "Traceback" not in result.stderr


def test_a_missing_config_file_exits_2(tmp_path):
    result = cli(tmp_path / "nope.toml", "status", env=aws_env("http://127.0.0.1:9"))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "nope.toml" in line


def test_bad_usage_exits_2():
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "history", "--limit", "zero"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "--limit" in result.stderr


def test_a_database_password_never_appears_in_a_config_error(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[database]\nurl = 'mysql://user:hunter2-canary@db/x'\n")
    result = cli(config, "status", env=aws_env("http://127.0.0.1:9"))
    assert result.returncode == 2
    assert "hunter2-canary" not in result.stderr + result.stdout


@pytest.fixture
def configured(tmp_path, simulator_server):
    def make(database_url: str | None = None):
        url = database_url or f"sqlite:///{tmp_path / 'history.sqlite3'}"
        return write_config(tmp_path, simulator_server.endpoint_url, url)

    return make


def test_poll_records_one_cycle_and_exits_0(sim, configured, simulator_server):
    sim.seed(450)
    config = configured()
    result = cli(config, "poll", env=aws_env(simulator_server.endpoint_url))
    assert result.returncode == 0, result.stderr
    assert f"{TARGET}/{REGION}: ok, 450 images in 3 pages, 450 transitions" in result.stdout

    again = cli(config, "poll", env=aws_env(simulator_server.endpoint_url))
    assert "450 images in 3 pages, 0 transitions" in again.stdout


def test_poll_exits_1_when_a_target_fails(sim, configured, simulator_server):
    sim.deny()
    result = cli(configured(), "poll", env=aws_env(simulator_server.endpoint_url))
    assert result.returncode == 1
    assert "FAILED UnauthorizedOperation" in result.stdout


@pytest.mark.postgres
def test_poll_works_on_postgresql(sim, configured, simulator_server, postgres_url):
    sim.seed(5)
    config = configured(postgres_url)
    env = aws_env(simulator_server.endpoint_url)
    result = cli(config, "poll", env=env)
    assert result.returncode == 0, result.stderr
    status = json.loads(cli(config, "status", "--json", env=env).stdout)
    assert len(status["images"]) == 5
    assert {i["account_id"] for i in status["images"]} == {ACCOUNT}


def test_check_reports_a_permitted_target_and_exits_0(sim, configured, simulator_server):
    result = cli(configured(), "check", env=aws_env(simulator_server.endpoint_url))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"target {TARGET} ({ACCOUNT}): {REGION} permitted" in result.stdout


def test_check_exits_1_when_a_target_lacks_permission(sim, configured, simulator_server):
    sim.deny()
    result = cli(configured(), "check", env=aws_env(simulator_server.endpoint_url))
    assert result.returncode == 1
    assert f"{REGION} denied" in result.stdout


def test_status_on_a_database_not_created_yet_says_so_and_exits_1(configured):
    result = cli(configured(), "status", env=aws_env("http://127.0.0.1:9"))
    assert result.returncode == 1
    assert "db upgrade" in result.stderr


def test_db_upgrade_creates_the_schema_that_status_reads(configured):
    config = configured()
    env = aws_env("http://127.0.0.1:9")
    upgraded = cli(config, "db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    status = cli(config, "status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == {"images": [], "polls": []}


def test_db_prune_removes_what_the_retention_no_longer_keeps_and_prints_it_per_table(
    sim, configured, simulator_server, tmp_path
):
    import sqlite3

    sim.seed(3)
    config = configured()
    env = aws_env(simulator_server.endpoint_url)
    for _ in range(3):
        assert cli(config, "poll", env=env).returncode == 0
    database = sqlite3.connect(tmp_path / "history.sqlite3")
    with database:
        # A thousand days older, in the stored text format (microseconds), in the same order.
        database.execute(
            "UPDATE polls SET started_at = "
            "strftime('%Y-%m-%d %H:%M:%f', started_at, '-1000 days') || '000'"
        )
    database.close()

    pruned = cli(config, "db", "prune", "--vacuum", env=env)

    assert pruned.returncode == 0, pruned.stderr
    # The first poll recorded the transitions and the last is the scope's newest: both stay.
    assert pruned.stdout.splitlines()[:4] == [
        "polls: 1 removed",
        "history: 0 removed",
        "alert_outbox: 0 removed",
        "alert_attempts: 0 removed",
    ]
    assert pruned.stdout.splitlines()[-1] == "vacuumed"
    status = json.loads(cli(config, "status", "--json", env=env).stdout)
    assert len(status["images"]) == 3
