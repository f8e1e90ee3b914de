"""The dispatcher: delivers due outbox entries, at least once, through restarts and outages.

Each call of `dispatch_due` claims the due entries under a lease, sends each one (receivers in
parallel, one receiver's entries in order), and records every attempt. A 2xx is delivered; a
4xx other than 408 and 429 is a permanent failure (410 also disables the receiver until its
config changes); anything else is retried with exponential backoff and full jitter, from 1 s
up to 5 min between attempts, honouring `Retry-After`, for 24 h and at least 10 attempts — then
it has failed. Firing Alertmanager alerts are re-sent every minute until resolved, as
Alertmanager expects.
A failed alert stays in the outbox, visible in `alerts`, in the metrics and in an ERROR line.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from monitor.alerts.formats import build_requests
from monitor.alerts.outbox import DELIVERED, FAILED, RETRY, Outbox
from monitor.alerts.records import DeliveryOutcome, OutboxEntry
from monitor.alerts.rules import FIRING
from monitor.alerts.sender import WebhookSender
from monitor.config.settings import WebhookSettings
from monitor.core.errors import StoreError
from monitor.exposition.metrics import MonitorMetrics

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0
BACKOFF_CAP = 300.0
GIVE_UP_AFTER = timedelta(hours=24)
#: An alert is given up only after this many attempts as well: its age is read on the wall
#: clock, and a wall clock stepped forward (a day, say) must not fail an alert after a few
#: seconds of real outage. Ten attempts of doubling backoff take about four minutes on average.
GIVE_UP_MIN_ATTEMPTS = 10
ALERTMANAGER_RESEND = timedelta(minutes=1)
#: How long a claim holds an entry: long enough for one attempt per receiver URL and its
#: timeout, short enough that a crashed dispatcher's claims come back soon.
LEASE_SECONDS = 120.0

Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


def backoff(attempts: int, rng: random.Random, retry_after: float | None = None) -> float:
    """Seconds before the next attempt after `attempts` failed ones (the first is 0).

    Exponential with full jitter, from 1 s up to 5 min; a receiver's `Retry-After` is a floor.
    """
    ceiling = min(BACKOFF_CAP, BACKOFF_FIRST * 2.0 ** min(attempts, 32))
    delay = rng.uniform(BACKOFF_FIRST, max(BACKOFF_FIRST, ceiling))
    return max(delay, retry_after or 0.0)


def fingerprint(webhook: WebhookSettings) -> str:
    """A digest of a receiver's config, to notice that it changed; no secret can be read back.

    The proxies are part of it: a 410 may have come from the way to the receiver, and another
    proxy is another way. A receiver that goes direct keeps the digest it had before proxies
    were, so an upgrade re-enables no receiver.
    """
    parts = (
        webhook.name,
        webhook.format,
        *webhook.urls,
        webhook.secret or "",
        *(f"{k}:{v}" for k, v in sorted(webhook.headers)),
    )
    if any(webhook.proxies):
        parts = (*parts, *(f"proxy:{proxy or ''}" for proxy in webhook.proxies))
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def combine(outcomes: Sequence[DeliveryOutcome]) -> DeliveryOutcome:
    """One outcome for an alert sent to several URLs (Alertmanager's HA instances).

    Delivered when every URL took it; else retried if any failure is transient (resending to
    the instances that took it is harmless: Alertmanager de-duplicates); else permanent.
    """
    failures = [o for o in outcomes if not o.delivered]
    seconds = sum(o.seconds for o in outcomes)
    if not failures:
        return DeliveryOutcome(status=outcomes[0].status, error=None, seconds=seconds)
    transient = [o for o in failures if not o.permanent]
    worst = transient[0] if transient else failures[0]
    retry_after = max((o.retry_after or 0.0 for o in transient), default=None)
    return DeliveryOutcome(worst.status, worst.error, seconds, retry_after or None)


class Dispatcher:
    """Delivers the outbox to the configured webhooks; `dispatch_due` is one tick."""

    def __init__(
        self,
        outbox: Outbox,
        webhooks: Sequence[WebhookSettings],
        metrics: MonitorMetrics,
        *,
        clock: Clock = _now,
        rng: random.Random | None = None,
        stop: threading.Event | None = None,
        sender_factory: Callable[[WebhookSettings], WebhookSender] = WebhookSender,
    ) -> None:
        self._outbox = outbox
        self._webhooks = {w.name: w for w in webhooks}
        self._metrics = metrics
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self._stop = stop or threading.Event()
        self._senders = {w.name: sender_factory(w) for w in webhooks}
        self._pool = ThreadPoolExecutor(max(1, len(self._webhooks)), thread_name_prefix="alert")
        self._disabled: set[str] = set()
        self._checked_disabled = False
        # Every series from zero, so `increase()` sees a receiver's very first failure too.
        for webhook in webhooks:
            for outcome in (DELIVERED, RETRY, FAILED):
                metrics.alert_deliveries_total.labels(receiver=webhook.name, outcome=outcome)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for sender in self._senders.values():
            sender.close()

    def _active_receivers(self, now: datetime) -> list[str]:
        if not self._checked_disabled:
            # A receiver disabled by 410 comes back only when its config changed since.
            for receiver, printed in self._outbox.disabled_receivers().items():
                webhook = self._webhooks.get(receiver)
                if webhook is not None and fingerprint(webhook) != printed:
                    self._outbox.enable_receiver(receiver)
                    log.info(
                        "receiver %s re-enabled: its config changed",
                        receiver,
                        extra={"receiver": receiver},
                    )
                else:
                    self._disabled.add(receiver)
            self._checked_disabled = True
        return [name for name in self._webhooks if name not in self._disabled]

    def update_pending(self) -> None:
        """Set `fastlaunch_alerts_pending` from the outbox."""
        counts = self._outbox.pending_counts()
        for receiver in set(self._webhooks) | set(counts):
            self._metrics.alerts_pending.labels(receiver=receiver).set(counts.get(receiver, 0))

    def dispatch_due(self, now: datetime | None = None) -> int:
        """Attempt every due entry once; returns the number of attempts made."""
        now = now or self._clock()
        receivers = self._active_receivers(now)
        due = self._outbox.next_due(now, receivers=receivers)
        if due is None or due > now:
            return 0
        entries = self._outbox.claim_due(now, receivers=receivers, lease=LEASE_SECONDS)
        by_receiver: dict[str, list[OutboxEntry]] = {}
        for entry in entries:
            by_receiver.setdefault(entry.receiver, []).append(entry)
        futures = [
            self._pool.submit(self._deliver_all, self._webhooks[name], batch)
            for name, batch in by_receiver.items()
        ]
        attempts = sum(f.result() for f in futures)
        self.update_pending()
        return attempts

    def _deliver_all(self, webhook: WebhookSettings, entries: list[OutboxEntry]) -> int:
        for done, entry in enumerate(entries):
            if self._stop.is_set() or webhook.name in self._disabled:
                self._outbox.release(entries[done:])
                return done
            try:
                self._deliver(webhook, entry)
            except StoreError as exc:
                # The attempt happened; its record did not. The lease expires and the alert is
                # sent again: at least once, never lost.
                log.error(
                    "could not record a delivery to %s: %s",
                    webhook.name,
                    exc,
                    extra={"receiver": webhook.name},
                )
        return len(entries)

    def _deliver(self, webhook: WebhookSettings, entry: OutboxEntry) -> None:
        sender = self._senders[webhook.name]
        attempted_at = self._clock()
        outcome = combine([sender.send(r) for r in build_requests(entry, webhook, attempted_at)])
        now = self._clock()
        resend = (
            now + ALERTMANAGER_RESEND
            if webhook.format == "alertmanager" and entry.status == FIRING
            else None
        )
        context = {"receiver": webhook.name, "image": entry.image_id}
        what = f"{entry.status} {entry.kind} alert {entry.event_id} for {entry.image_id}"
        if outcome.delivered:
            result, next_attempt = DELIVERED, None
            log.info("delivered %s to %s", what, webhook.name, extra=context)
        elif outcome.permanent:
            result, next_attempt, resend = FAILED, None, None
            log.error(
                "%s refused %s (%s): not retried",
                webhook.name,
                what,
                outcome.error or f"HTTP {outcome.status}",
                extra=context,
            )
            if outcome.gone:
                self._disable(webhook, now)
        elif self._gives_up(entry, now):
            result, next_attempt = FAILED, None
            log.error(
                "gave up on %s to %s after %d attempts over at least 24 h (last: %s)",
                what,
                webhook.name,
                entry.attempts + 1,
                outcome.error or f"HTTP {outcome.status}",
                extra=context,
            )
        else:
            delay = backoff(entry.attempts, self._rng, outcome.retry_after)
            result, next_attempt = RETRY, now + timedelta(seconds=delay)
            log.warning(
                "%s to %s failed (%s): retry in %.0f s",
                what,
                webhook.name,
                outcome.error or f"HTTP {outcome.status}",
                delay,
                extra=context,
            )
        if entry.resending and result != FAILED:
            # A re-send's failure is not the alert's: the next re-send is due anyway.
            resend = now + ALERTMANAGER_RESEND
        recorded = self._outbox.finish(
            entry, outcome, now, result=result, next_attempt_at=next_attempt, resend_at=resend
        )
        if recorded:
            self._metrics.alert_deliveries_total.labels(receiver=webhook.name, outcome=result).inc()

    @staticmethod
    def _gives_up(entry: OutboxEntry, now: datetime) -> bool:
        """Whether the attempt that just failed (transiently) was the alert's last: 24 h after
        the alert was created, and its tenth attempt or later (this one counted)."""
        made = entry.attempts + 1
        return (
            not entry.resending
            and now - entry.created_at >= GIVE_UP_AFTER
            and made >= GIVE_UP_MIN_ATTEMPTS
        )

    def _disable(self, webhook: WebhookSettings, now: datetime) -> None:
        self._disabled.add(webhook.name)
        self._outbox.disable_receiver(webhook.name, fingerprint(webhook), now, "answered 410 Gone")
        log.error(
            "receiver %s answered 410 Gone: disabled until its config changes",
            webhook.name,
            extra={"receiver": webhook.name},
        )
