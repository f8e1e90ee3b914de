"""What each receiver format sends for an outbox entry: exact bodies, headers and URLs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from monitor.alerts.formats import USER_AGENT, build_requests
from monitor.alerts.records import OutboxEntry, WebhookRequest
from monitor.alerts.rules import FAILED, FIRING, RESOLVED, STUCK
from monitor.alerts.signing import sign, verify
from monitor.config.settings import WebhookSettings
from monitor.core.model import Scope

SCOPE = Scope(target="prod", account_id="111122223333", region="us-east-1")
IMAGE = "ami-0123456789abcdef0"
EVENT_ID = "0f8e7c1a-3c55-5b7e-9d0a-2f4c6b8e1a21"
FAILED_AT = datetime(2026, 11, 26, 10, 0, 0, 123000, tzinfo=UTC)
STUCK_SINCE = datetime(2026, 11, 26, 7, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 26, 10, 5, tzinfo=UTC)
NOW_UNIX = 1795687500
FAILED_REASON = "Server.InternalError: Pre-provisioning failed; retry EnableFastLaunch."
URL = "https://hooks.example.com/fastlaunch"
HMAC_KEY = "canary-hmac-key"

FIRING_PAYLOAD: dict[str, Any] = {
    "version": 1,
    "event_id": EVENT_ID,
    "status": "firing",
    "kind": "failed",
    "target": "prod",
    "account_id": "111122223333",
    "region": "us-east-1",
    "image_id": IMAGE,
    "state": "enabling-failed",
    "previous_state": "enabling",
    "state_transition_reason": FAILED_REASON,
    "state_transition_time": "2026-11-26T10:00:00.123Z",
    "observed_at": "2026-11-26T10:01:00.000Z",
    "target_resource_count": 5,
    "max_parallel_launches": 6,
    "launch_template": {"id": "lt-0abc", "name": "windows-base", "version": "3"},
}
RESOLVED_PAYLOAD: dict[str, Any] = {
    **FIRING_PAYLOAD,
    "status": "resolved",
    "state": "enabled",
    "previous_state": "enabling-failed",
    "state_transition_reason": "Client.UserInitiated - Lifecycle state transition",
    "state_transition_time": "2026-11-26T10:30:00.456Z",
    "observed_at": "2026-11-26T10:31:00.000Z",
}
STUCK_PAYLOAD: dict[str, Any] = {
    **FIRING_PAYLOAD,
    "kind": "stuck",
    "state": "enabling",
    "previous_state": "enabling",
    "state_transition_reason": "Client.UserInitiated",
    "state_transition_time": "2026-11-26T07:00:00.000Z",
}


def firing() -> OutboxEntry:
    return _entry(FAILED, FIRING, "enabling-failed", FAILED_AT, FIRING_PAYLOAD)


def resolved() -> OutboxEntry:
    return _entry(FAILED, RESOLVED, "enabling-failed", FAILED_AT, RESOLVED_PAYLOAD)


def stuck() -> OutboxEntry:
    return _entry(STUCK, FIRING, "enabling", STUCK_SINCE, STUCK_PAYLOAD)


def _entry(
    kind: str, status: str, state: str, since: datetime, payload: Mapping[str, Any]
) -> OutboxEntry:
    return OutboxEntry(
        id=7,
        event_id=EVENT_ID,
        receiver="ops",
        kind=kind,
        status=status,
        scope=SCOPE,
        image_id=IMAGE,
        state=state,
        since=since,
        payload=payload,
        attempts=0,
        created_at=FAILED_AT,
    )


def webhook(
    format_: str,
    *,
    urls: tuple[str, ...] = (URL,),
    secret: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> WebhookSettings:
    return WebhookSettings(name="ops", urls=urls, format=format_, secret=secret, headers=headers)


def only(requests: list[WebhookRequest]) -> WebhookRequest:
    assert len(requests) == 1
    return requests[0]


def sent(request: WebhookRequest) -> Any:
    return json.loads(request.body)


# json


def test_the_json_body_is_the_payload_compact_and_in_spec_order() -> None:
    request = only(build_requests(firing(), webhook("json"), NOW))

    assert request.method == "POST"
    assert request.url == URL
    assert request.body == (
        b'{"version":1,"event_id":"0f8e7c1a-3c55-5b7e-9d0a-2f4c6b8e1a21","status":"firing",'
        b'"kind":"failed","target":"prod","account_id":"111122223333","region":"us-east-1",'
        b'"image_id":"ami-0123456789abcdef0","state":"enabling-failed",'
        b'"previous_state":"enabling","state_transition_reason":"Server.InternalError: '
        b'Pre-provisioning failed; retry EnableFastLaunch.",'
        b'"state_transition_time":"2026-11-26T10:00:00.123Z",'
        b'"observed_at":"2026-11-26T10:01:00.000Z","target_resource_count":5,'
        b'"max_parallel_launches":6,'
        b'"launch_template":{"id":"lt-0abc","name":"windows-base","version":"3"}}'
    )


@pytest.mark.parametrize("entry", [resolved(), stuck()], ids=["resolved", "stuck"])
def test_the_json_body_of_a_resolve_or_a_stuck_alert_is_its_payload(entry: OutboxEntry) -> None:
    request = only(build_requests(entry, webhook("json"), NOW))

    assert sent(request) == entry.payload
    assert list(sent(request)) == list(FIRING_PAYLOAD)


def test_json_headers_name_the_event_and_the_attempt_time() -> None:
    request = only(build_requests(firing(), webhook("json"), NOW))

    assert request.headers == {
        "User-Agent": USER_AGENT,
        "Content-Type": "application/json",
        "webhook-id": EVENT_ID,
        "webhook-timestamp": str(NOW_UNIX),
    }


def test_a_json_request_is_signed_so_that_the_receiver_verifies_it() -> None:
    request = only(build_requests(firing(), webhook("json", secret=HMAC_KEY), NOW))
    signature = request.headers["webhook-signature"]

    assert verify(HMAC_KEY, EVENT_ID, NOW_UNIX, request.body, signature)
    assert not verify("another key", EVENT_ID, NOW_UNIX, request.body, signature)
    assert not verify(HMAC_KEY, EVENT_ID, NOW_UNIX, request.body + b" ", signature)


def test_a_json_request_is_signed_the_way_the_published_test_vector_is() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    request = only(build_requests(firing(), webhook("json", secret=secret), NOW))

    assert request.headers["webhook-signature"] == sign(secret, EVENT_ID, NOW_UNIX, request.body)
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}') == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_every_attempt_carries_the_same_webhook_id_and_its_own_timestamp() -> None:
    hook = webhook("json", secret=HMAC_KEY)
    attempts = [
        only(build_requests(firing(), hook, NOW + timedelta(seconds=delay)))
        for delay in (0, 1, 37, 3600)
    ]

    assert {request.headers["webhook-id"] for request in attempts} == {EVENT_ID}
    assert [request.headers["webhook-timestamp"] for request in attempts] == [
        str(NOW_UNIX + delay) for delay in (0, 1, 37, 3600)
    ]
    assert len({request.headers["webhook-signature"] for request in attempts}) == 4
    assert {request.body for request in attempts} == {attempts[0].body}


def test_a_webhook_without_a_secret_sends_no_signature() -> None:
    request = only(build_requests(firing(), webhook("json"), NOW))

    assert "webhook-signature" not in request.headers


def test_a_naive_attempt_time_counts_as_utc() -> None:
    request = only(build_requests(firing(), webhook("json"), NOW.replace(tzinfo=None)))

    assert request.headers["webhook-timestamp"] == str(NOW_UNIX)


# headers, whatever the format

FORMATS = ("json", "alertmanager", "slack", "pagerduty")


def _any_webhook(format_: str, **changes: Any) -> WebhookSettings:
    secret = {"json": HMAC_KEY, "pagerduty": "canary-routing-key"}.get(format_)
    return webhook(format_, secret=secret, **changes)


@pytest.mark.parametrize("format_", FORMATS)
@pytest.mark.parametrize(
    "entry", [firing(), resolved(), stuck()], ids=["firing", "resolved", "stuck"]
)
def test_every_format_posts_json_with_our_user_agent(format_: str, entry: OutboxEntry) -> None:
    for request in build_requests(entry, _any_webhook(format_), NOW):
        assert request.method == "POST"
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["User-Agent"] == USER_AGENT
        sent(request)


@pytest.mark.parametrize("format_", FORMATS)
def test_configured_headers_are_sent(format_: str) -> None:
    headers = (("X-Team", "windows-images"), ("Authorization", "Bearer canary-token"))
    hook = _any_webhook(format_, headers=headers)

    for request in build_requests(firing(), hook, NOW):
        assert request.headers["X-Team"] == "windows-images"
        assert request.headers["Authorization"] == "Bearer canary-token"


def test_a_configured_header_replaces_the_user_agent_but_not_the_protocol_headers() -> None:
    headers = (
        ("user-agent", "ops-bot/2"),
        ("content-type", "text/plain"),
        ("Webhook-Id", "forged"),
        ("WEBHOOK-TIMESTAMP", "0"),
    )
    request = only(build_requests(firing(), webhook("json", headers=headers), NOW))

    assert request.headers == {
        "user-agent": "ops-bot/2",
        "Content-Type": "application/json",
        "webhook-id": EVENT_ID,
        "webhook-timestamp": str(NOW_UNIX),
    }


# alertmanager


def test_a_firing_alert_for_alertmanager_lasts_four_minutes_unless_re_sent() -> None:
    request = only(build_requests(firing(), webhook("alertmanager", urls=("http://am:9093",)), NOW))

    assert request.url == "http://am:9093/api/v2/alerts"
    assert sent(request) == [
        {
            "labels": {
                "alertname": "FastLaunchFailed",
                "account_id": "111122223333",
                "region": "us-east-1",
                "image_id": IMAGE,
                "state": "enabling-failed",
                "target": "prod",
            },
            "annotations": {
                "summary": f"Fast launch of {IMAGE} in us-east-1 (prod) is enabling-failed",
                "description": FAILED_REASON,
            },
            "startsAt": "2026-11-26T10:00:00.123Z",
            "endsAt": "2026-11-26T10:09:00.000Z",
        }
    ]


def test_a_resolve_for_alertmanager_keeps_the_labels_and_ends_at_the_recovery() -> None:
    hook = webhook("alertmanager", urls=("http://am:9093",))
    fired = sent(only(build_requests(firing(), hook, NOW)))[0]
    resolve = sent(only(build_requests(resolved(), hook, NOW + timedelta(hours=1))))

    assert resolve == [
        {
            "labels": fired["labels"],
            "annotations": {
                "summary": (
                    f"Fast launch of {IMAGE} in us-east-1 (prod) is no longer enabling-failed"
                    " (now enabled)"
                ),
                "description": "Client.UserInitiated - Lifecycle state transition",
            },
            "startsAt": "2026-11-26T10:00:00.123Z",
            "endsAt": "2026-11-26T10:30:00.456Z",
        }
    ]


def test_a_resolve_without_a_transition_time_ends_at_the_attempt() -> None:
    entry = _entry(
        FAILED,
        RESOLVED,
        "enabling-failed",
        FAILED_AT,
        {**RESOLVED_PAYLOAD, "state_transition_time": None},
    )

    alert = sent(only(build_requests(entry, webhook("alertmanager"), NOW)))[0]

    assert alert["endsAt"] == "2026-11-26T10:05:00.000Z"


def test_an_alertmanager_alert_never_ends_before_it_starts() -> None:
    entry = _entry(
        FAILED,
        RESOLVED,
        "enabling-failed",
        FAILED_AT,
        {**RESOLVED_PAYLOAD, "state_transition_time": "2026-11-26T09:59:59.000Z"},
    )

    alert = sent(only(build_requests(entry, webhook("alertmanager"), NOW)))[0]

    assert alert["endsAt"] == alert["startsAt"] == "2026-11-26T10:00:00.123Z"


def test_a_stuck_alert_for_alertmanager_is_fastlaunchstuck() -> None:
    alert = sent(only(build_requests(stuck(), webhook("alertmanager"), NOW)))[0]

    assert alert == {
        "labels": {
            "alertname": "FastLaunchStuck",
            "account_id": "111122223333",
            "region": "us-east-1",
            "image_id": IMAGE,
            "state": "enabling",
            "target": "prod",
        },
        "annotations": {
            "summary": (
                f"Fast launch of {IMAGE} in us-east-1 (prod) has been stuck in enabling"
                " since 2026-11-26T07:00:00.000Z"
            ),
            "description": "Client.UserInitiated",
        },
        "startsAt": "2026-11-26T07:00:00.000Z",
        "endsAt": "2026-11-26T10:09:00.000Z",
    }


def test_an_alert_without_a_reason_is_described_by_its_summary() -> None:
    entry = _entry(
        FAILED,
        FIRING,
        "enabling-failed",
        FAILED_AT,
        {**FIRING_PAYLOAD, "state_transition_reason": ""},
    )

    annotations = sent(only(build_requests(entry, webhook("alertmanager"), NOW)))[0]["annotations"]

    assert annotations["description"] == annotations["summary"]


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("http://am:9093", "http://am:9093/api/v2/alerts"),
        ("http://am:9093/", "http://am:9093/api/v2/alerts"),
        (
            "https://ops.example.com/alertmanager/",
            "https://ops.example.com/alertmanager/api/v2/alerts",
        ),
        (
            "https://am.example.com:9093?tenant=a",
            "https://am.example.com:9093/api/v2/alerts?tenant=a",
        ),
    ],
)
def test_the_alertmanager_endpoint_is_joined_to_its_url(url: str, endpoint: str) -> None:
    request = only(build_requests(firing(), webhook("alertmanager", urls=(url,)), NOW))

    assert request.url == endpoint


def test_every_alertmanager_instance_gets_the_same_alert() -> None:
    urls = ("http://am-0:9093", "http://am-1:9093/", "http://am-2:9093")

    requests = build_requests(firing(), webhook("alertmanager", urls=urls), NOW)

    assert [request.url for request in requests] == [
        "http://am-0:9093/api/v2/alerts",
        "http://am-1:9093/api/v2/alerts",
        "http://am-2:9093/api/v2/alerts",
    ]
    assert len({request.body for request in requests}) == 1


# slack


def _slack_fields(**values: str) -> list[dict[str, str]]:
    return [
        {"type": "mrkdwn", "text": f"*{name.replace('_', ' ').capitalize()}*\n{value}"}
        for name, value in values.items()
    ]


def test_a_firing_slack_message_says_what_failed_where_and_since_when() -> None:
    request = only(build_requests(firing(), webhook("slack"), NOW))

    summary = f"Fast launch of {IMAGE} in us-east-1 (prod) is enabling-failed"
    assert request.url == URL
    assert sent(request) == {
        "text": f"FIRING: {summary}",
        "blocks": [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": f"FIRING: {IMAGE} enabling-failed"},
            },
            {"type": "section", "text": {"type": "mrkdwn", "text": summary}},
            {
                "type": "section",
                "fields": _slack_fields(
                    image=f"`{IMAGE}`",
                    account="`111122223333`",
                    region="`us-east-1`",
                    target="prod",
                    state="`enabling-failed`",
                    previous_state="`enabling`",
                    since=(
                        "<!date^1795687200^{date_short_pretty} {time}|2026-11-26T10:00:00.123Z>"
                        "\n`2026-11-26T10:00:00.123Z`"
                    ),
                    target_resource_count="5",
                    max_parallel_launches="6",
                ),
            },
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Reason*\n{FAILED_REASON}"}},
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": (
                            f"failed alert · event `{EVENT_ID}` · inspect: `aws ec2"
                            f" describe-fast-launch-images --region us-east-1 --image-ids {IMAGE}`"
                        ),
                    }
                ],
            },
        ],
    }


def test_a_resolved_slack_message_says_it_recovered_and_to_what() -> None:
    message = sent(only(build_requests(resolved(), webhook("slack"), NOW)))

    summary = (
        f"Fast launch of {IMAGE} in us-east-1 (prod) is no longer enabling-failed (now enabled)"
    )
    assert message["text"] == f"RESOLVED: {summary}"
    assert message["blocks"][0]["text"]["text"] == f"RESOLVED: {IMAGE} enabling-failed"
    assert message["blocks"][1]["text"]["text"] == summary
    assert message["blocks"][2]["fields"][4:7] == _slack_fields(
        state="`enabled`",
        previous_state="`enabling-failed`",
        since=(
            "<!date^1795689000^{date_short_pretty} {time}|2026-11-26T10:30:00.456Z>"
            "\n`2026-11-26T10:30:00.456Z`"
        ),
    )
    assert message["blocks"][3]["text"]["text"] == (
        "*Reason*\nClient.UserInitiated - Lifecycle state transition"
    )


def test_a_stuck_slack_message_says_how_long_it_has_been_stuck() -> None:
    message = sent(only(build_requests(stuck(), webhook("slack"), NOW)))

    summary = (
        f"Fast launch of {IMAGE} in us-east-1 (prod) has been stuck in enabling"
        " since 2026-11-26T07:00:00.000Z"
    )
    assert message["text"] == f"FIRING: {summary}"
    assert message["blocks"][0]["text"]["text"] == f"FIRING: {IMAGE} stuck in enabling"
    assert message["blocks"][2]["fields"][4:7] == _slack_fields(
        state="`enabling`",
        previous_state="`enabling`",
        since=(
            "<!date^1795676400^{date_short_pretty} {time}|2026-11-26T07:00:00.000Z>"
            "\n`2026-11-26T07:00:00.000Z`"
        ),
    )
    assert message["blocks"][4]["elements"][0]["text"].startswith("stuck alert · ")


def test_slack_control_characters_in_a_reason_are_escaped() -> None:
    payload = {**FIRING_PAYLOAD, "state_transition_reason": "a <!channel> & <http://x|y>"}
    entry = _entry(FAILED, FIRING, "enabling-failed", FAILED_AT, payload)

    message = sent(only(build_requests(entry, webhook("slack"), NOW)))

    assert message["blocks"][3]["text"]["text"] == (
        "*Reason*\na &lt;!channel&gt; &amp; &lt;http://x|y&gt;"
    )


def test_a_first_sight_with_unknown_counts_reads_as_such_in_slack() -> None:
    payload = {
        **FIRING_PAYLOAD,
        "previous_state": None,
        "state_transition_reason": "",
        "target_resource_count": None,
        "max_parallel_launches": None,
    }
    entry = _entry(FAILED, FIRING, "enabling-failed", FAILED_AT, payload)

    blocks = sent(only(build_requests(entry, webhook("slack"), NOW)))["blocks"]

    fields = blocks[2]["fields"]
    assert fields[5] == _slack_fields(previous_state="none (first sight)")[0]
    assert fields[7:] == _slack_fields(
        target_resource_count="unknown", max_parallel_launches="unknown"
    )
    assert blocks[3]["text"]["text"] == "*Reason*\n_none given_"


# pagerduty

ROUTING_KEY = "canary-routing-key"


def test_a_failure_triggers_a_pagerduty_error_event() -> None:
    hook = webhook(
        "pagerduty", urls=("https://events.pagerduty.com/v2/enqueue",), secret=ROUTING_KEY
    )

    request = only(build_requests(firing(), hook, NOW))

    assert request.url == "https://events.pagerduty.com/v2/enqueue"
    assert sent(request) == {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": f"fastlaunch/111122223333/us-east-1/{IMAGE}/failed",
        "payload": {
            "summary": (
                f"Fast launch of {IMAGE} in us-east-1 (prod) is enabling-failed: {FAILED_REASON}"
            ),
            "source": "aws/111122223333/us-east-1",
            "severity": "error",
            "timestamp": "2026-11-26T10:00:00.123Z",
            "component": IMAGE,
            "group": "prod",
            "class": "enabling-failed",
            "custom_details": FIRING_PAYLOAD,
        },
    }


def test_a_stuck_image_triggers_a_pagerduty_warning() -> None:
    event = sent(only(build_requests(stuck(), webhook("pagerduty", secret=ROUTING_KEY), NOW)))

    assert event == {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": f"fastlaunch/111122223333/us-east-1/{IMAGE}/stuck",
        "payload": {
            "summary": (
                f"Fast launch of {IMAGE} in us-east-1 (prod) has been stuck in enabling"
                " since 2026-11-26T07:00:00.000Z: Client.UserInitiated"
            ),
            "source": "aws/111122223333/us-east-1",
            "severity": "warning",
            "timestamp": "2026-11-26T07:00:00.000Z",
            "component": IMAGE,
            "group": "prod",
            "class": "stuck-enabling",
            "custom_details": STUCK_PAYLOAD,
        },
    }


def test_a_recovery_resolves_the_pagerduty_event_it_triggered() -> None:
    hook = webhook("pagerduty", secret=ROUTING_KEY)
    trigger = sent(only(build_requests(firing(), hook, NOW)))

    resolve = sent(only(build_requests(resolved(), hook, NOW)))

    assert resolve == {
        "routing_key": ROUTING_KEY,
        "event_action": "resolve",
        "dedup_key": trigger["dedup_key"],
    }


def test_the_pagerduty_dedup_key_depends_on_the_image_and_kind_only() -> None:
    hook = webhook("pagerduty", secret=ROUTING_KEY)
    later = FAILED_AT + timedelta(hours=3)
    same_incident = [
        firing(),
        resolved(),
        _entry(
            FAILED, FIRING, "enabled-failed", later, {**FIRING_PAYLOAD, "state": "enabled-failed"}
        ),
    ]

    keys = {sent(only(build_requests(entry, hook, NOW)))["dedup_key"] for entry in same_incident}
    stuck_key = sent(only(build_requests(stuck(), hook, NOW)))["dedup_key"]

    assert keys == {f"fastlaunch/111122223333/us-east-1/{IMAGE}/failed"}
    assert stuck_key != next(iter(keys))


def test_a_pagerduty_summary_is_cut_to_1024_characters() -> None:
    payload = {**FIRING_PAYLOAD, "state_transition_reason": "x" * 2000}
    entry = _entry(FAILED, FIRING, "enabling-failed", FAILED_AT, payload)

    event = sent(only(build_requests(entry, webhook("pagerduty", secret=ROUTING_KEY), NOW)))

    summary = event["payload"]["summary"]
    assert len(summary) == 1024
    assert summary.startswith(f"Fast launch of {IMAGE} in us-east-1 (prod) is enabling-failed: xxx")
    assert summary.endswith("x…")
    assert event["payload"]["custom_details"]["state_transition_reason"] == "x" * 2000


# secrets and misuse


@pytest.mark.parametrize("format_", FORMATS)
@pytest.mark.parametrize("entry", [firing(), resolved()], ids=["firing", "resolved"])
def test_no_secret_shows_in_the_repr_of_a_request(format_: str, entry: OutboxEntry) -> None:
    hook = webhook(
        format_,
        urls=("https://hooks.example.com/services/canary-url-token",),
        secret={"json": "canary-hmac-key", "pagerduty": "canary-routing-key"}.get(format_),
        headers=(("Authorization", "Bearer canary-header-token"),),
    )

    requests = build_requests(entry, hook, NOW)

    shown = repr(requests) + "".join(str(request) for request in requests)
    assert "canary" not in shown
    assert "POST" in shown


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="'teams'"):
        build_requests(firing(), webhook("teams"), NOW)


def test_a_pagerduty_webhook_without_a_routing_key_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"'ops'.*routing key"):
        build_requests(firing(), webhook("pagerduty"), NOW)
