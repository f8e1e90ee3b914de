"""A Hypothesis state machine over alert delivery: polls, receiver answers, time, restarts, crashes.

The machine drives the real store (a fresh SQLite file per example), the real outbox and the
real dispatcher; only the clock and the receivers' side of HTTP are fakes. Receivers answer what
Hypothesis chooses for each of them (200, 500, a timeout, 410), polls report random states and
transition times for three images, the clock jumps by seconds to days, and the daemon restarts,
or crashes in a delivery before or after the receiver got the alert.

The machine keeps its own model of what AWS reported and checks after every step that:

- the history holds exactly the transitions the model expects;
- the outbox holds one firing per receiver for each transition into one of its states (counted
  from the recorded history) and none for any other state, and exactly the resolves and stuck
  alerts the README promises — each resolve keyed by the newest firing of its alert, and none
  where nothing fired (a stuck image no poll saw stuck);
- every request a receiver got carries the event id of one outbox row, in its header and in its
  body, and says what that row is about;
- a resolve reaches a receiver only after its firing did, and after the firing was accepted
  unless the monitor gave up on it;
- a receiver accepts each alert once, plus once more for each crash between its answer and the
  record of it (at least once, never more); every answered attempt is recorded as answered;
- a retry waits at least the first backoff step; a receiver that answered 410 gets nothing more
  until its config changes.

At the end every receiver answers 200 and time runs on until nothing is due. Then every alert is
delivered or failed (by a 410, or after 24 h of transient failures), except those waiting for a
receiver disabled by 410, which stay pending; every crashed delivery was sent again with its
event id; and the metrics agree with the outbox and the recorded attempts.

Polls leave out `StateTransitionTime` for any state, failed ones included, and let an image get
stuck and move on between two polls; the examples at the end of this module show both.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, select

from monitor.alerts.dispatcher import BACKOFF_FIRST, GIVE_UP_AFTER, LEASE_SECONDS, Dispatcher
from monitor.alerts.outbox import DELIVERED, RETRY, Outbox, alert_writer
from monitor.alerts.outbox import FAILED as GAVE_UP
from monitor.alerts.records import DeliveryOutcome, WebhookRequest
from monitor.alerts.rules import FAILED, FIRING, RESOLVED, STUCK, Receiver, alert_policy
from monitor.config.settings import WebhookSettings
from monitor.core.model import (
    FAILED_STATES,
    KNOWN_STATES,
    REMOVED,
    TRANSIENT_STATES,
    FastLaunchImage,
    PollResult,
    Scope,
)
from monitor.core.times import rfc3339
from monitor.exposition.metrics import MonitorMetrics
from monitor.store import Store, create_engine_for, upgrade
from monitor.store.schema import alert_attempts, alert_outbox, history
from tests.builders import T0, an_image

SCOPE = Scope("prod", "123456789012", "us-east-1")
IMAGE_IDS = ("ami-00000000000000001", "ami-00000000000000002", "ami-00000000000000003")
RECEIVER_NAMES = ("ops", "pager")
STUCK_AFTER = 2 * 3600.0

#: What a receiver can answer, by the name the steps of a failing example show.
ANSWERS = {
    "200": DeliveryOutcome(status=200, error=None, seconds=0.01),
    "500": DeliveryOutcome(status=500, error=None, seconds=0.01),
    "timeout": DeliveryOutcome(status=None, error="ReadTimeoutError", seconds=10.0),
    "410": DeliveryOutcome(status=410, error=None, seconds=0.01),
}
ACCEPTED = "200"
GONE = "410"

BEFORE_SEND = "before the receiver got it"
AFTER_SEND = "after the receiver accepted it"

#: (receiver, image, kind, state, since): one alert, which its firing and its resolve share.
Alert = tuple[str, str, str, str, datetime]
#: (receiver, image, kind, state, since, status): one outbox row's unique key.
AlertKey = tuple[str, str, str, str, datetime, str]
#: (image, new state, transition time): one history row's unique key.
Transition = tuple[str, str, datetime]


class SimulatedCrash(Exception):
    """The dispatcher's process dies here: nothing more of the delivery runs."""


