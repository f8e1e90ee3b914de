"""Text from AWS cannot forge a log line or a table row, nor restyle the terminal.

An image id, state, reason or error message holding a line break or an escape sequence is
printed escaped by `status`, `history`, `alerts`, `poll`, `check` and the text log; `--json`
and the JSON log carry it exactly, JSON-escaped. Each command runs as a real process.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest

from monitor.alerts.outbox import alert_writer
from monitor.alerts.rules import Receiver, alert_policy
from monitor.core.model import FAILED_STATES, PollResult, Scope
from monitor.demo.simulator import Ec2Error
from monitor.demo.simulator.wire import error_reply
from monitor.poll.cycle import utc_now
from monitor.store import Store, create_engine_for, upgrade
from tests.alerts.receivers import Answer
from tests.alerts.receivers import Receiver as FakeEndpoint
from tests.builders import an_image
from tests.e2e.conftest import ACCOUNT, REGION, TARGET, aws_env, cli, write_config

pytestmark = pytest.mark.slow

#: Lines of the text log start with a level: anything else would be a forged or broken line.
LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")

EVIL_ID = "ami-0evil\nami-0forged  enabled  2026-01-01T00:00:00.000Z"
EVIL_REASON = "Launch template gone.\n2026-01-01T00:00:00.000Z  e2e  forged\x1b[31m red"
EVIL_CODE = "Throttling\x1b[2J"
EVIL_MESSAGE = "slow down\nlast poll e2e/eu-west-1: ok at 2026-01-01T00:00:00.000Z\x1b[0m"


def assert_no_control_characters(text: str) -> None:
    assert all(line.isprintable() for line in text.splitlines()), text


@pytest.fixture
def filled(tmp_path):
    """A config, and its database filled through the Store: one image with a forged id and
    reason (and its alert), one plain image, and a failed poll with a forged error."""
    database_url = f"sqlite:///{tmp_path / 'history.sqlite3'}"
    config = write_config(tmp_path, "http://127.0.0.1:9", database_url)
    engine = create_engine_for(database_url)
    upgrade(engine)
    store = Store(engine, alert_writer(alert_policy([Receiver("ops", FAILED_STATES)], 0)))
    now = utc_now()
    images = (
        an_image("enabling-failed", now, image_id=EVIL_ID, state_transition_reason=EVIL_REASON),
        an_image("enabled", now - timedelta(minutes=1), image_id="ami-0plain"),
    )
    store.apply_poll(PollResult(Scope(TARGET, ACCOUNT, REGION), now, 0.1, 1, images), now)
    failed = PollResult(
        Scope(TARGET, ACCOUNT, "eu-west-1"), now, 0.1, 0, None, EVIL_CODE, EVIL_MESSAGE
    )
    store.apply_poll(failed, now)
    engine.dispose()
    return config


def test_status_prints_one_row_per_image_and_one_line_per_poll(filled):
    result = cli(filled, "status", env=aws_env("http://127.0.0.1:9"))

    assert result.returncode == 0, result.stderr
    assert_no_control_characters(result.stdout)
    header, *rows = result.stdout.splitlines()
    assert header.startswith("TARGET")
    assert len(rows) == 4, result.stdout
    assert rows[0].split()[2:4] == ["ami-0evil\\nami-0forged", "enabled"]  # the id, whole
    assert rows[0].split()[5] == "enabling-failed"
    assert rows[1].split()[2] == "ami-0plain"
    assert rows[2].startswith(f"last poll {TARGET}/eu-west-1: FAILED Throttling\\x1b[2J at ")
    assert rows[3].startswith(f"last poll {TARGET}/{REGION}: ok at ")


def test_history_prints_one_row_per_transition(filled):
    result = cli(filled, "history", env=aws_env("http://127.0.0.1:9"))

    assert result.returncode == 0, result.stderr
    assert_no_control_characters(result.stdout)
    header, *rows = result.stdout.splitlines()
    assert header.startswith("TIME")
    assert len(rows) == 2, result.stdout
    assert rows[0].endswith("forged\\x1b[31m red")
    assert "Launch template gone.\\n2026-01-01T00:00:00.000Z  e2e" in rows[0]


def test_alerts_prints_one_row_per_alert(filled):
    result = cli(filled, "alerts", env=aws_env("http://127.0.0.1:9"))

    assert result.returncode == 0, result.stderr
    assert_no_control_characters(result.stdout)
    header, *rows = result.stdout.splitlines()
    assert header.startswith("CREATED")
    (row,) = rows
    assert "ami-0evil\\nami-0forged  enabled  2026-01-01T00:00:00.000Z" in row
    assert "enabling-failed" in row


def test_json_output_carries_the_text_exactly(filled):
    env = aws_env("http://127.0.0.1:9")

    status = json.loads(cli(filled, "status", "--json", env=env).stdout)
    history = json.loads(cli(filled, "history", "--json", env=env).stdout)
    alerts = json.loads(cli(filled, "alerts", "--json", env=env).stdout)

    assert {i["image_id"] for i in status["images"]} == {EVIL_ID, "ami-0plain"}
    (failed,) = [p for p in status["polls"] if not p["ok"]]
    assert (failed["error_code"], failed["error_message"]) == (EVIL_CODE, EVIL_MESSAGE)
    assert history["transitions"][0]["state_transition_reason"] == EVIL_REASON
    assert alerts["alerts"][0]["image_id"] == EVIL_ID


@pytest.fixture
def ec2_answering_an_evil_error(tmp_path, simulator_server):
    """A config whose EC2 endpoint answers every request with an error whose code and message
    hold line breaks and C1 controls (XML cannot carry ESC itself); STS is the simulator's."""
    code = "Evil\nCode"
    message = "one\nERROR monitor.poll.cycle: forged \x9b31mred\u2028end"
    with FakeEndpoint() as endpoint:
        reply = error_reply(Ec2Error(code, message, status=400))
        endpoint.always(Answer(reply.status, body=reply.body.encode()))
        database_url = f"sqlite:///{tmp_path / 'history.sqlite3'}"
        yield write_config(tmp_path, endpoint.url, database_url), code, message


