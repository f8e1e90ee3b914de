"""The per-scope series print what prometheus_client's own Gauge, Counter and Histogram would."""

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

from monitor.current import CurrentState
from monitor.metrics import build_registry, exposition
from monitor.model import PollResult, Scope, Transition
from monitor.scope_metrics import POLL_DURATION_BUCKETS

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

    def poll_finished(self, result: PollResult, transitions: list[Transition]) -> None:
        scope = (result.scope.target, result.scope.account_id, result.scope.region)
        self.duration.labels(*scope).observe(result.duration_seconds)
        if result.ok:
            self.success.labels(*scope).set(1)
            self.last.labels(*scope).set(result.started_at.timestamp() + result.duration_seconds)
        else:
            self.success.labels(*scope).set(0)
            self.errors.labels(*scope, result.error_code or "Unknown").inc()
        for transition in transitions:
            self.transitions.labels(*scope, transition.new_state).inc()


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
        if family.name.startswith(("fastlaunch_poll", "fastlaunch_last", "fastlaunch_transitions"))
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
polls = st.tuples(
    st.integers(0, 2),
    durations,
    st.none() | st.sampled_from(["AccessDenied", "Throttling", 'odd"code\\']),
    st.lists(st.sampled_from(["enabled", "enabling-failed", 'we"ird']), max_size=3),
)


@settings(max_examples=60, deadline=None)
@given(scopes=scopes, steps=st.lists(polls, min_size=1, max_size=12))
def test_any_polls_export_the_samples_prometheus_clients_own_metrics_would(scopes, steps):
    registry, metrics = build_registry(CurrentState())
    reference = Reference()
    for n, (which, duration, error, states) in enumerate(steps):
        result = PollResult(
            scope=scopes[which % len(scopes)],
            started_at=STARTED + timedelta(seconds=n),
            duration_seconds=duration,
            pages=1,
            images=None if error else (),
            error_code=error,
            error_message="boom" if error else None,
        )
        moves = [Transition(f"ami-{i}", None, state, STARTED, "") for i, state in enumerate(states)]
        metrics.poll_finished(result, moves)
        reference.poll_finished(result, moves)

    ours = exposition(registry, None).text().decode()
    assert poll_samples(ours) == poll_samples(generate_latest(reference.registry).decode())
    ours = exposition(registry, OPENMETRICS).text().decode()
    theirs = openmetrics_latest(reference.registry).decode()
    assert poll_samples(ours, openmetrics_families) == poll_samples(theirs, openmetrics_families)


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
