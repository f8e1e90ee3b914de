"""The per-scope series: what they count, and that they print what prometheus_client's own
Gauge, Counter and Histogram would."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from monitor.core.model import REMOVED, FastLaunchImage, PollResult, Scope, Transition
from monitor.exposition.current import CurrentState
from monitor.exposition.metrics import build_registry, exposition
from monitor.exposition.scope_metrics import DETECTION_DELAY_BUCKETS, POLL_DURATION_BUCKETS
from tests.builders import an_image

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
STARTED = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
SCOPE = ("target", "account_id", "region")


class Reference:
    """The same series made with prometheus_client's own metric classes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.success = Gauge("fastlaunch_poll_success", "h", SCOPE, registry=r)
        self.duration = Histogram(
            "fastlaunch_poll_duration_seconds",
            "h",
            SCOPE,
            buckets=POLL_DURATION_BUCKETS,
            registry=r,
        )
        self.errors = Counter("fastlaunch_poll_errors", "h", (*SCOPE, "error"), registry=r)
        self.last = Gauge(
            "fastlaunch_last_successful_poll_timestamp_seconds", "h", SCOPE, registry=r
        )
        self.transitions = Counter("fastlaunch_transitions", "h", (*SCOPE, "state"), registry=r)
        self.delays = Histogram(
            "fastlaunch_detection_delay_seconds",
            "h",
            (*SCOPE, "trigger"),
            buckets=DETECTION_DELAY_BUCKETS,
            registry=r,
        )

    def poll_finished(
        self, result: PollResult, transitions: list[Transition], committed_at: datetime
    ) -> None:
        scope = (result.scope.target, result.scope.account_id, result.scope.region)
        self.duration.labels(*scope).observe(result.duration_seconds)
        if result.ok:
            self.success.labels(*scope).set(1)
            self.last.labels(*scope).set(result.started_at.timestamp() + result.duration_seconds)
        else:
            self.success.labels(*scope).set(0)
            self.errors.labels(*scope, result.error_code or "Unknown").inc()
        listed = {image.image_id: image for image in result.images or ()}
        for transition in transitions:
            self.transitions.labels(*scope, transition.new_state).inc()
            image = listed.get(transition.image_id)
            if (
                transition.previous_state is None
                or image is None
                or image.state_transition_time is None
            ):
                continue
            delay = (committed_at - image.state_transition_time).total_seconds()
            self.delays.labels(*scope, "interval").observe(max(delay, 0.0))


def poll_samples(
    text: str, parse: Callable[[str], Iterable[Metric]] = text_string_to_metric_families
) -> dict[str, list[tuple[str, tuple[tuple[str, str], ...], float]]]:
    """The poll families' samples by family, sorted, without `_created` (not exported)."""
    return {
        family.name: sorted(
            (sample.name, tuple(sorted(sample.labels.items())), sample.value)
            for sample in family.samples
            if not sample.name.endswith("_created")
        )
        for family in parse(text)
        if family.name.startswith(
            ("fastlaunch_poll", "fastlaunch_last", "fastlaunch_transitions", "fastlaunch_detection")
        )
        and not family.name.endswith("_created")
    }


label_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8)
scopes = st.lists(
    st.builds(Scope, target=label_text, account_id=label_text, region=label_text),
    min_size=1,
    max_size=3,
    unique=True,
)
# Durations right on bucket bounds too: a bound is inclusive.
durations = st.sampled_from(POLL_DURATION_BUCKETS) | st.floats(0, 1000, allow_nan=False)
# Delays on bucket bounds, negative ones (clock skew) and none (no StateTransitionTime) too.
delays = st.none() | st.sampled_from(DETECTION_DELAY_BUCKETS) | st.floats(-100, 10_000)
moves = st.tuples(
    st.sampled_from([None, "enabling"]),
    st.sampled_from(["enabled", "enabling-failed", 'we"ird', REMOVED]),
    delays,
)
polls = st.tuples(
    st.integers(0, 2),
    durations,
    st.none() | st.sampled_from(["AccessDenied", "Throttling", 'odd"code\\']),
    st.lists(moves, max_size=3),
)


