"""The monitor's own series of each (target, account, region): its polls and transitions.

`fastlaunch_poll_success`, `fastlaunch_poll_duration_seconds`, `fastlaunch_poll_errors_total`,
`fastlaunch_last_successful_poll_timestamp_seconds`, `fastlaunch_transitions_total` and
`fastlaunch_detection_delay_seconds` (the README's metrics table) have a series (a histogram:
15) per scope, and a fleet has a thousand scopes. prometheus_client formats some 17,000 such
samples in about 0.3 s, on the GIL the poll threads need, at every scrape. Here each scope keeps
its numbers and the constant parts of its lines, and a scrape formats only the numbers: the same
text, a tenth of the time. The families still carry `samples` (built on first access) for
`get_sample_value` and any encoder that wants them.

No `_created` series: they are optional in OpenMetrics, unknown to Prometheus' text format,
and would double the series of every counter and histogram.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client.core import Metric
from prometheus_client.samples import Sample

from monitor.core.model import PollResult, Scope, Transition
from monitor.exposition.images import escape, go_float

POLL_SUCCESS = "fastlaunch_poll_success"
POLL_DURATION = "fastlaunch_poll_duration_seconds"
POLL_ERRORS = "fastlaunch_poll_errors"  # a counter's name; its samples are `..._total`
LAST_SUCCESSFUL_POLL = "fastlaunch_last_successful_poll_timestamp_seconds"
TRANSITIONS = "fastlaunch_transitions"  # a counter's name; its samples are `..._total`
DETECTION_DELAY = "fastlaunch_detection_delay_seconds"

#: A poll is one or more paged AWS calls, each 0.1 s to tens of seconds with retries.
POLL_DURATION_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)

#: A transition is learnt about half an interval after it happened on average, and at most an
#: interval and a poll after: these cover intervals from seconds to an hour, and an outage of
#: polls (which delays what the next poll finds) up to two hours.
DETECTION_DELAY_BUCKETS: tuple[float, ...] = (
    1,
    5,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
)

#: The `trigger` of a transition found by a poll of the interval's schedule.
INTERVAL = "interval"
#: Every `trigger` a detection delay may carry.
TRIGGERS: tuple[str, ...] = (INTERVAL,)


_FAMILIES: tuple[tuple[str, str, str], ...] = (
    (POLL_SUCCESS, "gauge", "1 if the last poll of this target and region succeeded, else 0."),
    (
        POLL_DURATION,
        "histogram",
        "Duration of one poll of a target and region, all pages, in seconds.",
    ),
    (
        POLL_ERRORS,
        "counter",
        "Failed polls of a target and region, by AWS error code or error class.",
    ),
    (
        LAST_SUCCESSFUL_POLL,
        "gauge",
        "When the last successful poll of this target and region finished, Unix seconds.",
    ),
    (TRANSITIONS, "counter", "Recorded state transitions of fast launch images, by new state."),
    (
        DETECTION_DELAY,
        "histogram",
        "Seconds from a fast launch state transition (its StateTransitionTime) to the commit "
        "that recorded it, by what triggered the poll that found it.",
    ),
)

_LE = [go_float(bound) for bound in (*POLL_DURATION_BUCKETS, float("inf"))]
_DELAY_LE = [go_float(bound) for bound in (*DETECTION_DELAY_BUCKETS, float("inf"))]


def detection_delays(
    result: PollResult, transitions: Iterable[Transition], committed_at: datetime
) -> list[float]:
    """The detection delay of each transition a poll recorded, committed at `committed_at`.

    From the image's `StateTransitionTime` to the commit, in seconds. Only changes of an image
    the poll listed with a `StateTransitionTime` count: a first sight (or a reappearance) may
    be of a change made long before the monitor could look, and a removal (the image is not
    listed) or a change without that time is dated by the monitor's own observation, which
    says nothing of when it happened. A delay below zero (AWS's clock ahead of ours) counts
    as 0.
    """
    changed = [t for t in transitions if t.previous_state is not None]
    if not changed or not result.images:
        return []
    times = {image.image_id: image.state_transition_time for image in result.images}
    delays = []
    for transition in changed:
        happened = times.get(transition.image_id)
        if happened is not None:
            delays.append(max(0.0, (committed_at - happened).total_seconds()))
    return delays


@dataclass(slots=True)
class _Delays:
    """One scope's detection delays of one trigger, as a histogram's buckets, count and sum."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(DETECTION_DELAY_BUCKETS) + 1))
    count: int = 0
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(DETECTION_DELAY_BUCKETS, seconds)] += 1
        self.count += 1
        self.total += seconds

    def copy(self) -> _Delays:
        return _Delays(list(self.buckets), self.count, self.total)


