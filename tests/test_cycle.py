"""One poll cycle, from the simulator through botocore to a real store and the metrics."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.aws.sessions import PollLimits, RawImage, TargetSource
from monitor.config.settings import TargetSettings
from monitor.core.errors import StoreError
from monitor.core.model import REMOVED, AppliedPoll, PollResult
from monitor.demo.simulator import ManualClock, simulator_for
from monitor.exposition.current import CurrentState
from monitor.exposition.metrics import (
    MAX_PARALLEL_LAUNCHES,
    STATE,
    TARGET_RESOURCES,
    build_registry,
)
from monitor.poll.cycle import (
    MAX_BACKOFF_SECONDS,
    Backoff,
    Cycle,
    CycleResult,
    backoff_seconds,
    poll_processes_advice,
)
from monitor.store import Store, create_engine_for, upgrade
from tests.fakes import (
    ACCOUNT,
    NO_RETRIES,
    REGION,
    START,
    GatedSource,
    Monitor,
    PeakCountingSource,
    monitor,
    role_arn,
    simulated_aws,
    source,
    wait_for,
)

FIRST = "111111111111"
SECOND = "222222222222"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ManualClock]:
    """moto with the simulator, on a manual clock that the cycle reads too."""
    with simulated_aws(monkeypatch, tmp_path) as manual:
        yield manual


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[Store]:
    """A migrated SQLite store, for the tests that are about the cycle, not the database."""
    engine = create_engine_for(sqlite_url)
    upgrade(engine)
    yield Store(engine)
    engine.dispose()


def labels(image_id: str, *, target: str = ACCOUNT, account: str = ACCOUNT) -> dict[str, str]:
    return {"target": target, "account_id": account, "region": REGION, "image_id": image_id}


def scope_labels(*, target: str = ACCOUNT, account: str = ACCOUNT) -> dict[str, str]:
    return {"target": target, "account_id": account, "region": REGION}


def state_of(mon: Monitor, image_id: str, state: str) -> float | None:
    return mon.sample(STATE, **labels(image_id), state=state)


def test_a_first_cycle_records_an_appeared_transition_per_image(
    clock: ManualClock, store: Store
) -> None:
    sim = simulator_for(ACCOUNT, REGION)
    enabled = sim.seed(3, states="enabled")
    (enabling,) = sim.seed(1, states="enabling")

    with monitor(store, [source()], clock=clock) as mon:
        result = mon.cycle.run()

        assert result.transitions == 4
        assert not result.failed
        assert result.summary() == "1 scopes polled, 0 failed, 4 images, 4 transitions"
        recorded = {entry.transition.image_id: entry for entry in store.history()}
        assert sorted(recorded) == sorted([*enabled, enabling])
        assert {entry.transition.previous_state for entry in recorded.values()} == {None}
        assert recorded[enabling].transition.new_state == "enabling"
        assert recorded[enabling].scope.account_id == ACCOUNT
        assert len(store.current_images()) == 4
        assert state_of(mon, enabling, "enabling") == 1.0
        assert state_of(mon, enabling, "enabled") == 0.0
        assert mon.sample(TARGET_RESOURCES, **labels(enabled[0])) is not None
        assert mon.sample("fastlaunch_poll_success", **scope_labels()) == 1.0
        transitions = mon.sample("fastlaunch_transitions_total", **scope_labels(), state="enabled")
        assert transitions == 3.0
        assert mon.cycle.last_success() == {("targets[0]", REGION): START}


def test_an_unchanged_cycle_records_no_transition(clock: ManualClock, store: Store) -> None:
    simulator_for(ACCOUNT, REGION).seed(3)

    with monitor(store, [source()], clock=clock) as mon:
        mon.cycle.run()
        clock.advance(300)
        again = mon.cycle.run()

    assert again.transitions == 0
    assert not again.failed
    assert len(store.history()) == 3
    (poll,) = store.latest_polls()
    assert poll.ok
    assert poll.started_at == START + timedelta(seconds=300)


def test_a_forced_failure_is_recorded_with_its_reason_and_its_time_to_the_millisecond(
    clock: ManualClock, store: Store
) -> None:
    sim = simulator_for(ACCOUNT, REGION)
    image_id, _ = sim.seed(2, states="enabling")

    with monitor(store, [source()], clock=clock) as mon:
        mon.cycle.run()
        failed_at = clock.advance(61.2345)
        sim.force_state(image_id, "enabling-failed", "Client.InvalidLaunchTemplate: not found")
        result = mon.cycle.run()
        failed_at_ms = failed_at.replace(microsecond=failed_at.microsecond // 1000 * 1000)

        (transition,) = result.polls[0].transitions
        assert transition.previous_state == "enabling"
        assert transition.new_state == "enabling-failed"
        assert transition.reason == "Client.InvalidLaunchTemplate: not found"
        assert transition.transition_time == failed_at_ms
        newest = store.history(image_id=image_id, limit=1)[0].transition
        assert newest == transition
        assert newest.transition_time.microsecond == 234000
        assert state_of(mon, image_id, "enabling-failed") == 1.0
        assert mon.sample(
            "fastlaunch_image_state_transition_timestamp_seconds", **labels(image_id)
        ) == pytest.approx(failed_at_ms.timestamp())


@pytest.mark.parametrize(
    ("fault", "code"),
    [("throttle", "RequestLimitExceeded"), ("deny", "UnauthorizedOperation")],
)
def test_a_failed_poll_changes_no_image_and_the_gauges_keep_their_values(
    clock: ManualClock, store: Store, fault: str, code: str
) -> None:
    sim = simulator_for(ACCOUNT, REGION)
    image_id, other = sim.seed(2, states="enabled", target_resource_count=7)

    with monitor(store, [source()], clock=clock) as mon:
        mon.cycle.run()
        before = store.current_images()
        sim.force_state(image_id, "enabled-failed")
        sim.remove(other)
        getattr(sim, fault)()
        clock.advance(60)
        result = mon.cycle.run()

        (failed,) = result.failed
        assert failed.result.error_code == code
        assert failed.transitions == ()
        assert store.current_images() == before
        assert len(store.history()) == 2
        assert not store.latest_polls()[0].ok
        assert mon.sample("fastlaunch_poll_success", **scope_labels()) == 0.0
        errors = mon.sample("fastlaunch_poll_errors_total", **scope_labels(), error=code)
        assert errors == 1.0
        assert state_of(mon, image_id, "enabled") == 1.0
        assert mon.sample(TARGET_RESOURCES, **labels(other)) == 7.0
        assert mon.sample(MAX_PARALLEL_LAUNCHES, **labels(other)) == 6.0
        assert mon.cycle.last_success() == {("targets[0]", REGION): START}


def test_a_failing_target_does_not_stop_a_healthy_one_in_the_same_cycle(
    clock: ManualClock, sqlite_store: Store
) -> None:
    simulator_for(FIRST, REGION).deny()
    healthy = simulator_for(SECOND, REGION).seed(2)
    failing = source(TargetSettings(name="failing", role_arn=role_arn(FIRST)), index=0)
    working = source(TargetSettings(name="working", role_arn=role_arn(SECOND)), index=1)

    with monitor(sqlite_store, [failing, working], clock=clock) as mon:
        result = mon.cycle.run()

        assert [poll.result.ok for poll in result.polls] == [False, True]
        assert sorted(s.image.image_id for s in sqlite_store.current_images()) == sorted(healthy)
        working_scope = scope_labels(target="working", account=SECOND)
        assert mon.sample("fastlaunch_poll_success", **working_scope) == 1.0
        failing_scope = scope_labels(target="failing", account=FIRST)
        assert mon.sample("fastlaunch_poll_success", **failing_scope) == 0.0


def test_a_slow_target_does_not_hold_up_the_others(clock: ManualClock, sqlite_store: Store) -> None:
    simulator_for(FIRST, REGION).seed(1)
    quick = simulator_for(SECOND, REGION).seed(2)
    slow = GatedSource(0, TargetSettings(name="slow", role_arn=role_arn(FIRST)), NO_RETRIES)
    fast = source(TargetSettings(name="fast", role_arn=role_arn(SECOND)), index=1)

    with monitor(sqlite_store, [slow, fast], clock=clock, max_concurrency=2) as mon:
        running = threading.Thread(target=mon.cycle.run)
        running.start()
        try:
            assert slow.entered.wait(timeout=10)
            stored = wait_for(sqlite_store.current_images, what="the fast target's images")
            fast_images = sorted(s.image.image_id for s in stored)
            still_running = running.is_alive()
        finally:
            slow.release()
            running.join(timeout=10)

    assert fast_images == sorted(quick)
    assert still_running


def test_an_image_disabled_and_gone_is_recorded_as_removed_and_its_series_dropped(
    clock: ManualClock, store: Store
) -> None:
    sim = simulator_for(ACCOUNT, REGION)
    leaving, staying = sim.seed(2)

    with monitor(store, [source()], clock=clock) as mon:
        mon.cycle.run()
        sim.disable(leaving)
        mon.cycle.run()
        disabling = state_of(mon, leaving, "disabling")
        clock.advance(sim.timings.disabling_seconds + 1)
        result = mon.cycle.run()

        assert disabling == 1.0
        (removal,) = result.polls[0].transitions
        assert (removal.image_id, removal.previous_state) == (leaving, "disabling")
        assert removal.new_state == REMOVED
        assert [entry.transition.new_state for entry in store.history(image_id=leaving)] == [
            REMOVED,
            "disabling",
            "enabled",
        ]
        assert [s.image.image_id for s in store.current_images()] == [staying]
        assert state_of(mon, leaving, "disabling") is None
        assert mon.sample(TARGET_RESOURCES, **labels(leaving)) is None
        assert state_of(mon, staying, "enabled") == 1.0


def test_two_targets_reaching_one_account_and_region_the_second_fails_with_duplicate_scope(
    clock: ManualClock, sqlite_store: Store
) -> None:
    images = simulator_for(FIRST, REGION).seed(2)
    first = source(TargetSettings(name="first", role_arn=role_arn(FIRST)), index=0)
    again = TargetSettings(name="again", role_arn=f"arn:aws:iam::{FIRST}:role/Other")
    second = source(again, index=1)

    with monitor(sqlite_store, [first, second], clock=clock) as mon:
        cycles = [mon.cycle.run(), mon.cycle.run()]

    for result in cycles:
        owner, duplicate = result.polls
        assert owner.result.ok
        assert duplicate.result.error_code == "DuplicateScope"
        assert "first" in (duplicate.result.error_message or "")
    stored = sqlite_store.current_images()
    assert sorted(s.image.image_id for s in stored) == sorted(images)
    assert {s.scope.target for s in stored} == {"first"}
    assert len(sqlite_store.history()) == 2


class LateSource(GatedSource):
    """A target whose poll waits at the gate before it even learns its account."""

    def account_id(self) -> str:
        self.pass_gate()
        return super().account_id()


def test_the_first_configured_target_owns_a_shared_scope_even_when_it_comes_late(
    clock: ManualClock, sqlite_store: Store
) -> None:
    simulator_for(FIRST, REGION).seed(1)
    late = LateSource(0, TargetSettings(name="first", role_arn=role_arn(FIRST)), NO_RETRIES)
    again = TargetSettings(name="again", role_arn=f"arn:aws:iam::{FIRST}:role/Other")

    with monitor(sqlite_store, [late, source(again, index=1)], clock=clock) as mon:
        running = threading.Thread(target=mon.cycle.run)
        running.start()
        try:
            assert late.entered.wait(timeout=10)
            (refused,) = wait_for(sqlite_store.latest_polls, what="the second target's poll")
        finally:
            late.release()
            running.join(timeout=10)

    assert refused.scope.target == "again"
    assert refused.error_code == "DuplicateScope"
    assert {poll.scope.target: poll.ok for poll in sqlite_store.latest_polls()} == {
        "first": True,
        "again": False,
    }


def test_max_concurrency_bounds_the_scopes_polled_at_once(
    clock: ManualClock, sqlite_store: Store
) -> None:
    regions = ("us-east-1", "us-west-2", "eu-west-1", "ap-southeast-2")
    for region in regions:
        simulator_for(ACCOUNT, region).latency(0.2)
    target = PeakCountingSource(0, TargetSettings(regions=regions), NO_RETRIES)
    target.account_id()

    with monitor(sqlite_store, [target], clock=clock, max_concurrency=2) as mon:
        started = time.monotonic()
        result = mon.cycle.run()
        took = time.monotonic() - started

    assert len(result.polls) == 4
    assert not result.failed
    assert target.peak == 2
    assert took >= 0.4


def test_an_unknown_state_is_kept_and_warned_about_once(
    clock: ManualClock, sqlite_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    sim = simulator_for(ACCOUNT, REGION)
    odd = sim.seed(2, states="enabled-paused")
    caplog.set_level(logging.WARNING, logger="monitor")

    with monitor(sqlite_store, [source()], clock=clock) as mon:
        mon.cycle.run()
        mon.cycle.run()

        assert state_of(mon, odd[0], "enabled-paused") == 1.0
    warnings = [r for r in caplog.records if "enabled-paused" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert {s.image.state for s in sqlite_store.current_images()} == {"enabled-paused"}


def test_a_stopped_cycle_polls_nothing(clock: ManualClock, sqlite_store: Store) -> None:
    simulator_for(ACCOUNT, REGION).seed(1)
    stop = threading.Event()
    stop.set()

    with monitor(sqlite_store, [source()], clock=clock, stop=stop) as mon:
        result = mon.cycle.run()

    assert result.polls == ()
    assert sqlite_store.latest_polls() == []


def test_closing_the_cycle_drops_the_scopes_not_started_and_run_returns_the_rest(
    clock: ManualClock, sqlite_store: Store
) -> None:
    simulator_for(FIRST, REGION).seed(1)
    first = GatedSource(0, TargetSettings(name="first", role_arn=role_arn(FIRST)), NO_RETRIES)
    never = source(TargetSettings(name="never", role_arn=role_arn(SECOND)), index=1)
    results: list[CycleResult] = []

    with monitor(sqlite_store, [first, never], clock=clock, max_concurrency=1) as mon:
        running = threading.Thread(target=lambda: results.append(mon.cycle.run()))
        running.start()
        try:
            assert first.entered.wait(timeout=10)
            mon.cycle.close()
        finally:
            first.release()
            running.join(timeout=10)

    (result,) = results
    assert [poll.result.scope.target for poll in result.polls] == ["first"]
    assert [poll.scope.target for poll in sqlite_store.latest_polls()] == ["first"]


def test_closing_a_cycle_releases_what_its_sources_hold_once(sqlite_store: Store) -> None:
    released: list[str] = []
    cycle = Cycle(
        [],
        sqlite_store,
        CurrentState(),
        build_registry(CurrentState())[1],
        max_concurrency=1,
        on_close=lambda: released.append("poll processes"),
    )

    cycle.close()
    cycle.close()

    assert released == ["poll processes"]


class BrokenSource(TargetSource):
    """A target whose describe hits a bug rather than an AWS error."""

    def describe(self, region: str, limits: PollLimits | None = None) -> tuple[list[RawImage], int]:
        raise KeyError("a bug")


def test_a_bug_in_one_scope_is_its_failed_poll_and_the_others_carry_on(
    clock: ManualClock, sqlite_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    healthy = simulator_for(SECOND, REGION).seed(1)
    broken = BrokenSource(0, TargetSettings(name="broken", role_arn=role_arn(FIRST)), NO_RETRIES)
    working = source(TargetSettings(name="working", role_arn=role_arn(SECOND)), index=1)

    with monitor(sqlite_store, [broken, working], clock=clock) as mon:
        result = mon.cycle.run()

        failed, succeeded = result.polls
        assert failed.result.error_code == "KeyError"
        assert succeeded.result.ok
        assert [s.image.image_id for s in sqlite_store.current_images()] == healthy
        broken_scope = scope_labels(target="broken", account=FIRST)
        assert mon.sample("fastlaunch_poll_success", **broken_scope) == 0.0
    assert any(r.exc_info for r in caplog.records if "broken" in r.getMessage())


#: The seconds between two cycles in the backoff tests.
INTERVAL = 60.0


@contextmanager
def scheduled_monitor(
    store: Store, sources: list[TargetSource], *, clock: ManualClock
) -> Iterator[Monitor]:
    """A `Monitor` whose cycle knows it runs every `INTERVAL`: failing scopes back off."""
    with monitor(store, sources, clock=clock, interval=INTERVAL) as scheduled:
        yield scheduled


def failing_and_healthy() -> tuple[TargetSource, TargetSource]:
    """A target whose describes are denied (account `FIRST`) and a working one (`SECOND`)."""
    simulator_for(FIRST, REGION).deny()
    simulator_for(SECOND, REGION).seed(1)
    failing = source(TargetSettings(name="failing", role_arn=role_arn(FIRST)), index=0)
    healthy = source(TargetSettings(name="healthy", role_arn=role_arn(SECOND)), index=1)
    return failing, healthy


def polled_targets(result: CycleResult) -> list[str]:
    return [poll.result.scope.target for poll in result.polls]


def test_the_backoff_doubles_from_one_interval_up_to_an_hour() -> None:
    assert [backoff_seconds(300, n) for n in range(1, 7)] == [300, 600, 1200, 2400, 3600, 3600]
    assert backoff_seconds(300, 100_000) == MAX_BACKOFF_SECONDS


def test_a_failing_scope_skips_one_then_three_then_seven_cycles_despite_jitter() -> None:
    backoff = Backoff(INTERVAL)
    # The scheduler starts each cycle up to ten seconds late, at random.
    late = [0, 9.9, 0.5, 10, 0, 3, 9, 0, 10, 1, 7, 0, 5, 10, 0, 2, 9]
    polled = []
    for number, lateness in enumerate(late):
        started = number * INTERVAL + lateness
        if backoff.due(("failing", REGION), started):
            polled.append(number)
            backoff.failed(("failing", REGION), started)

    assert polled == [0, 1, 3, 7, 15]


def test_a_failing_scope_is_polled_at_least_once_an_hour() -> None:
    backoff = Backoff(300)
    polled: list[float] = []
    for number in range(12 * 10):
        started = number * 300.0
        if backoff.due(("failing", REGION), started):
            polled.append(started)
            backoff.failed(("failing", REGION), started)

    gaps = [later - earlier for earlier, later in itertools.pairwise(polled)]
    assert gaps[:4] == [300, 600, 1200, 2400]
    assert set(gaps[4:]) == {MAX_BACKOFF_SECONDS}


def test_with_an_interval_of_an_hour_a_failing_scope_is_never_skipped() -> None:
    backoff = Backoff(3600)
    started = 0.0
    for _ in range(5):
        failing, starts_backing_off = backoff.failed(("failing", REGION), started)
        started += 3600

        assert backoff.due(("failing", REGION), started)
        assert not starts_backing_off
        assert not failing.backing_off


def test_a_failing_scope_backs_off_while_a_healthy_one_is_polled_every_cycle(
    clock: ManualClock, sqlite_store: Store
) -> None:
    failing, healthy = failing_and_healthy()
    denied = simulator_for(FIRST, REGION)
    polled: list[int] = []
    healthy_polls = 0

    with scheduled_monitor(sqlite_store, [failing, healthy], clock=clock) as mon:
        for number in range(21):
            if number == 15:
                denied.allow()
            if number == 17:
                denied.deny()
            result = mon.cycle.run()
            if "failing" in polled_targets(result):
                polled.append(number)
            else:
                assert result.skipped == (("failing", REGION),)
                assert result.summary().endswith(", 1 backing off")
            healthy_polls += "healthy" in polled_targets(result)
            clock.advance(INTERVAL)

    # Failed at 0, 1, 3 and 7: skipped 1, 3, then 7 cycles; 15 succeeded, so 16 is polled;
    # 17 fails afresh and 18 is still polled; 18 fails too and 19 is skipped.
    assert polled == [0, 1, 3, 7, 15, 16, 17, 18, 20]
    assert denied.calls == len(polled)
    assert healthy_polls == 21


def test_a_skipped_scope_records_nothing_and_keeps_its_metrics(
    clock: ManualClock, sqlite_store: Store
) -> None:
    failing, healthy = failing_and_healthy()
    failing_scope = scope_labels(target="failing", account=FIRST)

    with scheduled_monitor(sqlite_store, [failing, healthy], clock=clock) as mon:
        mon.cycle.run()
        clock.advance(INTERVAL)
        mon.cycle.run()
        clock.advance(INTERVAL)
        skipping = mon.cycle.run()

        assert polled_targets(skipping) == ["healthy"]
        assert mon.sample("fastlaunch_poll_success", **failing_scope) == 0.0
        errors = mon.sample(
            "fastlaunch_poll_errors_total", **failing_scope, error="UnauthorizedOperation"
        )
        assert errors == 2.0
        assert mon.sample("fastlaunch_poll_duration_seconds_count", **failing_scope) == 2.0
    latest = {poll.scope.target: poll.started_at for poll in sqlite_store.latest_polls()}
    assert latest == {
        "failing": START + timedelta(seconds=INTERVAL),
        "healthy": START + timedelta(seconds=2 * INTERVAL),
    }
    assert ("failing", REGION) not in mon.cycle.last_success()


def test_backing_off_and_recovering_are_each_logged_once(
    clock: ManualClock, sqlite_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    failing, healthy = failing_and_healthy()
    caplog.set_level(logging.INFO, logger="monitor.poll.cycle")

    with scheduled_monitor(sqlite_store, [failing, healthy], clock=clock) as mon:
        for number in range(9):
            if number == 7:
                simulator_for(FIRST, REGION).allow()
            mon.cycle.run()
            clock.advance(INTERVAL)

    backing_off = [r for r in caplog.records if "backing off" in r.getMessage()]
    recovered = [r for r in caplog.records if "recovered" in r.getMessage()]
    assert [r.levelno for r in backing_off] == [logging.WARNING]
    assert "failing/us-east-1 failed 2 polls in a row" in backing_off[0].getMessage()
    # Due two intervals after the second failure's cycle, less the half interval for jitter.
    due = START + timedelta(seconds=INTERVAL + 2 * INTERVAL - INTERVAL / 2)
    assert f"{due:%Y-%m-%dT%H:%M:%S}" in backing_off[0].getMessage()
    assert [r.levelno for r in recovered] == [logging.INFO]
    # Polled and failed in cycles 0, 1 and 3; cycle 7 succeeded.
    assert "after 3 failed polls" in recovered[0].getMessage()


class UnwritableStore(Store):
    """A store whose database is down: every poll fails to be recorded."""

    def apply_poll(self, result: PollResult, observed_at: datetime) -> AppliedPoll:
        raise StoreError("the database is down")


def test_polls_that_only_failed_to_be_stored_do_not_back_a_scope_off(
    clock: ManualClock, sqlite_url: str
) -> None:
    simulator_for(ACCOUNT, REGION).seed(1)
    engine = create_engine_for(sqlite_url)
    upgrade(engine)
    results = []

    with scheduled_monitor(UnwritableStore(engine), [source()], clock=clock) as mon:
        for _ in range(4):
            results.append(mon.cycle.run())
            clock.advance(INTERVAL)
    engine.dispose()

    assert [len(result.failed) for result in results] == [1, 1, 1, 1]
    assert [result.skipped for result in results] == [(), (), (), ()]


def test_without_an_interval_every_scope_is_polled_every_cycle(
    clock: ManualClock, sqlite_store: Store
) -> None:
    failing, healthy = failing_and_healthy()

    with monitor(sqlite_store, [failing, healthy], clock=clock) as mon:
        results = [mon.cycle.run() for _ in range(4)]

    assert [polled_targets(result) for result in results] == [["failing", "healthy"]] * 4


def test_a_cycle_that_kept_one_core_busy_on_a_larger_machine_advises_poll_processes() -> None:
    advice = poll_processes_advice(2.5, 2.4, poll_processes=0, cores=4)

    assert advice is not None
    assert "2.4 s of CPU in 2.5 s" in advice
    assert "poll_processes = 4" in advice


@pytest.mark.parametrize(
    ("wall", "cpu", "poll_processes", "cores"),
    [
        (2.5, 1.5, 0, 4),  # waiting for AWS, not computing
        (0.5, 0.5, 0, 4),  # too short a cycle to tell
        (2.5, 2.4, 2, 4),  # already in poll processes
        (2.5, 2.4, 0, 1),  # no other core to use
    ],
)
def test_no_advice_when_more_processes_would_not_help(
    wall: float, cpu: float, poll_processes: int, cores: int
) -> None:
    assert poll_processes_advice(wall, cpu, poll_processes=poll_processes, cores=cores) is None


def test_after_throttling_and_garbage_the_scope_is_polled_again_at_the_next_cycle(
    clock: ManualClock, sqlite_store: Store
) -> None:
    # Four polls throttled past their retries, three answered with garbage: each could pass by
    # itself, so none of them may keep the next cycle from polling the scope.
    sim = simulator_for(ACCOUNT, REGION)
    sim.seed(1)
    sim.throttle(4)

    outcomes: list[str | None] = []
    with scheduled_monitor(sqlite_store, [source()], clock=clock) as mon:
        for number in range(8):
            if number == 4:
                sim.garbage(3)
            result = mon.cycle.run()
            assert result.skipped == ()
            (poll,) = result.polls
            outcomes.append(poll.result.error_code)
            clock.advance(INTERVAL)

    assert outcomes == [
        *["RequestLimitExceeded"] * 4,
        *["InvalidResponse"] * 3,
        None,
    ]


def test_a_poll_that_answers_past_its_deadline_is_recorded_as_failed_and_its_answer_dropped(
    clock: ManualClock, sqlite_store: Store
) -> None:
    sim = simulator_for(FIRST, REGION)
    first_image = sim.seed(1)[0]
    hung = GatedSource(0, TargetSettings(name="hung", role_arn=role_arn(FIRST)), NO_RETRIES)
    hung.release()
    current = CurrentState()
    registry, metrics = build_registry(current)
    metrics.set_leader(True)
    cycle = Cycle(
        [hung],
        sqlite_store,
        current,
        metrics,
        max_concurrency=2,
        clock=clock.now,
        interval=60,
        poll_timeout=0.5,
    )
    try:
        cycle.run()
        hung.hold()
        sim.remove(first_image)
        started = time.monotonic()
        result = cycle.run()
        waited = time.monotonic() - started
        assert result.polls == ()
        assert result.in_flight == (("hung", REGION),)
        assert waited < 0.5 + 1.0 + 1.0
        # A cycle while the hung poll still runs does not poll that scope a second time.
        assert cycle.run(wait=0.1).in_flight == (("hung", REGION),)
        hung.release()
        assert cycle.wait_idle(10)
    finally:
        cycle.close()
    (latest,) = sqlite_store.latest_polls()
    assert latest.error_code == "PollDeadlineExceeded"
    # The answer that came too late was dropped: the image was not recorded as removed.
    assert [i.image.image_id for i in sqlite_store.current_images()] == [first_image]
    assert (
        registry.get_sample_value(
            "fastlaunch_poll_errors_total",
            {
                "target": "hung",
                "account_id": FIRST,
                "region": REGION,
                "error": "PollDeadlineExceeded",
            },
        )
        == 1.0
    )


def test_one_scope_paging_for_ever_fails_by_its_deadline_and_never_delays_the_others(
    clock: ManualClock, sqlite_store: Store
) -> None:
    endless = simulator_for(FIRST, REGION)
    endless.endless_pages()
    endless.latency(0.02)
    simulator_for(SECOND, REGION).seed(1)
    sources = [
        source(TargetSettings(name="endless", role_arn=role_arn(FIRST)), index=0),
        source(TargetSettings(name="healthy", role_arn=role_arn(SECOND)), index=1),
    ]
    current = CurrentState()
    _, metrics = build_registry(current)
    cycle = Cycle(
        sources,
        sqlite_store,
        current,
        metrics,
        max_concurrency=4,
        clock=clock.now,
        interval=60,
        poll_timeout=1.0,
    )
    try:
        first = cycle.run(wait=0.2)
        assert polled_targets(first) == ["healthy"]
        assert first.in_flight == (("endless", REGION),)
        clock.advance(60)
        second = cycle.run(wait=0.2)
        assert polled_targets(second) == ["healthy"]
        assert cycle.wait_idle(10)
        clock.advance(60)
        third = cycle.run()
    finally:
        cycle.close()
    assert sorted(polled_targets(third)) == ["endless", "healthy"]
    endless_poll = next(p for p in third.polls if p.result.scope.target == "endless")
    assert endless_poll.result.error_code == "PollDeadlineExceeded"
    codes = [p.error_code for p in sqlite_store.latest_polls()]
    assert sorted(codes, key=str) == sorted(["PollDeadlineExceeded", None], key=str)


def test_an_html_page_answered_200_fails_the_poll_and_removes_no_image(
    clock: ManualClock, sqlite_store: Store
) -> None:
    sim = simulator_for(ACCOUNT, REGION)
    seeded = sim.seed(2)
    with monitor(sqlite_store, [source()], clock=clock) as mon:
        mon.cycle.run()
        sim.foreign_page(1)
        clock.advance(60)
        (poll,) = mon.cycle.run().polls

    assert poll.result.error_code == "InvalidResponse"
    assert poll.transitions == ()
    assert sorted(i.image.image_id for i in sqlite_store.current_images()) == sorted(seeded)
    assert all(e.transition.new_state != REMOVED for e in sqlite_store.history())


def test_a_cycle_counts_a_change_from_its_state_transition_time_to_the_commit_that_recorded_it(
    clock: ManualClock, sqlite_store: Store
) -> None:
    sim = simulator_for(ACCOUNT, REGION)
    image_id, _ = sim.seed(2, states="enabled")
    delays = {**scope_labels(), "trigger": "interval"}

    with monitor(sqlite_store, [source()], clock=clock) as mon:
        mon.cycle.run()
        after_first_sights = mon.sample("fastlaunch_detection_delay_seconds_count", **delays)
        clock.advance(30)
        sim.force_state(image_id, "enabled-failed")
        clock.advance(200)
        mon.cycle.run()

        assert after_first_sights is None
        assert mon.sample("fastlaunch_detection_delay_seconds_count", **delays) == 1
        assert mon.sample("fastlaunch_detection_delay_seconds_sum", **delays) == 200
        assert mon.sample("fastlaunch_detection_delay_seconds_bucket", **delays, le="120.0") == 0
        assert mon.sample("fastlaunch_detection_delay_seconds_bucket", **delays, le="300.0") == 1


def test_an_out_of_range_field_is_dropped_and_the_other_images_failure_still_recorded(
    clock: ManualClock, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    sim = simulator_for(ACCOUNT, REGION)
    (huge,) = sim.seed(1, target_resource_count=2**31)
    clock.set(datetime(9999, 12, 31, tzinfo=UTC))
    (far,) = sim.seed(1)
    clock.set(START)
    (failing,) = sim.seed(1)
    caplog.set_level(logging.WARNING, logger="monitor.poll.cycle")

    with monitor(store, [source()], clock=clock) as mon:
        mon.cycle.run()
        sim.force_state(failing, "enabled-failed", "Server.InsufficientInstanceCapacity")
        clock.advance(60)
        (poll,) = mon.cycle.run().polls

    assert poll.result.ok
    assert [(t.image_id, t.new_state) for t in poll.transitions] == [(failing, "enabled-failed")]
    recorded = {i.image.image_id: i.image for i in store.current_images()}
    assert recorded[huge].target_resource_count is None
    assert recorded[far].state_transition_time is None
    assert recorded[failing].state == "enabled-failed"
    dropped = [
        r.getMessage() for r in caplog.records if "not a value an image can have" in r.getMessage()
    ]
    assert len(dropped) == 2  # once per image and field, not at every poll
    assert any("TargetResourceCount 2147483648" in m for m in dropped)


class RefusingStore(Store):
    """A store whose database answers but refuses every successful poll's data."""

    def apply_poll(self, result: PollResult, observed_at: datetime) -> AppliedPoll:
        if result.ok:
            raise StoreError("integer out of range", refused=True)
        return super().apply_poll(result, observed_at)


def test_a_poll_the_database_refused_is_recorded_as_failed(
    clock: ManualClock, sqlite_url: str
) -> None:
    simulator_for(ACCOUNT, REGION).seed(1)
    engine = create_engine_for(sqlite_url)
    upgrade(engine)
    refusing = RefusingStore(engine)

    with monitor(refusing, [source()], clock=clock) as mon:
        (poll,) = mon.cycle.run().polls

    (latest,) = refusing.latest_polls()
    engine.dispose()
    assert poll.result.error_code == "StoreError"
    assert (latest.error_code, latest.error_message) == ("StoreError", "integer out of range")
