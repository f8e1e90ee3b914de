"""Alerts from a running daemon to real receivers on loopback: outages, refusals, crashes."""

from __future__ import annotations

import json
import signal

import pytest

from tests.alerts.receivers import Answer, Received, Receiver, refusing_url
from tests.e2e.conftest import ACCOUNT, REGION, TARGET, cli, wait_for

pytestmark = pytest.mark.slow

SCOPE = {"target": TARGET, "account_id": ACCOUNT, "region": REGION}


def webhook(url: str, name: str = "ops", **extra: str) -> str:
    lines = [f'name = "{name}"', f'url = "{url}"', 'format = "json"']
    lines += [f"{key} = {value}" for key, value in extra.items()]
    return "\n[[alerts.webhooks]]\n" + "\n".join(lines) + "\n"


def alerts_of(daemon, *args: str) -> list[dict]:
    result = cli(daemon.config, "alerts", "--json", *args, env=daemon.env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["alerts"]


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def test_every_alert_arrives_after_an_outage_with_one_event_id_across_retries(
    sim, start_daemon, receiver
):
    first, second = sim.seed(2)
    receiver.answer(*[Answer(503)] * 3)
    daemon = start_daemon(extra=webhook(receiver.url_for("/hook")))
    wait_for(lambda: daemon.image_series(second), what="a first poll")

    sim.force_state(first, "enabling-failed", "Client.InvalidLaunchTemplateName.NotFound")
    sim.force_state(second, "enabled-failed", "Server.InsufficientInstanceCapacity")

    def both_delivered() -> list[dict] | None:
        delivered = [a for a in alerts_of(daemon) if a["outcome"] == "delivered"]
        return delivered if len(delivered) == 2 else None

    delivered = wait_for(both_delivered, timeout=40, what="both alerts delivered")
    ids_by_image: dict[str, set[str]] = {}
    for request in receiver.requests:
        body = request.json()
        assert request.header("webhook-id") == body["event_id"]
        ids_by_image.setdefault(body["image_id"], set()).add(body["event_id"])
    assert ids_by_image == {a["image_id"]: {a["event_id"]} for a in delivered}
    assert len(receiver.requests) == 3 + 2
    assert sum(len(a["attempts"]) for a in delivered) == 5
    assert daemon.value("fastlaunch_alert_deliveries_total", receiver="ops", outcome="retry") == 3
    assert daemon.value("fastlaunch_alerts_pending", receiver="ops") == 0
    assert daemon.terminate() == 0


def test_a_400_fails_the_alert_at_once_and_it_is_not_retried(sim, start_daemon, receiver):
    (image_id,) = sim.seed(1)
    receiver.always(Answer(400))
    daemon = start_daemon(extra=webhook(receiver.url_for("/hook")))
    wait_for(lambda: daemon.image_series(image_id), what="a first poll")

    sim.force_state(image_id, "enabled-failed", "Server.InsufficientInstanceCapacity")
    (failed,) = wait_for(
        lambda: [a for a in alerts_of(daemon) if a["outcome"] == "failed"], what="a failure"
    )
    assert failed["last_error"] == "HTTP 400"
    wait_for(
        lambda: daemon.value("fastlaunch_alert_deliveries_total", receiver="ops", outcome="failed"),
        what="the failure counted",
    )
    daemon.next_poll()
    assert len(receiver.requests) == 1
    assert "refused" in daemon.stderr()
    assert daemon.terminate() == 0


def test_a_410_disables_the_receiver_and_keeps_later_alerts_pending(sim, start_daemon, receiver):
    first, second = sim.seed(2)
    receiver.always(Answer(410))
    daemon = start_daemon(extra=webhook(receiver.url_for("/hook")))
    wait_for(lambda: daemon.image_series(second), what="a first poll")

    sim.force_state(first, "enabled-failed", "Server.InsufficientInstanceCapacity")
    wait_for(lambda: [a for a in alerts_of(daemon) if a["outcome"] == "failed"], what="a 410")
    sim.force_state(second, "enabled-failed", "Server.InsufficientInstanceCapacity")
    wait_for(lambda: alerts_of(daemon, "--pending"), what="the second alert enqueued")
    daemon.next_poll()
    assert len(receiver.requests) == 1
    assert daemon.value("fastlaunch_alerts_pending", receiver="ops") == 1
    assert "answered 410 Gone: disabled until its config changes" in daemon.stderr()
    assert daemon.terminate() == 0


def test_retry_after_is_honoured(sim, start_daemon, receiver):
    (image_id,) = sim.seed(1)
    receiver.answer(Answer(503, headers=(("Retry-After", "3"),)))
    daemon = start_daemon(extra=webhook(receiver.url_for("/hook")))
    wait_for(lambda: daemon.image_series(image_id), what="a first poll")

    sim.force_state(image_id, "enabled-failed", "Server.InsufficientInstanceCapacity")
    refused, accepted = receiver.wait_for_requests(2, timeout=20)
    assert accepted.at - refused.at >= 3.0
    assert accepted.json()["event_id"] == refused.json()["event_id"]
    assert daemon.terminate() == 0


def test_a_crash_before_recording_a_delivery_redelivers_it_with_the_same_event_id(
    sim, start_daemon, receiver
):
    (image_id,) = sim.seed(1)
    config = webhook(receiver.url_for("/hook"))
    daemon = start_daemon(extra=config)
    wait_for(lambda: daemon.image_series(image_id), what="a first poll")

    def kill_the_sender(request: Received) -> Answer:
        # The receiver has the alert; the daemon dies before it can record that.
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(10)
        return Answer(200)

    receiver.respond_with(kill_the_sender)
    sim.force_state(image_id, "enabled-failed", "Server.InsufficientInstanceCapacity")
    (lost,) = receiver.wait_for_requests(1, timeout=20)
    assert daemon.process.returncode == -signal.SIGKILL

    receiver.respond_with(None)
    restarted = start_daemon(extra=config)
    _, redelivered = receiver.wait_for_requests(2, timeout=20)
    assert redelivered.json()["event_id"] == lost.json()["event_id"]
    assert redelivered.header("webhook-id") == lost.header("webhook-id")
    wait_for(
        lambda: [a["outcome"] for a in alerts_of(restarted)] == ["delivered"],
        what="the delivery recorded",
    )
    assert restarted.terminate() == 0

    again = start_daemon(extra=config)
    again.next_poll()
    again.next_poll()
    assert len(receiver.requests) == 2
    assert again.terminate() == 0


CANARIES = ("canary-url-token-1f3e", "canary-hmac-key-7a9b", "canary-header-5c2d")


def test_canary_secrets_never_appear_in_logs_alerts_or_metrics(sim, start_daemon, tmp_path):
    secret = tmp_path / "webhook.key"
    secret.write_text(CANARIES[1])
    (image_id,) = sim.seed(1)
    with Receiver() as failing, refusing_url() as refused:
        failing.answer(Answer(503), Answer(500))
        failing.always(Answer(400))
        extra = webhook(
            failing.url_for(f"/hook/{CANARIES[0]}?token={CANARIES[0]}"),
            secret_file=f'"{secret}"',
            headers=f'{{ "X-Token" = "{CANARIES[2]}" }}',
        ) + webhook(f"{refused}/{CANARIES[0]}", name="down")
        daemon = start_daemon(extra=extra, log_level="DEBUG")
        wait_for(lambda: daemon.image_series(image_id), what="a first poll")
        sim.force_state(image_id, "enabled-failed", "Server.InsufficientInstanceCapacity")
        wait_for(
            lambda: [a for a in alerts_of(daemon) if a["outcome"] == "failed"],
            timeout=30,
            what="the alert failed at the 400",
        )
        wait_for(
            lambda: daemon.value(
                "fastlaunch_alert_deliveries_total", receiver="down", outcome="retry"
            ),
            what="a refused connection",
        )
        outputs = {
            "stderr": daemon.stderr(),
            "alerts": cli(daemon.config, "alerts", "--json", env=daemon.env).stdout,
            "alerts table": cli(daemon.config, "alerts", env=daemon.env).stdout,
            "metrics": repr(daemon.scrape()),
        }
        assert daemon.terminate() == 0
    outputs["stderr after stop"] = daemon.stderr()
    for where, text in outputs.items():
        for canary in CANARIES:
            assert canary not in text, f"{canary} leaked into {where}"


def test_sigterm_during_a_delivery_loses_no_alert(sim, start_daemon, receiver):
    (image_id,) = sim.seed(1)
    config = webhook(receiver.url_for("/hook"))
    receiver.answer(Answer(200, delay=3.0))
    daemon = start_daemon(extra=config)
    wait_for(lambda: daemon.image_series(image_id), what="a first poll")

    sim.force_state(image_id, "enabled-failed", "Server.InsufficientInstanceCapacity")
    (in_flight,) = receiver.wait_for_requests(1, timeout=20)
    assert daemon.terminate(timeout=10) == 0

    # Delivered before the stop, or still due and sent by the next start: never lost.
    restarted = start_daemon(extra=config)
    wait_for(
        lambda: [a["outcome"] for a in alerts_of(restarted)] == ["delivered"],
        what="the alert delivered",
    )
    event_ids = {r.json()["event_id"] for r in receiver.requests}
    assert event_ids == {in_flight.json()["event_id"]}
    assert restarted.terminate() == 0


def test_json_logs_parse_line_by_line_and_carry_no_secret(sim, simulator_server, tmp_path):
    from tests.e2e.conftest import aws_env, write_config

    secret = tmp_path / "webhook.key"
    secret.write_text(CANARIES[1])
    (image_id,) = sim.seed(1)
    sim.force_state(image_id, "enabled-failed", "Server.InsufficientInstanceCapacity")
    with Receiver() as failing:
        failing.always(Answer(503))
        hook = webhook(
            failing.url_for(f"/hook/{CANARIES[0]}"),
            secret_file=f'"{secret}"',
            headers=f'{{ "X-Token" = "{CANARIES[2]}" }}',
        )
        config = write_config(
            tmp_path,
            simulator_server.endpoint_url,
            f"sqlite:///{tmp_path / 'json.sqlite3'}",
            hook,
        )
        env = aws_env(simulator_server.endpoint_url)
        result = cli(config, "--log-format", "json", "--log-level", "DEBUG", "poll", env=env)
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any(e.get("receiver") == "ops" for e in entries)
    for canary in CANARIES:
        assert canary not in result.stderr
