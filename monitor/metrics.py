"""Prometheus metrics: per-image gauges from the current state, and the monitor's own series.

Everything lives on an injected `CollectorRegistry`, never on prometheus_client's global one.

The per-image families come from `ImageCollector`, which reads `CurrentState.snapshot()` at
each scrape, so the series of an image that is gone vanish by construction, and a failed poll
(which changes no current state) leaves the last values in place.

Rendering those families is the hot spot. prometheus_client's encoders format every sample on
its own (10 to 20 µs each), which for 100,000 images of 10 series is over 10 s a scrape. So the
image families render their own text, from line templates built once per scope, and
`exposition()` splices that text into what prometheus_client renders for everything else. Their
`samples` still exist, built on first access, for `get_sample_value` and any other reader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby, islice
from operator import attrgetter

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import ALLOWUTF8, UNDERSCORES
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from monitor.current import CurrentState
from monitor.model import KNOWN_STATES, PollResult, Scope, StoredImage, Transition

TARGET_RESOURCE_COUNT = "fastlaunch_image_target_resource_count"
MAX_PARALLEL_LAUNCHES = "fastlaunch_image_max_parallel_launches"
STATE = "fastlaunch_image_state"
STATE_TRANSITION_TIMESTAMP = "fastlaunch_image_state_transition_timestamp_seconds"
INFO = "fastlaunch_image_info"

SCOPE_LABELS: tuple[str, ...] = ("target", "account_id", "region")

#: A poll is one or more paged AWS calls, each 0.1 s to tens of seconds with retries.
POLL_DURATION_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)

# The help texts hold no backslash, quote or newline, so both exposition formats print them as
# they are (the rendered text does not escape them).
_HELP: dict[str, str] = {
    TARGET_RESOURCE_COUNT: (
        "SnapshotConfiguration.TargetResourceCount of a fast launch image: "
        "the pre-provisioned snapshots to keep."
    ),
    MAX_PARALLEL_LAUNCHES: (
        "MaxParallelLaunches of a fast launch image: instances launched at once "
        "to pre-provision snapshots."
    ),
    STATE: "Fast launch state of an image: 1 for its current state, 0 for the others.",
    STATE_TRANSITION_TIMESTAMP: (
        "StateTransitionTime of a fast launch image, in seconds since the Unix epoch."
    ),
    INFO: "Fast launch configuration of an image, in its labels; always 1.",
}

# prometheus_client's own number formatting (Go style), typed: it ships unannotated.
_go_float: Callable[[float], str] = floatToGoString

# Escapings under which prometheus_client prints legacy metric and label names unchanged,
# so pre-rendered text is exactly what its encoder would print. (Prometheus 2 asks for the
# default, underscores; Prometheus 3 for allow-utf-8.) Other escapings take the slow path.
_VERBATIM_ESCAPINGS = frozenset({UNDERSCORES, ALLOWUTF8})
_OPENMETRICS_EOF = b"# EOF\n"


def _escape(value: str) -> str:
    """Escape a label value as both exposition formats do."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _states_of(state: str) -> tuple[str, ...]:
    """The states exported for an image in `state`: every known one, and its own if unknown."""
    if state in KNOWN_STATES:
        return KNOWN_STATES
    return (*KNOWN_STATES, state)


class _Numbers(dict[int, str]):
    """Counts as prometheus_client prints them, each formatted once per scrape."""

    def __missing__(self, number: int) -> str:
        text = self[number] = _go_float(number)
        return text


class _ScopeTemplates:
    """The constant parts of one scope's sample lines; each image's id goes in between."""

    def __init__(self, scope: Scope, numbers: _Numbers) -> None:
        self.numbers = numbers
        self.account = _escape(scope.account_id)
        self.region = _escape(scope.region)
        self.target = _escape(scope.target)
        self.tail = f'",region="{self.region}",target="{self.target}"}} '
        self.state_parts = _StateLines(self)
        self.info_ends = _InfoEnds(self)

    def head(self, name: str) -> str:
        """A sample line of family `name` up to where the image id goes."""
        return f'{name}{{account_id="{self.account}",image_id="'