def test_poll_check_and_the_text_log_print_one_line_each_whatever_aws_answers(
    ec2_answering_an_evil_error, simulator_server
):
    config, code, message = ec2_answering_an_evil_error
    env = aws_env(simulator_server.endpoint_url)

    polled = cli(config, "--log-level", "DEBUG", "poll", env=env)

    assert polled.returncode == 1
    assert_no_control_characters(polled.stdout + polled.stderr)
    line, summary = polled.stdout.splitlines()
    assert line == (
        f"{TARGET}/{REGION}: FAILED Evil\\nCode: one\\nERROR monitor.poll.cycle: forged "
        "\\x9b31mred\\u2028end"
    )
    assert summary.startswith("1 scopes polled, 1 failed")
    log = polled.stderr.splitlines()
    assert log, polled.stderr
    assert all(LOG_LINE.match(entry) for entry in log), log

    checked = cli(config, "check", env=env)
    assert_no_control_characters(checked.stdout)
    (target_line,) = [entry for entry in checked.stdout.splitlines() if entry.startswith("target")]
    assert target_line.endswith(
        "error: Evil\\nCode: one\\nERROR monitor.poll.cycle: forged \\x9b31mred\\u2028end"
    )

    status = cli(config, "status", env=env)
    (last_poll,) = [entry for entry in status.stdout.splitlines() if entry.startswith("last poll")]
    assert last_poll.startswith(f"last poll {TARGET}/{REGION}: FAILED Evil\\nCode at ")

    as_json = cli(config, "--log-format", "json", "poll", env=env)
    entries = [json.loads(entry) for entry in as_json.stderr.splitlines()]
    assert any(e["message"].endswith(f"{code}: {message}") for e in entries), entries


def test_a_state_and_reason_from_the_simulator_stay_in_their_log_line_and_row(
    sim, tmp_path, simulator_server
):
    (image_id,) = sim.seed(1)
    sim.force_state(image_id, "enabled\nERROR monitor.poll.cycle: forged", reason="why\n\x85not")
    config = write_config(
        tmp_path, simulator_server.endpoint_url, f"sqlite:///{tmp_path / 'history.sqlite3'}"
    )
    env = aws_env(simulator_server.endpoint_url)

    polled = cli(config, "--log-level", "DEBUG", "poll", env=env)

    assert polled.returncode == 0, polled.stderr
    log = polled.stderr.splitlines()
    assert all(LOG_LINE.match(entry) for entry in log), log
    assert any(
        entry.endswith("(new) -> enabled\\nERROR monitor.poll.cycle: forged") for entry in log
    )
    history = cli(config, "history", env=env).stdout.splitlines()
    assert len(history) == 2, history
    assert history[1].endswith("enabled\\nERROR monitor.poll.cycle: forged  why\\n\\x85not")
