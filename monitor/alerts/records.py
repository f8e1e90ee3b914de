"""Records that cross the alerting modules' borders: an outbox entry, a request, an outcome."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from monitor.core.model import Scope


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One alert waiting in the outbox, as the dispatcher claimed it.

    `state` and `since` are those of the failing (or stuck) state the alert is about — for a
    resolve too; `payload` is the receiver-independent document (format `json`'s
    body), written when the alert was enqueued.
    """

    id: int
    event_id: str
    receiver: str
    kind: str
    status: str
    scope: Scope
    image_id: str
    state: str
    since: datetime
    payload: Mapping[str, Any]
    attempts: int
    created_at: datetime
    #: The lease this claim holds; finishing the entry is refused once another claim took it.
    lease_until: datetime | None = None
    #: True for an already delivered Alertmanager alert that is re-sent while it fires.
    resending: bool = False


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """One HTTP request to send to a receiver. URL and headers may hold secrets: no repr."""

    method: str
    url: str = field(repr=False)
    headers: Mapping[str, str] = field(repr=False)
    body: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """What one attempt got: an HTTP status, or an error class for a request that got none.

    `error` never holds a URL or a header value. `retry_after` is the receiver's Retry-After
    in seconds, when it sent one.
    """

    status: int | None
    error: str | None
    seconds: float
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def permanent(self) -> bool:
        """A 4xx other than 408 and 429: the receiver refuses this alert; do not retry it."""
        return (
            self.status is not None
            and 400 <= self.status < 500
            and self.status
            not in (
                408,
                429,
            )
        )

    @property
    def gone(self) -> bool:
        """410 Gone: the receiver is gone for good; stop sending to it until the config changes."""
        return self.status == 410