class FakeClock:
    """Time that moves only when a step moves it."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


class FixedJitter:
    """The dispatcher's jitter at one fraction of its range, whichever thread asks.

    A seeded `random.Random` shared by the receivers' threads would hand out its numbers in
    thread order, and Hypothesis needs a replayed example to behave the same.
    """

    def __init__(self, fraction: float) -> None:
        self._fraction = fraction

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self._fraction


@dataclass(frozen=True, slots=True)
class Received:
    """One request as a receiver got it, and what it answered."""

    receiver: str
    webhook_id: str
    body: dict[str, Any]
    answer: str
    at: datetime

    @property
    def accepted(self) -> bool:
        return self.answer == ACCEPTED


@dataclass(frozen=True, slots=True)
class Crash:
    """A dispatcher that died delivering `event_id`; the log had `position` requests then."""

    receiver: str
    event_id: str
    point: str
    position: int


class Receivers:
    """The far side of the webhooks: what each receiver answers now, and all it ever got.

    Outlives dispatchers, stores and restarts, as real receivers do. Thread-safe: the
    dispatcher delivers to each receiver from a thread of its own.
    """

    def __init__(self, clock: FakeClock, names: tuple[str, ...]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.answers = dict.fromkeys(names, ACCEPTED)
        self.log: list[Received] = []
        self.crashes: list[Crash] = []
        #: Receivers that answered 410 since their config last changed.
        self.gone: set[str] = set()
        #: Requests that reached a receiver after it had answered 410: there must be none.
        self.after_gone: list[Received] = []
        self._crash: tuple[str, str] | None = None

    def sender(self, webhook: WebhookSettings) -> FakeSender:
        """The dispatcher's `sender_factory`."""
        return FakeSender(self, webhook.name)

    def crash_next_delivery(self, receiver: str, point: str) -> None:
        """Make the next delivery to `receiver` kill its dispatcher at `point`."""
        self._crash = (receiver, point)

    def no_crash(self) -> None:
        self._crash = None

    def reconfigured(self) -> None:
        """The operator changed the webhooks' config: a receiver that said 410 works again."""
        for receiver in self.gone:
            self.answers[receiver] = ACCEPTED
        self.gone.clear()

    def answer(self, receiver: str, request: WebhookRequest) -> DeliveryOutcome:
        """Record `request` and answer it as `receiver` does now, or die as planned."""
        body = json.loads(request.body)
        with self._lock:
            crash = self._crash if self._crash and self._crash[0] == receiver else None
            self._crash = None if crash else self._crash
            if crash and crash[1] == BEFORE_SEND:
                self.crashes.append(Crash(receiver, body["event_id"], BEFORE_SEND, len(self.log)))
                raise SimulatedCrash
            answer = ACCEPTED if crash else self.answers[receiver]
            received = Received(
                receiver, request.headers["webhook-id"], body, answer, self._clock.now()
            )
            if receiver in self.gone:
                self.after_gone.append(received)
            self.log.append(received)
            if answer == GONE:
                self.gone.add(receiver)
            if crash:
                self.crashes.append(Crash(receiver, body["event_id"], AFTER_SEND, len(self.log)))
                raise SimulatedCrash
        return ANSWERS[answer]


class FakeSender:
    """A `WebhookSender` whose receivers are the in-memory `Receivers`."""

    def __init__(self, receivers: Receivers, name: str) -> None:
        self._receivers = receivers
        self._name = name

    def send(self, request: WebhookRequest) -> DeliveryOutcome:
        return self._receivers.answer(self._name, request)

    def close(self) -> None:
        """Nothing to close: there is no connection."""


@dataclass(frozen=True, slots=True)
class Seen:
    """What the store holds of an image: AWS's state and time."""

    state: str
    time: datetime | None


@dataclass(frozen=True, slots=True)
class Row:
    """One outbox row and its recorded attempts, oldest first."""

    id: int
    event_id: str
    alert: Alert
    status: str
    created_at: datetime
    delivered_at: datetime | None
    failed_at: datetime | None
    attempts: tuple[Attempt, ...]

    @property
    def key(self) -> AlertKey:
        return (*self.alert, self.status)

    @property
    def receiver(self) -> str:
        return self.alert[0]

    @property
    def pending(self) -> bool:
        return self.delivered_at is None and self.failed_at is None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One recorded delivery attempt."""

    status: int | None
    error: str | None
    outcome: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The history and the outbox as one read found them; outbox rows by event id."""

    history: tuple[Transition, ...]
    rows: dict[str, Row]