class _StateLines(dict[str, list[str]]):
    """By current state: an image's `fastlaunch_image_state` lines, split where its id goes."""

    def __init__(self, scope: _ScopeTemplates) -> None:
        super().__init__()
        self._scope = scope

    def __missing__(self, state: str) -> list[str]:
        head = self._scope.head(STATE)
        ends = [
            f'",region="{self._scope.region}",state="{_escape(each)}",'
            f'target="{self._scope.target}"}} {"1.0" if each == state else "0.0"}\n'
            for each in _states_of(state)
        ]
        parts = self[state] = [head, *(end + head for end in ends[:-1]), ends[-1]]
        return parts


#: What `fastlaunch_image_info` labels besides the scope's and the image id's: launch template
#: id, name and version, owner id, resource type.
_InfoKey = tuple[str | None, str | None, str | None, str | None, str | None]


class _InfoEnds(dict[_InfoKey, str]):
    """The end of an image's `fastlaunch_image_info` line, from just after its id.

    Images of one scope mostly share a launch template, owner and resource type, so each
    combination is escaped and formatted once.
    """

    def __init__(self, scope: _ScopeTemplates) -> None:
        super().__init__()
        self._scope = scope

    def __missing__(self, key: _InfoKey) -> str:
        template_id, template_name, template_version, owner_id, resource_type = (
            _escape(value or "") for value in key
        )
        end = self[key] = (
            f'",launch_template_id="{template_id}",'
            f'launch_template_name="{template_name}",'
            f'launch_template_version="{template_version}",'
            f'owner_id="{owner_id}",region="{self._scope.region}",'
            f'resource_type="{resource_type}",target="{self._scope.target}"}} 1.0\n'
        )
        return end


# These run once per image and family: 500,000 times a scrape for 100,000 images, so what
# they look up per line is in locals.


def _count_lines(name: str, parts: _ScopeTemplates, images: Iterable[StoredImage]) -> Iterator[str]:
    head, tail, numbers, field = parts.head(name), parts.tail, parts.numbers, _COUNTS[name]
    for stored in images:
        count = getattr(stored.image, field)
        if count is not None:
            yield f"{head}{_escape(stored.image.image_id)}{tail}{numbers[count]}\n"


def _state_lines(name: str, parts: _ScopeTemplates, images: Iterable[StoredImage]) -> Iterator[str]:
    state_parts = parts.state_parts
    for stored in images:
        yield _escape(stored.image.image_id).join(state_parts[stored.image.state])


def _time_lines(name: str, parts: _ScopeTemplates, images: Iterable[StoredImage]) -> Iterator[str]:
    head, tail = parts.head(name), parts.tail
    for stored in images:
        changed_at = stored.image.state_transition_time
        if changed_at is not None:
            seconds = _go_float(changed_at.timestamp())
            yield f"{head}{_escape(stored.image.image_id)}{tail}{seconds}\n"


def _info_lines(name: str, parts: _ScopeTemplates, images: Iterable[StoredImage]) -> Iterator[str]:
    head, info_ends = parts.head(name), parts.info_ends
    for stored in images:
        image = stored.image
        key = (
            image.launch_template_id,
            image.launch_template_name,
            image.launch_template_version,
            image.owner_id,
            image.resource_type,
        )
        yield f"{head}{_escape(image.image_id)}{info_ends[key]}"


_COUNTS = {
    TARGET_RESOURCE_COUNT: "target_resource_count",
    MAX_PARALLEL_LAUNCHES: "max_parallel_launches",
}

_LINES: dict[str, Callable[[str, _ScopeTemplates, Iterable[StoredImage]], Iterator[str]]] = {
    TARGET_RESOURCE_COUNT: _count_lines,
    MAX_PARALLEL_LAUNCHES: _count_lines,
    STATE: _state_lines,
    STATE_TRANSITION_TIMESTAMP: _time_lines,
    INFO: _info_lines,
}

# Images per encoded chunk: few enough chunks to write, and a large fleet's text (100s of MB)
# is held once, as bytes, rather than also as lines and as one joined string.
_CHUNK_IMAGES = 4096