def changed(
    moves: list[tuple[str | None, str, float | None]], committed_at: datetime
) -> tuple[list[Transition], tuple[FastLaunchImage, ...]]:
    """A poll's transitions and listed images: each move's image changed `delay` seconds before
    `committed_at`, or at a time AWS did not give."""
    transitions, images = [], []
    for n, (before, after, delay) in enumerate(moves):
        happened = None if delay is None else committed_at - timedelta(seconds=delay)
        transitions.append(Transition(f"ami-{n}", before, after, happened or committed_at, ""))
        if after != REMOVED:
            images.append(an_image(after, happened, image_id=f"ami-{n}"))
    return transitions, tuple(images)


@settings(max_examples=60, deadline=None)
@given(scopes=scopes, steps=st.lists(polls, min_size=1, max_size=12))
def test_any_polls_export_the_samples_prometheus_clients_own_metrics_would(scopes, steps):
    registry, metrics = build_registry(CurrentState())
    reference = Reference()
    for n, (which, duration, error, poll_moves) in enumerate(steps):
        committed_at = STARTED + timedelta(seconds=n)
        transitions, images = changed(poll_moves, committed_at)
        if error:
            transitions, images = [], ()
        result = PollResult(
            scope=scopes[which % len(scopes)],
            started_at=committed_at,
            duration_seconds=duration,
            pages=1,
            images=None if error else images,
            error_code=error,
            error_message="boom" if error else None,
        )
        metrics.poll_finished(result, transitions, committed_at)
        reference.poll_finished(result, transitions, committed_at)

    ours = exposition(registry, None).text()
    assert ours == generate_latest(registry)
    assert poll_samples(ours.decode()) == poll_samples(generate_latest(reference.registry).decode())
    ours = exposition(registry, OPENMETRICS).text()
    assert ours == openmetrics_latest(registry)
    theirs = openmetrics_latest(reference.registry).decode()
    assert poll_samples(ours.decode(), openmetrics_families) == poll_samples(
        theirs, openmetrics_families
    )


def test_forgotten_scopes_export_nothing_and_the_others_stay():
    registry, metrics = build_registry(CurrentState())
    kept, dropped = Scope("a", "1", "eu-west-1"), Scope("b", "2", "eu-west-1")
    for scope in (kept, dropped):
        metrics.poll_finished(
            PollResult(scope, STARTED, 0.3, 1, (), None, None),
            [Transition("ami-1", None, "enabled", STARTED, "")],
        )

    metrics.forget_scopes([dropped])

    text = exposition(registry, None).text().decode()
    assert 'target="b"' not in text
    assert (
        registry.get_sample_value(
            "fastlaunch_transitions_total",
            {"target": "a", "account_id": "1", "region": "eu-west-1", "state": "enabled"},
        )
        == 1
    )


# --- fastlaunch_detection_delay_seconds ----------------------------------------------------

PROD = Scope("prod", "111111111111", "eu-west-1")
COMMITTED = STARTED + timedelta(minutes=5)


def scope_of(scope: Scope) -> dict[str, str]:
    return {"target": scope.target, "account_id": scope.account_id, "region": scope.region}


def delay_value(registry: CollectorRegistry, suffix: str, **extra: str) -> float | None:
    labels = {**scope_of(PROD), "trigger": "interval", **extra}
    return registry.get_sample_value(f"fastlaunch_detection_delay_seconds{suffix}", labels)


def poll_of(*images: FastLaunchImage) -> PollResult:
    return PollResult(PROD, STARTED, 0.3, 1, images, None, None)


def change(image: FastLaunchImage, before: str | None = "enabling") -> Transition:
    when = image.state_transition_time or COMMITTED
    return Transition(image.image_id, before, image.state, when, "")


