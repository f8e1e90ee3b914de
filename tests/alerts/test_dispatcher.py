"""The dispatcher against real loopback receivers and a real SQLite outbox, on a fake clock."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from monitor.alerts.dispatcher import (
    BACKOFF_CAP,
    GIVE_UP_MIN_ATTEMPTS,
    Dispatcher,
    backoff,
    combine,
    fingerprint,
)
from monitor.alerts.outbox import Outbox, alert_writer
from monitor.alerts.records import DeliveryOutcome
from monitor.alerts.rules import Receiver, alert_policy
from monitor.config.settings import WebhookSettings
from monitor.core.model import FAILED_STATES, FastLaunchImage, PollResult, Scope
from monitor.exposition.current import CurrentState
from monitor.exposition.metrics import build_registry
from monitor.store import Store, create_engine_for, upgrade
from tests.alerts.receivers import Answer
from tests.builders import T0, an_image

SCOPE = Scope("prod", "111111111111", "us-east-1")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def world(tmp_path, receiver):
    engine = create_engine_for(f"sqlite:///{tmp_path / 'alerts.sqlite3'}")
    upgrade(engine)
    clock = Clock()
    hooks = [
        WebhookSettings(name="ops", urls=(receiver.url_for("/hook"),), timeout=2.0),
    ]

    class World:
        def __init__(self) -> None:
            self.clock = clock
            self.receiver = receiver
            self.store = Store(
                engine, alert_writer(alert_policy([Receiver("ops", FAILED_STATES)], 0))
            )
            self.outbox = Outbox(engine)
            self.registry: CollectorRegistry
            self.registry, self.metrics = build_registry(CurrentState())
            self.webhooks = hooks
            self.dispatcher = self.new_dispatcher()

        def new_dispatcher(self, webhooks=None) -> Dispatcher:
            return Dispatcher(
                self.outbox,
                webhooks or self.webhooks,
                self.metrics,
                clock=clock,
                rng=random.Random(7),
            )

        def poll(self, *images: FastLaunchImage) -> None:
            self.store.apply_poll(PollResult(SCOPE, clock.now, 0.1, 1, images), clock.now)

        def deliveries(self, outcome: str) -> float:
            value = self.registry.get_sample_value(
                "fastlaunch_alert_deliveries_total", {"receiver": "ops", "outcome": outcome}
            )
            return value or 0.0

    w = World()
    yield w
    w.dispatcher.close()
    engine.dispose()


def test_a_due_alert_is_delivered_once(world):
    world.poll(an_image("enabled-failed"))
    assert world.dispatcher.dispatch_due() == 1
    assert world.dispatcher.dispatch_due() == 0
    (request,) = world.receiver.requests
    assert request.json()["status"] == "firing"
    assert world.deliveries("delivered") == 1
    assert world.registry.get_sample_value("fastlaunch_alerts_pending", {"receiver": "ops"}) == 0


def test_a_retry_waits_for_its_backoff(world):
    world.receiver.answer(Answer(503))
    world.poll(an_image("enabled-failed"))
    world.dispatcher.dispatch_due()
    assert world.dispatcher.dispatch_due() == 0
    world.clock.advance(1.0)
    assert world.dispatcher.dispatch_due() == 1
    assert [r.json()["event_id"] for r in world.receiver.requests].count(
        world.receiver.requests[0].json()["event_id"]
    ) == 2
    assert world.deliveries("retry") == 1
    assert world.deliveries("delivered") == 1


def test_an_alert_still_failing_after_24_hours_is_given_up(world):
    world.receiver.always(Answer(500))
    world.poll(an_image("enabled-failed"))
    attempts = 0
    while world.clock.now - T0 < timedelta(hours=25):
        attempts += world.dispatcher.dispatch_due()
        world.clock.advance(BACKOFF_CAP)
    (view,) = world.outbox.listing()
    assert view.outcome == "failed"
    assert view.last_error == "HTTP 500"
    assert world.deliveries("failed") == 1
    assert len(view.attempts) == attempts
    assert 24 * 3600 / BACKOFF_CAP <= attempts <= 24 * 3600 / BACKOFF_CAP + 12


def failing_attempts(world, count: int) -> None:
    """Make `count` failed attempts at the alerts due, each as soon as its backoff allows."""
    for _ in range(count):
        world.clock.advance(BACKOFF_CAP)
        assert world.dispatcher.dispatch_due() == 1


def test_a_wall_clock_stepped_a_day_forward_does_not_fail_an_alert_after_two_attempts(world):
    world.receiver.always(Answer(500))
    world.poll(an_image("enabled-failed"))
    failing_attempts(world, 2)

    world.clock.advance(25 * 3600)
    assert world.dispatcher.dispatch_due() == 1

    (view,) = world.outbox.listing()
    assert view.outcome == "pending"
    assert len(view.attempts) == 3
    assert world.deliveries("failed") == 0
    assert world.deliveries("retry") == 3


def test_an_alert_is_given_up_after_24_hours_only_at_its_tenth_attempt(world):
    world.receiver.always(Answer(500))
    world.poll(an_image("enabled-failed"))
    failing_attempts(world, GIVE_UP_MIN_ATTEMPTS - 2)
    world.clock.now = T0 + timedelta(hours=24)

    assert world.dispatcher.dispatch_due() == 1
    (ninth,) = world.outbox.listing()
    assert (ninth.outcome, len(ninth.attempts)) == ("pending", 9)

    failing_attempts(world, 1)
    (tenth,) = world.outbox.listing()
    assert (tenth.outcome, len(tenth.attempts)) == ("failed", 10)
    assert world.deliveries("failed") == 1


def test_a_resolve_follows_its_firing(world):
    world.poll(an_image("enabled-failed"))
    world.clock.advance(60)
    world.poll(an_image("enabled", when=world.clock.now))
    world.dispatcher.dispatch_due()
    world.dispatcher.dispatch_due()
    statuses = [r.json()["status"] for r in world.receiver.requests]
    assert statuses == ["firing", "resolved"]


def test_firing_alertmanager_alerts_are_re_sent_every_minute_until_resolved(world):
    manager = replace(world.webhooks[0], format="alertmanager", urls=(world.receiver.url,))
    dispatcher = world.new_dispatcher([manager])
    world.poll(an_image("enabled-failed"))
    dispatcher.dispatch_due()
    world.clock.advance(59)
    assert dispatcher.dispatch_due() == 0
    world.clock.advance(1)
    assert dispatcher.dispatch_due() == 1
    recovered_at = world.clock.now
    world.poll(an_image("enabled", when=recovered_at))
    world.clock.advance(120)
    dispatcher.dispatch_due()
    world.clock.advance(120)
    assert dispatcher.dispatch_due() == 0
    assert all(r.path == "/api/v2/alerts" for r in world.receiver.requests)
    first, again, resolved = (r.json()[0] for r in world.receiver.requests)
    # Each firing send keeps the alert alive a little longer; the resolve ends it.
    assert first["labels"] == again["labels"] == resolved["labels"]
    assert first["endsAt"] < again["endsAt"]
    assert resolved["endsAt"] == recovered_at.isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )
    dispatcher.close()


def test_a_receiver_disabled_by_410_comes_back_when_its_config_changes(world):
    world.receiver.answer(Answer(410))
    world.poll(an_image("enabled-failed"))
    world.dispatcher.dispatch_due()
    world.poll(an_image("enabled-failed"), an_image("enabled-failed", image_id="ami-2"))
    assert world.dispatcher.dispatch_due() == 0
    assert world.new_dispatcher().dispatch_due() == 0

    changed = replace(world.webhooks[0], headers=(("X-Team", "windows"),))
    assert world.new_dispatcher([changed]).dispatch_due() == 1
    assert [r.json()["image_id"] for r in world.receiver.requests] == ["ami-1", "ami-2"]


def test_a_receiver_disabled_by_410_comes_back_when_its_proxy_changes(world, start_tinyproxy):
    world.receiver.answer(Answer(410))
    world.poll(an_image("enabled-failed"))
    world.dispatcher.dispatch_due()
    world.poll(an_image("enabled-failed"), an_image("enabled-failed", image_id="ami-2"))
    assert world.new_dispatcher().dispatch_due() == 0
    proxy = start_tinyproxy()

    through_proxy = replace(world.webhooks[0], proxies=(proxy.url,))
    assert world.new_dispatcher([through_proxy]).dispatch_due() == 1
    assert [r.json()["image_id"] for r in world.receiver.requests] == ["ami-1", "ami-2"]
    assert world.receiver.requests[-1].header("Via") is not None
    assert proxy.wait_for_request("POST ")


def test_backoff_grows_from_1_second_to_5_minutes_with_jitter():
    rng = random.Random(1)
    assert backoff(0, rng) == 1.0
    for attempts in range(1, 20):
        delays = [backoff(attempts, rng) for _ in range(50)]
        assert all(1.0 <= d <= min(BACKOFF_CAP, 2.0**attempts) for d in delays)
        assert len(set(delays)) > 1
    assert backoff(3, rng, retry_after=120) >= 120


def test_an_alert_for_several_urls_is_delivered_only_when_all_took_it():
    ok = DeliveryOutcome(200, None, 0.1)
    down = DeliveryOutcome(503, None, 0.1, retry_after=5)
    refused = DeliveryOutcome(400, None, 0.1)
    assert combine([ok, ok]).delivered
    assert combine([ok, down]).retry_after == 5
    assert not combine([ok, down]).permanent
    assert combine([refused, ok]).permanent
    assert not combine([refused, down]).permanent


def test_the_fingerprint_changes_with_the_config_and_reveals_no_secret():
    hook = WebhookSettings(name="ops", urls=("https://h.example/token-abc",), secret="key-xyz")
    assert fingerprint(hook) == fingerprint(replace(hook))
    assert fingerprint(hook) != fingerprint(replace(hook, secret="other"))
    assert "token-abc" not in fingerprint(hook)
    assert "key-xyz" not in fingerprint(hook)


@pytest.mark.postgres
def test_two_dispatchers_on_postgresql_never_deliver_one_alert_twice(postgres_url, receiver):
    import threading

    engine = create_engine_for(postgres_url, pool_size=6)
    upgrade(engine)
    store = Store(engine, alert_writer(alert_policy([Receiver("ops", FAILED_STATES)], 0)))
    images = [an_image("enabled-failed", image_id=f"ami-{n:03d}") for n in range(60)]
    store.apply_poll(PollResult(SCOPE, T0, 0.1, 1, tuple(images)), T0)
    hook = WebhookSettings(name="ops", urls=(receiver.url_for("/hook"),), timeout=5.0)
    dispatchers = [
        Dispatcher(Outbox(engine), [hook], build_registry(CurrentState())[1], clock=lambda: T0)
        for _ in range(2)
    ]
    start = threading.Barrier(2)

    def drain(dispatcher: Dispatcher) -> None:
        start.wait()
        while dispatcher.dispatch_due():
            pass

    threads = [threading.Thread(target=drain, args=(d,)) for d in dispatchers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for dispatcher in dispatchers:
        dispatcher.close()
    engine.dispose()
    event_ids = [r.json()["event_id"] for r in receiver.requests]
    assert len(event_ids) == 60
    assert len(set(event_ids)) == 60


def test_the_fingerprint_changes_with_the_proxy_and_reveals_none_of_its_credentials():
    hook = WebhookSettings(name="ops", urls=("https://h.example/x",), proxies=(None,))
    through = replace(hook, proxies=("http://alice:pa55word@proxy:3128",))
    assert fingerprint(through) != fingerprint(hook)
    assert fingerprint(through) != fingerprint(replace(through, proxies=("http://proxy:3128",)))
    assert fingerprint(through) != fingerprint(
        replace(through, proxies=("http://alice:other@proxy:3128",))
    )
    assert "pa55word" not in fingerprint(through)


def test_a_receiver_without_a_proxy_keeps_the_fingerprint_it_had_before_proxies():
    # A new fingerprint would re-enable every receiver disabled by a 410 before the upgrade.
    hook = WebhookSettings(
        name="ops",
        urls=("https://h.example/token-abc",),
        secret="key-xyz",
        headers=(("X-Team", "a"),),
        proxies=(None,),
    )
    assert fingerprint(hook) == "def11f2b125044e61e690dece227fd801d502f160f4ef94537fc28defbae320f"