@dataclass(slots=True)
class _Numbers:
    """One scope's numbers; changed under `ScopeMetrics`' lock, copied out for a scrape."""

    success: float | None = None
    last_success: float | None = None
    buckets: list[int] = field(default_factory=lambda: [0] * (len(POLL_DURATION_BUCKETS) + 1))
    count: int = 0
    total: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    transitions: dict[str, int] = field(default_factory=dict)
    delays: dict[str, _Delays] = field(default_factory=dict)

    def copy(self) -> _Numbers:
        return _Numbers(
            self.success,
            self.last_success,
            list(self.buckets),
            self.count,
            self.total,
            dict(self.errors),
            dict(self.transitions),
            {trigger: delays.copy() for trigger, delays in self.delays.items()},
        )


class _Labels:
    """A scope's label text, split where a family's own label goes (labels print sorted)."""

    def __init__(self, scope: Scope) -> None:
        account = f'account_id="{escape(scope.account_id)}"'
        region = f'region="{escape(scope.region)}"'
        target = f'target="{escape(scope.target)}"'
        self.scope = scope
        self.plain = f"{{{account},{region},{target}}} "
        # `error` and `le` sort between account_id and region; `state` between region and target.
        self.before_error = f"{{{account},error="
        self.before_le = f"{{{account},le="
        self.rest = f",{region},{target}}} "
        self.before_state = f"{{{account},{region},state="
        self.after_state = f",{target}}} "
        # `trigger` sorts last.
        self.with_trigger = {
            trigger: (
                f'{{{account},{region},{target},trigger="{escape(trigger)}"}} ',
                f',{region},{target},trigger="{escape(trigger)}"}} ',
            )
            for trigger in TRIGGERS
        }


@dataclass(frozen=True, slots=True)
class _ScopeView:
    labels: _Labels
    numbers: _Numbers


# One per family: they print its sample lines exactly as prometheus_client does.


def _success_lines(name: str, scopes: Sequence[_ScopeView]) -> Iterator[str]:
    for view in scopes:
        if view.numbers.success is not None:
            yield f"{name}{view.labels.plain}{go_float(view.numbers.success)}\n"


def _last_success_lines(name: str, scopes: Sequence[_ScopeView]) -> Iterator[str]:
    for view in scopes:
        if view.numbers.last_success is not None:
            yield f"{name}{view.labels.plain}{go_float(view.numbers.last_success)}\n"


def _duration_lines(name: str, scopes: Sequence[_ScopeView]) -> Iterator[str]:
    for view in scopes:
        numbers, labels = view.numbers, view.labels
        if not numbers.count:
            continue
        cumulative = 0
        for le, count in zip(_LE, numbers.buckets, strict=True):
            cumulative += count
            yield f'{name}_bucket{labels.before_le}"{le}"{labels.rest}{go_float(cumulative)}\n'
        yield f"{name}_count{labels.plain}{go_float(numbers.count)}\n"
        yield f"{name}_sum{labels.plain}{go_float(numbers.total)}\n"


def _error_lines(name: str, scopes: Sequence[_ScopeView]) -> Iterator[str]:
    for view in scopes:
        labels = view.labels
        for code, count in view.numbers.errors.items():
            yield (
                f'{name}_total{labels.before_error}"{escape(code)}"{labels.rest}{go_float(count)}\n'
            )


def _transition_lines(name: str, scopes: Sequence[_ScopeView]) -> Iterator[str]:
    for view in scopes:
        labels = view.labels
        for state, count in view.numbers.transitions.items():
            yield (
                f'{name}_total{labels.before_state}"{escape(state)}"{labels.after_state}'
                f"{go_float(count)}\n"
            )


def _delay_lines(name: str, scopes: Sequence[_ScopeView]) -> Iterator[str]:
    for view in scopes:
        labels = view.labels
        for trigger, delays in view.numbers.delays.items():
            plain, rest = labels.with_trigger[trigger]
            cumulative = 0
            for le, count in zip(_DELAY_LE, delays.buckets, strict=True):
                cumulative += count
                yield f'{name}_bucket{labels.before_le}"{le}"{rest}{go_float(cumulative)}\n'
            yield f"{name}_count{plain}{go_float(delays.count)}\n"
            yield f"{name}_sum{plain}{go_float(delays.total)}\n"


_LINES: dict[str, Callable[[str, Sequence[_ScopeView]], Iterator[str]]] = {
    POLL_SUCCESS: _success_lines,
    POLL_DURATION: _duration_lines,
    POLL_ERRORS: _error_lines,
    LAST_SUCCESSFUL_POLL: _last_success_lines,
    TRANSITIONS: _transition_lines,
    DETECTION_DELAY: _delay_lines,
}