#: One image in one poll: not listed, or listed in a state, with the time of the last poll
#: kept, a new one (milliseconds before now, and after the last one), or none at all.
listing = st.none() | st.tuples(
    st.sampled_from(KNOWN_STATES),
    st.sampled_from(("keep", "new", "new", "missing")),
    st.integers(min_value=0, max_value=600_000),
)
elapsed = (
    st.integers(min_value=1, max_value=300)
    | st.integers(min_value=300, max_value=4 * 3600)
    | st.just(int(GIVE_UP_AFTER.total_seconds()) + 3600)
)


class AlertMachine(RuleBasedStateMachine):
    """Polls, answers, time, restarts and crashes against one SQLite file (see the module)."""

    def __init__(self, template: Path, workspace: Path) -> None:
        super().__init__()
        self._folder = Path(tempfile.mkdtemp(dir=workspace))
        self._path = self._folder / "monitor.sqlite3"
        shutil.copyfile(template, self._path)
        self.clock = FakeClock(T0)
        self.receivers: tuple[Receiver, ...] = ()
        self.world = Receivers(self.clock, ())
        self.stuck_after = 0.0
        self.jitter = FixedJitter(0.5)
        self.config_version = 0
        self.registries: list[CollectorRegistry] = []
        self.engine: Engine | None = None
        self.store: Store | None = None
        self.outbox: Outbox | None = None
        self.dispatcher: Dispatcher | None = None
        # The model: what the store holds of each image, and what it must have recorded.
        self.seen: dict[str, Seen] = {}
        self.expected_history: set[Transition] = set()
        self.expected_alerts: set[AlertKey] = set()
        #: The `since` of each alert's newest firing row, by (receiver, image, kind, state).
        self.newest_firing: dict[tuple[str, str, str, str], datetime] = {}

    # -- the daemon's life -------------------------------------------------------------------

    @initialize(
        receivers=st.lists(
            st.tuples(st.booleans(), st.sampled_from(tuple(ANSWERS))),
            min_size=1,
            max_size=len(RECEIVER_NAMES),
        ),
        stuck=st.booleans(),
        jitter=st.floats(min_value=0.0, max_value=1.0),
    )
    def start(self, receivers: list[tuple[bool, str]], stuck: bool, jitter: float) -> None:
        """Configure one or two receivers and their first answers, stuck_after and the jitter."""
        self.receivers = tuple(
            Receiver(name, FAILED_STATES, send_resolved)
            for name, (send_resolved, _) in zip(RECEIVER_NAMES, receivers, strict=False)
        )
        self.world = Receivers(self.clock, tuple(r.name for r in self.receivers))
        for receiver, (_, answer) in zip(self.receivers, receivers, strict=True):
            self.world.answers[receiver.name] = answer
        self.stuck_after = STUCK_AFTER if stuck else 0.0
        self.jitter = FixedJitter(jitter)
        self._open(release=True)

    def _webhooks(self) -> list[WebhookSettings]:
        return [
            WebhookSettings(
                name=r.name,
                urls=(f"https://receiver.invalid/{r.name}",),
                send_resolved=r.send_resolved,
                states=r.states,
                # Only tells the config's versions apart: a 410 lasts until the config changes.
                headers=(("X-Config-Version", str(self.config_version)),),
            )
            for r in self.receivers
        ]

    def _open(self, *, release: bool) -> None:
        self.engine = create_engine_for(f"sqlite:///{self._path}")
        self.store = Store(
            self.engine, alert_writer(alert_policy(self.receivers, self.stuck_after))
        )
        self.outbox = Outbox(self.engine)
        if release:
            self.outbox.release_all()
        registry = CollectorRegistry()
        self.registries.append(registry)
        self.dispatcher = Dispatcher(
            self.outbox,
            self._webhooks(),
            MonitorMetrics(registry),
            clock=self.clock.now,
            rng=self.jitter,  # type: ignore[arg-type]
            sender_factory=self.world.sender,  # type: ignore[arg-type]
        )

    def close(self) -> None:
        """Stop the dispatcher and let go of the database, as a stopping daemon does."""
        if self.dispatcher is not None:
            self.dispatcher.close()
            self.dispatcher = None
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None

    def _restart(self, *, release: bool, reconfigure: bool = False) -> None:
        self.close()
        if reconfigure:
            self.config_version += 1
            self.world.reconfigured()
        self._open(release=release)

    @rule(reconfigure=st.booleans())
    def restart(self, reconfigure: bool) -> None:
        """The daemon stops and starts again, as on SQLite: leases left over are released.

        With `reconfigure`, the webhooks' config changed meanwhile, which re-enables a receiver
        disabled by 410.
        """
        self._restart(release=True, reconfigure=reconfigure)

    @rule(data=st.data(), point=st.sampled_from((BEFORE_SEND, AFTER_SEND)), release=st.booleans())
    def crash_mid_delivery(self, data: st.DataObject, point: str, release: bool) -> None:
        """A dispatch tick whose process dies in a delivery to one receiver, then a restart.

        Without `release` the new process leaves the dead one's leases alone, as it must on
        PostgreSQL: their alerts are due again when the leases run out.
        """
        receiver = data.draw(st.sampled_from([r.name for r in self.receivers]), "receiver")
        self.world.crash_next_delivery(receiver, point)
        with contextlib.suppress(SimulatedCrash):
            self._dispatcher().dispatch_due()
        self.world.no_crash()
        self._restart(release=release)

    @rule(seconds=st.just(0) | elapsed)
    def dispatch(self, seconds: int) -> None:
        """Time passes (or not), then the dispatcher ticks."""
        self.clock.advance(seconds)
        self._dispatcher().dispatch_due()

    @rule(seconds=elapsed)
    def time_passes(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule(data=st.data(), answer=st.sampled_from(tuple(ANSWERS)))
    def receiver_answers(self, data: st.DataObject, answer: str) -> None:
        """From now on, one receiver answers `answer` to every request."""
        receiver = data.draw(st.sampled_from([r.name for r in self.receivers]), "receiver")
        self.world.answers[receiver] = answer

    # -- polls -------------------------------------------------------------------------------

    @rule(listings=st.tuples(listing, listing, listing))
    def poll(self, listings: tuple[tuple[str, str, int] | None, ...]) -> None:
        """A successful poll listing some of the images, in random states and at random times."""
        now = self.clock.now()
        images = []
        for image_id, listed in zip(IMAGE_IDS, listings, strict=True):
            before = self.seen.get(image_id)
            if listed is None:
                continue
            state, time, milliseconds_ago = listed
            new = now - timedelta(milliseconds=milliseconds_ago)
            if before is not None and before.time is not None:
                new = max(new, before.time + timedelta(milliseconds=1))
            when = {"keep": before.time if before else new, "new": new, "missing": None}[time]
            images.append(an_image(state, when, image_id))
        self.report(images)

    @rule()
    def poll_unchanged(self) -> None:
        """A successful poll that finds every image as the last one did."""
        self.report([an_image(seen.state, seen.time, i) for i, seen in self.seen.items()])

    @rule()
    def poll_fails(self) -> None:
        """A failed poll: nothing about the images may change, nothing may alert."""
        now = self.clock.now()
        failed = PollResult(SCOPE, now, 20.0, 0, None, "RequestLimitExceeded", "Rate exceeded")
        self._store().apply_poll(failed, now)

    def report(self, images: list[FastLaunchImage]) -> None:
        """AWS lists `images` (no other) in a successful poll now; the model follows the rules."""
        now = self.clock.now()
        self._store().apply_poll(PollResult(SCOPE, now, 0.2, 1, tuple(images)), now)
        listed = {image.image_id: image for image in images}
        for image_id in IMAGE_IDS:
            before = self.seen.get(image_id)
            image = listed.get(image_id)
            if image is None:
                if before is not None:
                    self._expect_transition(image_id, before, REMOVED, now)
                    del self.seen[image_id]
                continue
            if before and (before.state, before.time) == (image.state, image.state_transition_time):
                continue
            since = image.state_transition_time or now
            self._expect_transition(image_id, before, image.state, since)
            self.seen[image_id] = Seen(image.state, image.state_transition_time)
        for image in images:
            time = image.state_transition_time
            if time is not None and self._stuck(image.state, time):
                for receiver in self.receivers:
                    self._expect_firing((receiver.name, image.image_id, STUCK, image.state, time))

    def _stuck(self, state: str, since: datetime) -> bool:
        elapsed = self.clock.now() - since
        return (
            self.stuck_after > 0
            and state in TRANSIENT_STATES
            and elapsed >= timedelta(seconds=self.stuck_after)
        )

    def _expect_firing(self, alert: Alert) -> None:
        """A firing row, unless the outbox has it already; a new one is its alert's newest."""
        if (*alert, FIRING) not in self.expected_alerts:
            self.expected_alerts.add((*alert, FIRING))
            receiver, image_id, kind, state, since = alert
            self.newest_firing[(receiver, image_id, kind, state)] = since

    def _expect_resolve(self, receiver: str, image_id: str, kind: str, state: str) -> None:
        """A resolve resolves the newest firing of its alert: none if nothing fired."""
        since = self.newest_firing.get((receiver, image_id, kind, state))
        if since is not None:
            self.expected_alerts.add((receiver, image_id, kind, state, since, RESOLVED))

    def _expect_transition(
        self, image_id: str, before: Seen | None, state: str, since: datetime
    ) -> None:
        """The alert rules for one transition: fire into a listed state; resolve what it leaves."""
        self.expected_history.add((image_id, state, since))
        was_stuck = (
            before is not None
            and before.time is not None
            and before.state != state
            and self._stuck(before.state, before.time)
        )
        for receiver in self.receivers:
            name = receiver.name
            if state in receiver.states:
                self._expect_firing((name, image_id, FAILED, state, since))
            if before is None or not receiver.send_resolved:
                continue
            if before.state in receiver.states and state not in receiver.states:
                self._expect_resolve(name, image_id, FAILED, before.state)
            if was_stuck:
                self._expect_resolve(name, image_id, STUCK, before.state)

    # -- reading the database ----------------------------------------------------------------

    def _store(self) -> Store:
        assert self.store is not None
        return self.store

    def _dispatcher(self) -> Dispatcher:
        assert self.dispatcher is not None
        return self.dispatcher

    def snapshot(self) -> Snapshot:
        """The history, and the outbox with every recorded attempt, in one read."""
        assert self.engine is not None
        h, a = history.c, alert_attempts.c
        with self.engine.connect() as connection:
            transitions = connection.execute(select(h.image_id, h.new_state, h.transition_time))
            recorded = tuple((t.image_id, t.new_state, t.transition_time) for t in transitions)
            attempts: dict[int, list[Attempt]] = {}
            for t in connection.execute(
                select(a.outbox_id, a.status_code, a.error, a.outcome).order_by(a.id)
            ):
                attempts.setdefault(t.outbox_id, []).append(
                    Attempt(t.status_code, t.error, t.outcome)
                )
            rows = {
                r.event_id: Row(
                    r.id,
                    r.event_id,
                    (r.receiver, r.image_id, r.kind, r.state, r.transition_time),
                    r.status,
                    r.created_at,
                    r.delivered_at,
                    r.failed_at,
                    tuple(attempts.get(r.id, ())),
                )
                for r in connection.execute(select(alert_outbox))
            }
        return Snapshot(recorded, rows)

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def alerts_follow_the_transitions_and_reach_receivers_as_recorded(self) -> None:
        snapshot = self.snapshot()
        self.check_one_alert_per_transition_and_no_other(snapshot)
        self.check_receivers_got_each_alert_as_the_outbox_holds_it(snapshot)
        self.check_a_resolve_reaches_a_receiver_only_after_its_firing(snapshot)
        self.check_each_alert_is_accepted_once_plus_once_per_crash_after_sending(snapshot)
        self.check_retries_wait_and_a_gone_receiver_gets_nothing_more()

    def check_one_alert_per_transition_and_no_other(self, snapshot: Snapshot) -> None:
        assert len(set(snapshot.history)) == len(snapshot.history)
        assert set(snapshot.history) == self.expected_history
        rows = snapshot.rows.values()
        for receiver in self.receivers:
            firings = sorted(
                (image_id, state, since)
                for name, image_id, kind, state, since, status in (row.key for row in rows)
                if (name, kind, status) == (receiver.name, FAILED, FIRING)
            )
            into_its_states = sorted(t for t in snapshot.history if t[1] in receiver.states)
            assert firings == into_its_states, receiver.name
        assert {row.key for row in rows} == self.expected_alerts

    def check_receivers_got_each_alert_as_the_outbox_holds_it(self, snapshot: Snapshot) -> None:
        for received in self.world.log:
            assert received.webhook_id == received.body["event_id"], received
            row = snapshot.rows.get(received.webhook_id)
            assert row is not None, f"{received} is of no outbox row"
            _, image_id, kind, state, since = row.alert
            assert received.receiver == row.receiver, received
            assert received.body["image_id"] == image_id, received
            assert (received.body["kind"], received.body["status"]) == (kind, row.status)
            if row.status == FIRING:
                assert received.body["state"] == state, received
                assert received.body["state_transition_time"] == rfc3339(since), received
            else:
                assert received.body["previous_state"] == state, received

    def check_a_resolve_reaches_a_receiver_only_after_its_firing(self, snapshot: Snapshot) -> None:
        firings = {row.alert: row for row in snapshot.rows.values() if row.status == FIRING}
        seen: dict[Alert, list[Received]] = {}
        for received in self.world.log:
            row = snapshot.rows[received.webhook_id]
            if row.status == FIRING:
                seen.setdefault(row.alert, []).append(received)
                continue
            before = seen.get(row.alert)
            assert before, f"a resolve reached {received.receiver} before its firing: {row}"
            firing = firings[row.alert]
            assert any(r.accepted for r in before) or firing.failed_at is not None, row

    def check_each_alert_is_accepted_once_plus_once_per_crash_after_sending(
        self, snapshot: Snapshot
    ) -> None:
        accepted = Counter(r.webhook_id for r in self.world.log if r.accepted)
        crashes = [c for c in self.world.crashes if c.point == AFTER_SEND]
        crashed = Counter(c.event_id for c in crashes)
        # The request a dispatcher died after: answered, but never recorded.
        unrecorded = {c.position - 1 for c in crashes}
        answered: dict[str, list[int | None]] = {}
        for position, received in enumerate(self.world.log):
            if position not in unrecorded:
                status = ANSWERS[received.answer].status
                answered.setdefault(received.webhook_id, []).append(status)
        for event_id, row in snapshot.rows.items():
            delivered = 0 if row.delivered_at is None else 1
            assert accepted[event_id] == delivered + crashed[event_id], row
            assert [a.status for a in row.attempts] == answered.get(event_id, []), row

    def check_retries_wait_and_a_gone_receiver_gets_nothing_more(self) -> None:
        assert self.world.after_gone == []
        last: dict[str, int] = {}
        for position, received in enumerate(self.world.log):
            previous = last.get(received.webhook_id)
            last[received.webhook_id] = position
            if previous is None or any(
                c.event_id == received.webhook_id and previous < c.position <= position
                for c in self.world.crashes
            ):
                continue
            waited = received.at - self.world.log[previous].at
            assert waited >= timedelta(seconds=BACKOFF_FIRST), received

    # -- the end -----------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            # Hypothesis tears down after a failing step too: that step's error is the one.
            if self.dispatcher is not None and sys.exc_info()[0] is None:
                self.finish()
        finally:
            self.close()
            shutil.rmtree(self._folder, ignore_errors=True)

    def finish(self) -> None:
        """Receivers recover and time runs on: every alert ends delivered or failed."""
        for receiver in self.world.answers:
            if receiver not in self.world.gone:
                self.world.answers[receiver] = ACCEPTED
        dispatcher = self._dispatcher()
        for _ in range(100):
            dispatcher.dispatch_due()
            snapshot = self.snapshot()
            if not any(
                row.pending and row.receiver not in self.world.gone
                for row in snapshot.rows.values()
            ):
                break
            # Past any backoff (at most 5 min) and any dead process's lease.
            self.clock.advance(max(LEASE_SECONDS, 300.0))
        else:
            raise AssertionError("alerts were still pending after 100 ticks")
        self.alerts_follow_the_transitions_and_reach_receivers_as_recorded()

        assert self.outbox is not None
        assert self.outbox.disabled_receivers().keys() == self.world.gone
        for row in snapshot.rows.values():
            if row.pending:
                assert row.receiver in self.world.gone, row
            if row.failed_at is not None:
                last = row.attempts[-1]
                assert last.outcome == GAVE_UP, row
                gave_up = row.failed_at - row.created_at >= GIVE_UP_AFTER
                assert last.status == 410 or (gave_up and last.status in (500, None)), row
        for crash in self.world.crashes:
            row = snapshot.rows[crash.event_id]
            again = any(r.webhook_id == crash.event_id for r in self.world.log[crash.position :])
            assert again or (row.pending and crash.receiver in self.world.gone), crash
        self._check_metrics(snapshot)

    def _check_metrics(self, snapshot: Snapshot) -> None:
        self._dispatcher().update_pending()
        registry = self.registries[-1]
        for receiver in self.receivers:
            rows = [row for row in snapshot.rows.values() if row.receiver == receiver.name]
            labels = {"receiver": receiver.name}
            pending = registry.get_sample_value("fastlaunch_alerts_pending", labels)
            assert pending == sum(1 for row in rows if row.pending), receiver
            attempts = Counter(a.outcome for row in rows for a in row.attempts)
            for outcome in (DELIVERED, RETRY, GAVE_UP):
                labels = {"receiver": receiver.name, "outcome": outcome}
                counted = sum(
                    r.get_sample_value("fastlaunch_alert_deliveries_total", labels) or 0.0
                    for r in self.registries
                )
                assert counted == attempts[outcome], labels


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file with the newest schema, copied for each example: migrating takes longer."""
    path = tmp_path_factory.mktemp("alert-machine") / "template.sqlite3"
    engine = create_engine_for(f"sqlite:///{path}")
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return path


@pytest.fixture
def machine(template: Path, tmp_path: Path) -> Iterator[AlertMachine]:
    """The machine, for examples written out step by step."""
    built = AlertMachine(template, tmp_path)
    yield built
    built.close()


def test_every_failure_alerts_once_and_resolves_after_its_firing_through_outages_and_crashes(
    template: Path, tmp_path: Path
) -> None:
    run_state_machine_as_test(
        lambda: AlertMachine(template, tmp_path),
        settings=settings(max_examples=75, stateful_step_count=30, deadline=None),
    )


def test_a_failure_without_a_transition_time_resolves_after_its_firing(
    machine: AlertMachine,
) -> None:
    machine.start(receivers=[(True, "500")], stuck=False, jitter=0.5)
    machine.report([an_image("enabled-failed", None, IMAGE_IDS[0])])
    machine.dispatch(0)  # the firing is retried in 1 s
    machine.clock.advance(0.5)
    machine.report([an_image("enabled", machine.clock.now(), IMAGE_IDS[0])])
    machine.world.answers["ops"] = ACCEPTED
    machine.dispatch(0)

    got = [(r.body["status"], r.answer) for r in machine.world.log]
    assert got == [(FIRING, "500")], "the resolve must wait for its firing"


def test_an_image_stuck_between_two_polls_is_not_resolved_unannounced(
    machine: AlertMachine,
) -> None:
    machine.start(receivers=[(True, "200")], stuck=True, jitter=0.5)
    machine.report([an_image("enabling", T0, IMAGE_IDS[0])])
    machine.time_passes(int(STUCK_AFTER) + 60)
    machine.report([an_image("enabled", machine.clock.now(), IMAGE_IDS[0])])
    machine.dispatch(0)

    assert [r.body for r in machine.world.log] == [], "no stuck alert fired, none may resolve"