def _render(name: str, images: tuple[StoredImage, ...]) -> list[bytes]:
    """The sample lines of image family `name`, exactly as prometheus_client would print them."""
    numbers = _Numbers()
    lines = (
        line
        for scope, group in groupby(images, key=attrgetter("scope"))
        for line in _LINES[name](name, _ScopeTemplates(scope, numbers), group)
    )
    chunks = []
    while batch := list(islice(lines, _CHUNK_IMAGES)):
        chunks.append("".join(batch).encode())
    return chunks


def _labels(stored: StoredImage) -> dict[str, str]:
    scope = stored.scope
    return {
        "target": scope.target,
        "account_id": scope.account_id,
        "region": scope.region,
        "image_id": stored.image.image_id,
    }


def _samples(name: str, images: tuple[StoredImage, ...]) -> Iterator[Sample]:
    """The samples of one image family, in the order `_render` prints them."""
    for stored in images:
        image = stored.image
        labels = _labels(stored)
        if name == TARGET_RESOURCE_COUNT and image.target_resource_count is not None:
            yield Sample(name, labels, float(image.target_resource_count))
        elif name == MAX_PARALLEL_LAUNCHES and image.max_parallel_launches is not None:
            yield Sample(name, labels, float(image.max_parallel_launches))
        elif name == STATE:
            for state in _states_of(image.state):
                value = 1.0 if state == image.state else 0.0
                yield Sample(name, {**labels, "state": state}, value)
        elif name == STATE_TRANSITION_TIMESTAMP and image.state_transition_time is not None:
            yield Sample(name, labels, image.state_transition_time.timestamp())
        elif name == INFO:
            info = {
                **labels,
                "owner_id": image.owner_id or "",
                "resource_type": image.resource_type or "",
                "launch_template_id": image.launch_template_id or "",
                "launch_template_name": image.launch_template_name or "",
                "launch_template_version": image.launch_template_version or "",
            }
            yield Sample(name, info, 1.0)


class ImageFamily(GaugeMetricFamily):
    """One per-image gauge family of one scrape, able to print its own exposition text.

    `samples` is built from the images on first access; `exposition()` does not touch it.
    """

    def __init__(self, name: str, images: tuple[StoredImage, ...]) -> None:
        self._images = images
        self._built: list[Sample] | None = None
        super().__init__(name, _HELP[name])

    @property
    def samples(self) -> list[Sample]:
        if self._built is None:
            self._built = list(_samples(self.name, self._images))
        return self._built

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        # Metric.__init__ starts every family with an empty list: that means "not built yet".
        self._built = value or None

    def exposition(self) -> list[bytes]:
        """This family's HELP and TYPE lines, then its sample lines; the same in both formats."""
        header = f"# HELP {self.name} {self.documentation}\n# TYPE {self.name} gauge\n"
        return [header.encode(), *_render(self.name, self._images)]


class ImageCollector:
    """The per-image gauges of SPEC §6, built fresh from the current state at each scrape.

    Yields nothing while `exporting()` is false: a standby instance exports no image series.
    """

    def __init__(self, current: CurrentState, exporting: Callable[[], bool] = lambda: True) -> None:
        self._current = current
        self._exporting = exporting

    def describe(self) -> Iterable[Metric]:
        """The family names, so that the registry refuses a second collector of them."""
        return [GaugeMetricFamily(name, _HELP[name]) for name in _HELP]

    def collect(self) -> Iterable[Metric]:
        """The image families of this scrape."""
        if not self._exporting():
            return []
        images = self._current.snapshot()
        return [ImageFamily(name, images) for name in _HELP]