def _samples(name: str, scopes: Sequence[_ScopeView]) -> Iterator[Sample]:
    """The samples of family `name`, in the order its `_LINES` prints them."""
    for view in scopes:
        scope, numbers = view.labels.scope, view.numbers
        labels = {"target": scope.target, "account_id": scope.account_id, "region": scope.region}
        if name == POLL_SUCCESS and numbers.success is not None:
            yield Sample(name, labels, numbers.success)
        elif name == LAST_SUCCESSFUL_POLL and numbers.last_success is not None:
            yield Sample(name, labels, numbers.last_success)
        elif name == POLL_DURATION and numbers.count:
            cumulative = 0
            for le, count in zip(_LE, numbers.buckets, strict=True):
                cumulative += count
                yield Sample(f"{name}_bucket", {**labels, "le": le}, float(cumulative))
            yield Sample(f"{name}_count", labels, float(numbers.count))
            yield Sample(f"{name}_sum", labels, numbers.total)
        elif name == POLL_ERRORS:
            for code, count in numbers.errors.items():
                yield Sample(f"{name}_total", {**labels, "error": code}, float(count))
        elif name == TRANSITIONS:
            for state, count in numbers.transitions.items():
                yield Sample(f"{name}_total", {**labels, "state": state}, float(count))
        elif name == DETECTION_DELAY:
            for trigger, delays in numbers.delays.items():
                with_trigger = {**labels, "trigger": trigger}
                cumulative = 0
                for le, count in zip(_DELAY_LE, delays.buckets, strict=True):
                    cumulative += count
                    yield Sample(f"{name}_bucket", {**with_trigger, "le": le}, float(cumulative))
                yield Sample(f"{name}_count", with_trigger, float(delays.count))
                yield Sample(f"{name}_sum", with_trigger, delays.total)


class ScopeFamily(Metric):
    """One per-scope family of one scrape, able to print its own sample lines."""

    def __init__(self, name: str, kind: str, documentation: str, scopes: Sequence[_ScopeView]):
        super().__init__(name, documentation, kind)
        self._scopes = scopes
        self._built: list[Sample] | None = None

    @property
    def samples(self) -> list[Sample]:
        if self._built is None:
            self._built = list(_samples(self.name, self._scopes))
        return self._built

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        # Metric.__init__ starts every family with an empty list: that means "not built yet".
        self._built = value or None

    def exposition(self, openmetrics: bool) -> list[bytes]:
        """HELP and TYPE lines, then the sample lines (the same in both formats).

        Prometheus' text format names a counter by its samples' `_total` name, OpenMetrics by
        the family's.
        """
        shown = self.name if openmetrics or self.type != "counter" else f"{self.name}_total"
        header = f"# HELP {shown} {self.documentation}\n# TYPE {shown} {self.type}\n"
        return [header.encode(), "".join(_LINES[self.name](self.name, self._scopes)).encode()]


class ScopeMetrics:
    """The per-scope series the README lists, as a collector; safe to use from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scopes: dict[Scope, tuple[_Labels, _Numbers]] = {}

    def poll_finished(
        self,
        result: PollResult,
        transitions: Sequence[Transition],
        committed_at: datetime | None = None,
    ) -> None:
        """Count one finished poll of a scope and the transitions it recorded.

        `committed_at`: when the transaction that recorded them committed; with it, their
        detection delays are observed (see `detection_delays`).
        """
        delays = [] if committed_at is None else detection_delays(result, transitions, committed_at)
        with self._lock:
            entry = self._scopes.get(result.scope)
            if entry is None:
                entry = self._scopes[result.scope] = (_Labels(result.scope), _Numbers())
            numbers = entry[1]
            numbers.buckets[bisect.bisect_left(POLL_DURATION_BUCKETS, result.duration_seconds)] += 1
            numbers.count += 1
            numbers.total += result.duration_seconds
            if result.ok:
                numbers.success = 1.0
                numbers.last_success = result.started_at.timestamp() + result.duration_seconds
            else:
                numbers.success = 0.0
                code = result.error_code or "Unknown"
                numbers.errors[code] = numbers.errors.get(code, 0) + 1
            for transition in transitions:
                state = transition.new_state
                numbers.transitions[state] = numbers.transitions.get(state, 0) + 1
            if delays:
                histogram = numbers.delays.setdefault(INTERVAL, _Delays())
                for seconds in delays:
                    histogram.observe(seconds)

    def forget(self, scopes: Iterable[Scope]) -> None:
        """Drop every series of `scopes` (no longer polled)."""
        with self._lock:
            for scope in scopes:
                self._scopes.pop(scope, None)

    def describe(self) -> Iterable[Metric]:
        """The family names, so that the registry refuses a second collector of them."""
        return [ScopeFamily(name, kind, text, ()) for name, kind, text in _FAMILIES]

    def collect(self) -> Iterable[Metric]:
        """The per-scope families of this scrape, scopes in (target, account, region) order."""
        with self._lock:
            views = [
                _ScopeView(labels, numbers.copy())
                for scope, (labels, numbers) in sorted(
                    self._scopes.items(), key=lambda item: _scope_order(item[0])
                )
            ]
        return [ScopeFamily(name, kind, text, views) for name, kind, text in _FAMILIES]


def _scope_order(scope: Scope) -> tuple[str, str, str]:
    return (scope.target, scope.account_id, scope.region)
