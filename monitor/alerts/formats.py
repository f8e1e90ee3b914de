"""What each receiver format sends for one outbox entry (pure).

Every format builds its requests at delivery time from the entry's receiver-independent payload
(see `monitor.alerts.rules`), so a retry carries the same event but a fresh attempt time. All
requests are `POST` with `Content-Type: application/json`, the webhook's own `headers` and our
`User-Agent`; a configured header may replace the `User-Agent` but never `Content-Type` or a
format's protocol headers (the `webhook-*` signature headers), which a receiver relies on.

- `json`: the payload itself, signed the Standard Webhooks way.
- `alertmanager`: Alertmanager's `POST /api/v2/alerts`, one request per listed instance.
- `slack`: an incoming-webhook message a person can act on.
- `pagerduty`: Events API v2 `trigger` / `resolve`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from monitor import __version__
from monitor.alerts.records import OutboxEntry, WebhookRequest
from monitor.alerts.rules import RESOLVED, STUCK
from monitor.alerts.signing import sign
from monitor.config.settings import WebhookSettings
from monitor.core.times import rfc3339

USER_AGENT = f"fastlaunch-monitor/{__version__}"
ALERTMANAGER_PATH = "/api/v2/alerts"
# Alertmanager resolves an alert its clients stop re-sending once `endsAt` passes. The
# dispatcher re-sends every minute while firing; like Prometheus, we give four resend periods
# of grace so a short hiccup does not resolve an alert that is still firing.
ALERTMANAGER_VALIDITY = timedelta(minutes=4)

_ALERTNAMES = {STUCK: "FastLaunchStuck"}
_FAILED_ALERTNAME = "FastLaunchFailed"
_PAGERDUTY_SEVERITIES = {STUCK: "warning"}
_PAGERDUTY_FAILED_SEVERITY = "error"
_PAGERDUTY_SUMMARY_LIMIT = 1024
# Slack's documented limits: a header's text, a section's text and a field's text.
_SLACK_HEADER_LIMIT = 150
_SLACK_TEXT_LIMIT = 3000
_SLACK_FIELD_LIMIT = 2000

_Builder = Callable[[OutboxEntry, WebhookSettings, datetime], list[WebhookRequest]]


def build_requests(
    entry: OutboxEntry, webhook: WebhookSettings, now: datetime
) -> list[WebhookRequest]:
    """The requests delivering `entry` to `webhook` in an attempt made at `now`.

    One request per URL for `alertmanager` (every instance of an HA cluster gets the alert);
    one request to the first URL for the other formats. Raises `ValueError` for a format
    settings would have refused.
    """
    try:
        builder = _BUILDERS[webhook.format]
    except KeyError:
        raise ValueError(f"unknown webhook format {webhook.format!r}") from None
    return builder(entry, webhook, now)


def _json(entry: OutboxEntry, webhook: WebhookSettings, now: datetime) -> list[WebhookRequest]:
    body = _dumps(entry.payload)
    timestamp = int(_utc(now).timestamp())
    protocol = {"webhook-id": entry.event_id, "webhook-timestamp": str(timestamp)}
    if webhook.secret is not None:
        protocol["webhook-signature"] = sign(webhook.secret, entry.event_id, timestamp, body)
    return [_post(webhook.urls[0], webhook, body, protocol)]


def _alertmanager(
    entry: OutboxEntry, webhook: WebhookSettings, now: datetime
) -> list[WebhookRequest]:
    starts = _utc(entry.since)
    if entry.status == RESOLVED:
        ends = _parse(entry.payload.get("state_transition_time")) or _utc(now)
    else:
        ends = _utc(now) + ALERTMANAGER_VALIDITY
    reason = _reason(entry)
    summary = _summary(entry)
    alert = {
        "labels": {
            "alertname": _ALERTNAMES.get(entry.kind, _FAILED_ALERTNAME),
            "account_id": entry.scope.account_id,
            "region": entry.scope.region,
            "image_id": entry.image_id,
            "state": entry.state,
            "target": entry.scope.target,
        },
        "annotations": {"summary": summary, "description": reason or summary},
        "startsAt": rfc3339(starts),
        # Alertmanager rejects an alert that ends before it starts; AWS's clock decides both.
        "endsAt": rfc3339(max(ends, starts)),
    }
    body = _dumps([alert])
    return [_post(_join(url, ALERTMANAGER_PATH), webhook, body, {}) for url in webhook.urls]


def _slack(entry: OutboxEntry, webhook: WebhookSettings, now: datetime) -> list[WebhookRequest]:
    payload = entry.payload
    status = entry.status.upper()
    region = entry.scope.region
    since = _parse(payload.get("state_transition_time")) or _utc(entry.since)
    condition = f"stuck in {entry.state}" if entry.kind == STUCK else entry.state
    previous = payload.get("previous_state")
    fields = {
        "Image": _code(entry.image_id),
        "Account": _code(entry.scope.account_id),
        "Region": _code(region),
        "Target": _escape(entry.scope.target),
        "State": _code(str(payload.get("state", entry.state))),
        "Previous state": "none (first sight)" if previous is None else _code(str(previous)),
        "Since": f"{_slack_date(since)}\n{_code(rfc3339(since) or '')}",
        "Target resource count": _count(payload.get("target_resource_count")),
        "Max parallel launches": _count(payload.get("max_parallel_launches")),
    }
    reason = _escape(_reason(entry)) or "_none given_"
    inspect = f"aws ec2 describe-fast-launch-images --region {region} --image-ids {entry.image_id}"
    message = {
        "text": f"{status}: {_escape(_summary(entry))}",
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": _truncate(
                        f"{status}: {entry.image_id} {condition}", _SLACK_HEADER_LIMIT
                    ),
                },
            },
            _slack_section(_escape(_summary(entry))),
            {
                "type": "section",
                "fields": [
                    {
                        "type": "mrkdwn",
                        "text": _truncate(f"*{name}*\n{value}", _SLACK_FIELD_LIMIT),
                    }
                    for name, value in fields.items()
                ],
            },
            _slack_section(f"*Reason*\n{reason}"),
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": f"{entry.kind} alert · event {_code(entry.event_id)}"
                        f" · inspect: {_code(inspect)}",
                    }
                ],
            },
        ],
    }
    return [_post(webhook.urls[0], webhook, _dumps(message), {})]


def _pagerduty(entry: OutboxEntry, webhook: WebhookSettings, now: datetime) -> list[WebhookRequest]:
    if webhook.secret is None:
        # Settings refuse a pagerduty webhook without secret_file; the name is no secret.
        raise ValueError(f"webhook {webhook.name!r}: format pagerduty needs a routing key")
    scope = entry.scope
    event: dict[str, Any] = {
        "routing_key": webhook.secret,
        "event_action": "resolve" if entry.status == RESOLVED else "trigger",
        # Per image and kind, not per state or time: a resolve must close what its trigger
        # opened, and a new failure of an image still open joins the same incident.
        "dedup_key": f"fastlaunch/{scope.account_id}/{scope.region}/{entry.image_id}/{entry.kind}",
    }
    if entry.status != RESOLVED:
        reason = _reason(entry)
        summary = f"{_summary(entry)}: {reason}" if reason else _summary(entry)
        event["payload"] = {
            "summary": _truncate(summary, _PAGERDUTY_SUMMARY_LIMIT),
            "source": f"aws/{scope.account_id}/{scope.region}",
            "severity": _PAGERDUTY_SEVERITIES.get(entry.kind, _PAGERDUTY_FAILED_SEVERITY),
            "timestamp": rfc3339(_utc(entry.since)),
            "component": entry.image_id,
            "group": scope.target,
            "class": f"stuck-{entry.state}" if entry.kind == STUCK else entry.state,
            "custom_details": dict(entry.payload),
        }
    return [_post(webhook.urls[0], webhook, _dumps(event), {})]


_BUILDERS: Mapping[str, _Builder] = {
    "json": _json,
    "alertmanager": _alertmanager,
    "slack": _slack,
    "pagerduty": _pagerduty,
}


def _post(
    url: str, webhook: WebhookSettings, body: bytes, protocol: Mapping[str, str]
) -> WebhookRequest:
    headers: dict[str, str] = {}

    def put(name: str, value: str) -> None:
        # HTTP header names are case-insensitive: a configured "content-type" must replace
        # ours, not travel next to it.
        for existing in [key for key in headers if key.lower() == name.lower()]:
            del headers[existing]
        headers[name] = value

    put("User-Agent", USER_AGENT)
    for name, value in webhook.headers:
        put(name, value)
    put("Content-Type", "application/json")
    for name, value in protocol.items():
        put(name, value)
    return WebhookRequest(method="POST", url=url, headers=headers, body=body)


def _summary(entry: OutboxEntry) -> str:
    """One sentence saying what happened, for people: the same in every format."""
    where = f"Fast launch of {entry.image_id} in {entry.scope.region} ({entry.scope.target})"
    condition = f"stuck in {entry.state}" if entry.kind == STUCK else entry.state
    if entry.status == RESOLVED:
        return f"{where} is no longer {condition} (now {entry.payload.get('state')})"
    if entry.kind == STUCK:
        return f"{where} has been {condition} since {rfc3339(_utc(entry.since))}"
    return f"{where} is {condition}"


def _reason(entry: OutboxEntry) -> str:
    return str(entry.payload.get("state_transition_reason") or "")


def _join(url: str, path: str) -> str:
    """`path` appended to `url`'s path, with exactly one slash between them."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + path))


def _dumps(value: Any) -> bytes:
    # Compact, in the payload's own field order: the bytes sent are the bytes signed.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _utc(value: datetime) -> datetime:
    # The store hands back naive datetimes on some backends; they are UTC by convention.
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _parse(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return _utc(datetime.fromisoformat(value))


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _escape(text: str) -> str:
    """Slack mrkdwn control characters, escaped as Slack asks."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    return f"`{_escape(text)}`"


def _count(value: object) -> str:
    return "unknown" if value is None else str(value)


def _slack_date(when: datetime) -> str:
    """A date Slack shows in each reader's own time zone, falling back to RFC 3339."""
    return f"<!date^{int(when.timestamp())}^{{date_short_pretty}} {{time}}|{rfc3339(when)}>"


def _slack_section(text: str) -> dict[str, Any]:
    return {
        "type": "section",
        "text": {"type": "mrkdwn", "text": _truncate(text, _SLACK_TEXT_LIMIT)},
    }