class MonitorMetrics:
    """The monitor's own series: polls, transitions, alert delivery, leadership."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._leader = False
        self.poll_success = Gauge(
            "fastlaunch_poll_success",
            "1 if the last poll of this target and region succeeded, else 0.",
            SCOPE_LABELS,
            registry=registry,
        )
        self.poll_duration_seconds = Histogram(
            "fastlaunch_poll_duration_seconds",
            "Duration of one poll of a target and region, all pages, in seconds.",
            SCOPE_LABELS,
            buckets=POLL_DURATION_BUCKETS,
            registry=registry,
        )
        self.poll_errors_total = Counter(
            "fastlaunch_poll_errors_total",
            "Failed polls of a target and region, by AWS error code or error class.",
            (*SCOPE_LABELS, "error"),
            registry=registry,
        )
        self.last_successful_poll_timestamp_seconds = Gauge(
            "fastlaunch_last_successful_poll_timestamp_seconds",
            "When the last successful poll of this target and region finished, Unix seconds.",
            SCOPE_LABELS,
            registry=registry,
        )
        self.transitions_total = Counter(
            "fastlaunch_transitions_total",
            "Recorded state transitions of fast launch images, by new state.",
            (*SCOPE_LABELS, "state"),
            registry=registry,
        )
        self.alerts_pending = Gauge(
            "fastlaunch_alerts_pending",
            "Alert outbox entries not yet delivered, by receiver.",
            ("receiver",),
            registry=registry,
        )
        self.alert_deliveries_total = Counter(
            "fastlaunch_alert_deliveries_total",
            "Alert delivery attempts by receiver and outcome (delivered, retry, failed).",
            ("receiver", "outcome"),
            registry=registry,
        )
        self.leader = Gauge(
            "fastlaunch_leader",
            "1 on the instance that polls and dispatches alerts, 0 on a standby.",
            registry=registry,
        )

    def poll_finished(self, result: PollResult, transitions: Sequence[Transition]) -> None:
        """Count one finished poll of a scope and the transitions it recorded."""
        scope = (result.scope.target, result.scope.account_id, result.scope.region)
        self.poll_duration_seconds.labels(*scope).observe(result.duration_seconds)
        if result.ok:
            self.poll_success.labels(*scope).set(1)
            finished = result.started_at.timestamp() + result.duration_seconds
            self.last_successful_poll_timestamp_seconds.labels(*scope).set(finished)
        else:
            self.poll_success.labels(*scope).set(0)
            self.poll_errors_total.labels(*scope, result.error_code or "Unknown").inc()
        for transition in transitions:
            self.transitions_total.labels(*scope, transition.new_state).inc()

    def set_leader(self, leader: bool) -> None:
        """Record whether this instance is the one that polls."""
        self._leader = leader
        self.leader.set(1 if leader else 0)

    def is_leader(self) -> bool:
        """What `set_leader` was last told; `False` until it is called."""
        return self._leader


def build_registry(
    current: CurrentState, exporting: Callable[[], bool] | None = None
) -> tuple[CollectorRegistry, MonitorMetrics]:
    """A fresh registry with the image collector and the monitor's own metrics on it.

    The image series are exported while `exporting()` is true; by default that is while
    `MonitorMetrics.set_leader(True)` holds, so image series and `fastlaunch_leader 1` go
    together and a standby never exports an image twice.
    """
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    registry.register(ImageCollector(current, exporting or metrics.is_leader))
    return registry, metrics


@dataclass(frozen=True, slots=True)
class Exposition:
    """One rendered scrape: its `Content-Type` and its body, in chunks to write in order."""

    content_type: str
    chunks: tuple[bytes, ...]


class _Families:
    """Already collected families, as a collector an encoder can render."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def _escaping(content_type: str) -> str:
    for parameter in content_type.split(";")[1:]:
        key, _, value = parameter.strip().partition("=")
        if key == "escaping":
            return value
    return UNDERSCORES


def exposition(registry: Collector, accept: str | None) -> Exposition:
    """Render `registry` in the format the `Accept` header asks for, as prometheus_client would.

    The negotiation is prometheus_client's own (`choose_encoder`): Prometheus text 0.0.4 by
    default, OpenMetrics when asked. Image families print their pre-rendered text.
    """
    encoder, content_type = choose_encoder(accept or "")
    families = list(registry.collect())
    rendered = [family for family in families if isinstance(family, ImageFamily)]
    if not rendered or _escaping(content_type) not in _VERBATIM_ESCAPINGS:
        return Exposition(content_type, (encoder(_Families(families)),))
    others = encoder(_Families([f for f in families if not isinstance(f, ImageFamily)]))
    openmetrics = content_type.startswith("application/openmetrics-text")
    if openmetrics:
        others = others.removesuffix(_OPENMETRICS_EOF)
    chunks = [others, *(part for family in rendered for part in family.exposition())]
    if openmetrics:
        chunks.append(_OPENMETRICS_EOF)
    return Exposition(content_type, tuple(chunks))