def test_a_change_of_a_listed_image_observes_the_seconds_from_its_transition_to_the_commit():
    registry, metrics = build_registry(CurrentState())
    failed = an_image("enabling-failed", COMMITTED - timedelta(seconds=42.5))

    metrics.poll_finished(poll_of(failed), [change(failed)], COMMITTED)

    assert delay_value(registry, "_count") == 1
    assert delay_value(registry, "_sum") == 42.5
    assert delay_value(registry, "_bucket", le="30.0") == 0
    assert delay_value(registry, "_bucket", le="60.0") == 1
    assert delay_value(registry, "_bucket", le="+Inf") == 1


def test_first_sights_removals_and_changes_without_a_time_observe_no_delay():
    registry, metrics = build_registry(CurrentState())
    seen = an_image("enabled", COMMITTED - timedelta(days=30), image_id="ami-new")
    undated = an_image("enabled-failed", None, image_id="ami-undated")
    gone = Transition("ami-gone", "enabled", REMOVED, COMMITTED, "no longer listed")

    metrics.poll_finished(
        poll_of(seen, undated), [change(seen, None), change(undated, "enabled"), gone], COMMITTED
    )

    assert delay_value(registry, "_count") is None
    text = exposition(registry, None).text().decode()
    assert "fastlaunch_detection_delay_seconds_bucket" not in text
    # The transitions themselves are still counted.
    assert (
        registry.get_sample_value(
            "fastlaunch_transitions_total", {**scope_of(PROD), "state": "enabled"}
        )
        == 1
    )


def test_a_delay_on_a_bucket_bound_counts_in_that_bucket_and_a_longer_one_only_in_inf():
    registry, metrics = build_registry(CurrentState())
    on_bound = an_image("enabled", COMMITTED - timedelta(seconds=300), image_id="ami-1")
    later = an_image("enabled", COMMITTED - timedelta(hours=3), image_id="ami-2")

    metrics.poll_finished(poll_of(on_bound, later), [change(on_bound), change(later)], COMMITTED)

    assert delay_value(registry, "_bucket", le="120.0") == 0
    assert delay_value(registry, "_bucket", le="300.0") == 1
    assert delay_value(registry, "_bucket", le="7200.0") == 1
    assert delay_value(registry, "_bucket", le="+Inf") == 2
    assert delay_value(registry, "_sum") == 300 + 3 * 3600


def test_a_transition_dated_after_the_commit_counts_as_no_delay():
    registry, metrics = build_registry(CurrentState())
    ahead = an_image("enabled", COMMITTED + timedelta(seconds=4))  # AWS's clock ahead of ours

    metrics.poll_finished(poll_of(ahead), [change(ahead)], COMMITTED)

    assert delay_value(registry, "_sum") == 0
    assert delay_value(registry, "_bucket", le="1.0") == 1


def test_delays_add_up_over_polls_and_only_scopes_with_one_have_the_series():
    registry, metrics = build_registry(CurrentState())
    quiet = Scope("quiet", "222222222222", "us-east-1")
    first = an_image("enabled", COMMITTED - timedelta(seconds=10))
    second = an_image("enabled-failed", COMMITTED + timedelta(seconds=590))

    metrics.poll_finished(poll_of(first), [change(first)], COMMITTED)
    metrics.poll_finished(
        poll_of(second), [change(second, "enabled")], COMMITTED + timedelta(seconds=600)
    )
    metrics.poll_finished(PollResult(quiet, STARTED, 0.3, 1, (), None, None), [], COMMITTED)

    assert delay_value(registry, "_count") == 2
    assert delay_value(registry, "_sum") == 20
    assert delay_value(registry, "_bucket", le="5.0") == 0
    assert delay_value(registry, "_bucket", le="15.0") == 2
    assert registry.get_sample_value("fastlaunch_poll_success", scope_of(quiet)) == 1
    quiet_delays = {**scope_of(quiet), "trigger": "interval"}
    assert (
        registry.get_sample_value("fastlaunch_detection_delay_seconds_count", quiet_delays) is None
    )


def test_a_poll_given_no_commit_time_observes_no_delay():
    registry, metrics = build_registry(CurrentState())
    failed = an_image("enabling-failed", COMMITTED - timedelta(seconds=42.5))

    metrics.poll_finished(poll_of(failed), [change(failed)])

    assert delay_value(registry, "_count") is None
