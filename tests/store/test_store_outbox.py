"""The alert outbox on SQLite and PostgreSQL: enqueued with transitions, claimed, finished."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select

from monitor.alerts.outbox import DELIVERED, FAILED, RETRY, Outbox, alert_writer, insert_alerts
from monitor.alerts.records import DeliveryOutcome
from monitor.alerts.rules import AlertEvent, AlertKey, Receiver, alert_policy
from monitor.core.model import FAILED_STATES, FastLaunchImage, PollResult, Scope
from monitor.store import Store, create_engine_for, upgrade
from monitor.store.schema import alert_attempts, alert_outbox
from tests.builders import T0, an_image

SCOPE = Scope(target="prod", account_id="111111111111", region="us-east-1")
OK = DeliveryOutcome(status=200, error=None, seconds=0.01)
DOWN = DeliveryOutcome(status=503, error=None, seconds=0.01)
RECEIVERS = ("ops", "pager")


def a_poll(*found: FastLaunchImage, at: datetime = T0) -> PollResult:
    return PollResult(scope=SCOPE, started_at=at, duration_seconds=0.1, pages=1, images=found)


@pytest.fixture
def alerting(engine: Engine) -> Store:
    policy = alert_policy([Receiver(name, FAILED_STATES) for name in RECEIVERS], 0)
    return Store(engine, alert_writer(policy))


@pytest.fixture
def outbox(engine: Engine) -> Outbox:
    return Outbox(engine)


def rows(engine: Engine) -> int:
    with engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(alert_outbox)).scalar_one())


def test_a_failure_enqueues_one_alert_per_receiver_with_its_transition(alerting, engine):
    alerting.apply_poll(a_poll(an_image("enabling-failed")), T0)
    assert rows(engine) == 2


def test_a_poll_applied_twice_enqueues_its_alerts_once(alerting, engine):
    poll = a_poll(an_image("enabling-failed"))
    alerting.apply_poll(poll, T0)
    alerting.apply_poll(poll, T0 + timedelta(seconds=1))
    assert rows(engine) == 2


def test_a_failed_poll_enqueues_nothing(alerting, engine):
    failed = PollResult(SCOPE, T0, 1.0, 0, None, "RequestLimitExceeded", "slow down")
    alerting.apply_poll(failed, T0)
    assert rows(engine) == 0


def test_a_claimed_alert_is_not_claimed_again_until_its_lease_runs_out(alerting, outbox):
    alerting.apply_poll(a_poll(an_image("enabled-failed")), T0)
    claimed = outbox.claim_due(T0, receivers=["ops"], lease=60)
    assert [e.receiver for e in claimed] == ["ops"]
    assert outbox.claim_due(T0 + timedelta(seconds=59), receivers=["ops"], lease=60) == []
    again = outbox.claim_due(T0 + timedelta(seconds=61), receivers=["ops"], lease=60)
    assert [e.event_id for e in again] == [claimed[0].event_id]


def test_finishing_is_refused_once_the_lease_was_taken_by_another_claim(alerting, outbox):
    alerting.apply_poll(a_poll(an_image("enabled-failed")), T0)
    (stale,) = outbox.claim_due(T0, receivers=["ops"], lease=10)
    (fresh,) = outbox.claim_due(T0 + timedelta(seconds=11), receivers=["ops"], lease=10)
    assert not outbox.finish(stale, OK, T0 + timedelta(seconds=12), result=DELIVERED)
    assert outbox.finish(fresh, OK, T0 + timedelta(seconds=12), result=DELIVERED)


def test_a_retried_alert_is_due_again_at_its_next_attempt_and_records_each_attempt(
    alerting, outbox, engine
):
    alerting.apply_poll(a_poll(an_image("enabled-failed")), T0)
    (entry,) = outbox.claim_due(T0, receivers=["ops"], lease=60)
    later = T0 + timedelta(seconds=30)
    outbox.finish(entry, DOWN, T0, result=RETRY, next_attempt_at=later)
    assert outbox.claim_due(later - timedelta(seconds=1), receivers=["ops"], lease=60) == []
    (retry,) = outbox.claim_due(later, receivers=["ops"], lease=60)
    assert retry.attempts == 1
    assert retry.event_id == entry.event_id
    outbox.finish(retry, OK, later, result=DELIVERED)
    (view,) = outbox.listing()[1:]  # the newest first; "pager" was enqueued too
    assert view.outcome in {DELIVERED, "pending"}
    with engine.connect() as c:
        outcomes = c.execute(select(alert_attempts.c.outcome).order_by(alert_attempts.c.id))
        assert [o for (o,) in outcomes] == [RETRY, DELIVERED]


def test_a_failed_alert_stays_visible_and_is_not_claimed_again(alerting, outbox):
    alerting.apply_poll(a_poll(an_image("enabled-failed")), T0)
    (entry,) = outbox.claim_due(T0, receivers=["ops"], lease=60)
    refused = DeliveryOutcome(status=400, error=None, seconds=0.01)
    outbox.finish(entry, refused, T0, result=FAILED)
    assert outbox.claim_due(T0 + timedelta(days=2), receivers=["ops"], lease=60) == []
    failed = [v for v in outbox.listing() if v.entry.receiver == "ops"]
    assert [(v.outcome, v.last_error) for v in failed] == [(FAILED, "HTTP 400")]
    assert outbox.pending_counts() == {"pager": 1}


def test_a_resolve_waits_until_its_firing_is_delivered(alerting, outbox):
    alerting.apply_poll(a_poll(an_image("enabled-failed")), T0)
    recovered = an_image("enabled", T0 + timedelta(minutes=1))
    alerting.apply_poll(a_poll(recovered), T0 + timedelta(minutes=1))
    now = T0 + timedelta(minutes=2)
    (firing,) = outbox.claim_due(now, receivers=["ops"], lease=60, limit=1)
    assert firing.status == "firing"
    assert outbox.claim_due(now, receivers=["ops"], lease=60) == []
    outbox.finish(firing, OK, now, result=DELIVERED)
    (resolve,) = outbox.claim_due(now, receivers=["ops"], lease=60)
    assert resolve.status == "resolved"
    assert resolve.state == "enabled-failed"
    assert resolve.since == T0


def keys(engine: Engine) -> list[tuple[str, str, str, str, datetime]]:
    """(receiver, kind, status, state, since) of every outbox row, oldest first."""
    o = alert_outbox.c
    with engine.connect() as c:
        found = c.execute(
            select(o.receiver, o.kind, o.status, o.state, o.transition_time).order_by(o.id)
        )
        return [tuple(row) for row in found]


def test_the_resolve_of_a_failure_aws_gave_no_time_is_keyed_by_its_firing(alerting, outbox):
    alerting.apply_poll(a_poll(an_image("enabled-failed", None)), T0)
    later = T0 + timedelta(minutes=1)
    alerting.apply_poll(a_poll(an_image("enabled", later), at=later), later)
    (firing,) = outbox.claim_due(later, receivers=["ops"], lease=60)
    assert (firing.status, firing.since) == ("firing", T0)
    # Paired with its firing, the resolve waits for it.
    assert outbox.claim_due(later, receivers=["ops"], lease=60) == []
    outbox.finish(firing, OK, later, result=DELIVERED)
    (resolve,) = outbox.claim_due(later, receivers=["ops"], lease=60)
    assert (resolve.status, resolve.state, resolve.since) == ("resolved", "enabled-failed", T0)
    key = AlertKey("ops", SCOPE, "ami-1", "failed", "enabled-failed", T0, "resolved")
    assert resolve.event_id == resolve.payload["event_id"] == key.event_id


def test_a_resolve_after_a_repeated_failure_resolves_the_newest_firing(alerting, engine):
    again = T0 + timedelta(minutes=1)
    recovered = T0 + timedelta(minutes=2)
    alerting.apply_poll(a_poll(an_image("enabled-failed", T0)), T0)
    alerting.apply_poll(a_poll(an_image("enabled-failed", again), at=again), again)
    alerting.apply_poll(a_poll(an_image("enabled", recovered), at=recovered), recovered)
    assert [k for k in keys(engine) if k[0] == "ops"] == [
        ("ops", "failed", "firing", "enabled-failed", T0),
        ("ops", "failed", "firing", "enabled-failed", again),
        ("ops", "failed", "resolved", "enabled-failed", again),
    ]


def episodes(engine: Engine) -> list[tuple[str, str, int, str]]:
    """(status, state, episode, event id) of every outbox row of receiver "ops", oldest first."""
    o = alert_outbox.c
    with engine.connect() as c:
        found = c.execute(
            select(o.status, o.state, o.episode, o.event_id)
            .where(o.receiver == "ops")
            .order_by(o.id)
        )
        return [tuple(row) for row in found]


def test_an_image_that_comes_back_still_failed_after_its_removal_fires_again(alerting, engine):
    # A spurious removal (or a real one) resolved the alert; the image is listed again in the
    # same failed state with the same transition time: the receiver last heard "resolved".
    gone, back = T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)
    alerting.apply_poll(a_poll(an_image("enabling-failed", T0)), T0)
    alerting.apply_poll(a_poll(at=gone), gone)
    alerting.apply_poll(a_poll(an_image("enabling-failed", T0), at=back), back)
    found = episodes(engine)
    assert [row[:3] for row in found] == [
        ("firing", "enabling-failed", 0),
        ("resolved", "enabling-failed", 0),
        ("firing", "enabling-failed", 1),
    ]
    assert len({row[3] for row in found}) == 3


def test_each_return_of_a_failed_image_is_a_new_episode_resolved_by_its_own_resolve(
    alerting, engine
):
    alerting.apply_poll(a_poll(an_image("enabled-failed", T0)), T0)
    at = T0
    for _ in range(2):
        at += timedelta(minutes=1)
        alerting.apply_poll(a_poll(at=at), at)
        at += timedelta(minutes=1)
        alerting.apply_poll(a_poll(an_image("enabled-failed", T0), at=at), at)
    at += timedelta(minutes=1)
    alerting.apply_poll(a_poll(an_image("enabled", at), at=at), at)
    assert [row[:3] for row in episodes(engine)] == [
        ("firing", "enabled-failed", 0),
        ("resolved", "enabled-failed", 0),
        ("firing", "enabled-failed", 1),
        ("resolved", "enabled-failed", 1),
        ("firing", "enabled-failed", 2),
        ("resolved", "enabled-failed", 2),
    ]


def test_a_firing_of_an_alert_still_open_is_not_enqueued_again(engine):
    # However the same firing comes to be written again (a second writer, a stuck image seen
    # stuck at every poll), while its alert is open it is the same alert: no new episode.
    firing = AlertEvent(
        AlertKey("ops", SCOPE, "ami-1", "failed", "enabled-failed", T0, "firing"), {"n": 1}
    )
    for _ in range(2):
        with engine.begin() as connection:
            insert_alerts(connection, [firing], T0)
    assert [row[:3] for row in episodes(engine)] == [("firing", "enabled-failed", 0)]


def test_a_stuck_alert_seen_stuck_again_keeps_its_alertmanager_re_sends(engine, outbox):
    stuck = Store(engine, alert_writer(alert_policy([Receiver("ops", FAILED_STATES)], 7200)))
    seen_stuck = T0 + timedelta(hours=3)
    stuck.apply_poll(a_poll(an_image("enabling", T0)), T0)
    stuck.apply_poll(a_poll(an_image("enabling", T0), at=seen_stuck), seen_stuck)
    (entry,) = outbox.claim_due(seen_stuck, receivers=["ops"], lease=60)
    resend = seen_stuck + timedelta(minutes=1)
    outbox.finish(entry, OK, seen_stuck, result=DELIVERED, resend_at=resend)
    still = seen_stuck + timedelta(seconds=30)
    stuck.apply_poll(a_poll(an_image("enabling", T0), at=still), still)
    (again,) = outbox.claim_due(resend, receivers=["ops"], lease=60)
    assert (again.kind, again.resending) == ("stuck", True)


def test_a_failure_that_fired_for_no_receiver_is_not_resolved(engine):
    # The receiver only asked for `enabled-failed` after the image had failed.
    before = Store(
        engine, alert_writer(alert_policy([Receiver("ops", frozenset({"enabling-failed"}))], 0))
    )
    before.apply_poll(a_poll(an_image("enabled-failed")), T0)
    after = Store(engine, alert_writer(alert_policy([Receiver("ops", FAILED_STATES)], 0)))
    later = T0 + timedelta(minutes=1)
    after.apply_poll(a_poll(an_image("enabled", later), at=later), later)
    assert rows(engine) == 0


def test_a_stuck_image_a_poll_saw_stuck_resolves_its_stuck_alert_when_it_moves_on(engine):
    stuck = Store(engine, alert_writer(alert_policy([Receiver("ops", FAILED_STATES)], 7200)))
    seen_stuck = T0 + timedelta(hours=3)
    stuck.apply_poll(a_poll(an_image("enabling", T0)), T0)
    stuck.apply_poll(a_poll(an_image("enabling", T0), at=seen_stuck), seen_stuck)
    moved_on = seen_stuck + timedelta(minutes=1)
    stuck.apply_poll(a_poll(an_image("enabled", moved_on), at=moved_on), moved_on)
    assert keys(engine) == [
        ("ops", "stuck", "firing", "enabling", T0),
        ("ops", "stuck", "resolved", "enabling", T0),
    ]


def test_an_image_stuck_only_between_two_polls_resolves_no_stuck_alert(engine):
    stuck = Store(engine, alert_writer(alert_policy([Receiver("ops", FAILED_STATES)], 7200)))
    stuck.apply_poll(a_poll(an_image("enabling", T0)), T0)
    moved_on = T0 + timedelta(hours=3)
    stuck.apply_poll(a_poll(an_image("enabled", moved_on), at=moved_on), moved_on)
    assert rows(engine) == 0


def test_a_delivered_alertmanager_alert_comes_back_until_it_is_resolved(alerting, outbox):
    alerting.apply_poll(a_poll(an_image("enabled-failed")), T0)
    (entry,) = outbox.claim_due(T0, receivers=["ops"], lease=60)
    resend = T0 + timedelta(minutes=1)
    outbox.finish(entry, OK, T0, result=DELIVERED, resend_at=resend)
    (again,) = outbox.claim_due(resend, receivers=["ops"], lease=60)
    assert again.resending
    outbox.finish(again, OK, resend, result=DELIVERED, resend_at=resend + timedelta(minutes=1))

    recovered = an_image("enabled", resend)
    alerting.apply_poll(a_poll(recovered), resend)
    due = outbox.claim_due(resend + timedelta(minutes=5), receivers=["ops"], lease=60)
    assert [(e.status, e.resending) for e in due] == [("resolved", False)]


def test_a_step_back_of_the_wall_clock_brings_retries_and_re_sends_forward_as_much(
    alerting, outbox
):
    alerting.apply_poll(a_poll(an_image("enabled-failed")), T0)
    claimed = {e.receiver: e for e in outbox.claim_due(T0, receivers=RECEIVERS, lease=60)}
    outbox.finish(
        claimed["ops"], DOWN, T0, result=RETRY, next_attempt_at=T0 + timedelta(seconds=30)
    )
    outbox.finish(claimed["pager"], OK, T0, result=DELIVERED, resend_at=T0 + timedelta(minutes=1))
    stepped = T0 - timedelta(hours=2)

    assert outbox.bring_forward(2 * 3600, stepped) == 2

    assert outbox.claim_due(stepped + timedelta(seconds=29), receivers=RECEIVERS, lease=1) == []
    (retry,) = outbox.claim_due(stepped + timedelta(seconds=30), receivers=RECEIVERS, lease=60)
    (resend,) = outbox.claim_due(stepped + timedelta(minutes=1), receivers=RECEIVERS, lease=60)
    assert (retry.receiver, resend.receiver, resend.resending) == ("ops", "pager", True)


def test_receivers_not_asked_for_are_left_alone(alerting, outbox):
    alerting.apply_poll(a_poll(an_image("enabled-failed")), T0)
    assert [e.receiver for e in outbox.claim_due(T0, receivers=["pager"], lease=60)] == ["pager"]
    assert outbox.claim_due(T0, receivers=[], lease=60) == []


def test_released_alerts_are_due_again_at_once(alerting, outbox):
    alerting.apply_poll(a_poll(an_image("enabled-failed")), T0)
    claimed = outbox.claim_due(T0, receivers=RECEIVERS, lease=600)
    outbox.release(claimed)
    assert len(outbox.claim_due(T0, receivers=RECEIVERS, lease=600)) == 2


def test_a_disabled_receiver_stays_disabled_with_its_fingerprint(outbox):
    outbox.disable_receiver("ops", "abc", T0, "answered 410 Gone")
    assert outbox.disabled_receivers() == {"ops": "abc"}
    outbox.enable_receiver("ops")
    assert outbox.disabled_receivers() == {}


@pytest.mark.postgres
def test_two_dispatchers_on_postgresql_never_claim_one_alert_twice(postgres_url):
    engine = create_engine_for(postgres_url, pool_size=8)
    upgrade(engine)
    receivers = [f"r{n}" for n in range(10)]
    store = Store(
        engine, alert_writer(alert_policy([Receiver(r, FAILED_STATES) for r in receivers], 0))
    )
    store.apply_poll(
        a_poll(*(an_image("enabled-failed", image_id=f"ami-{n}") for n in range(20))), T0
    )
    outbox = Outbox(engine)
    claimed: list[list[str]] = [[], []]
    start = threading.Barrier(2)

    def claim(slot: int) -> None:
        start.wait()
        while batch := outbox.claim_due(T0, receivers=receivers, lease=600, limit=7):
            claimed[slot].extend(e.event_id for e in batch)

    threads = [threading.Thread(target=claim, args=(slot,)) for slot in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    engine.dispose()
    assert not set(claimed[0]) & set(claimed[1])
    assert len(claimed[0]) + len(claimed[1]) == 200
