"""Prometheus metrics: per-image gauges from the current state, and the monitor's own series.

Everything lives on an injected `CollectorRegistry`, never on prometheus_client's global one.

The per-image families come from `ImageCollector`, which reads `CurrentState.scopes()` at
each scrape, so the series of an image that is gone vanish by construction, and a failed poll
(which changes no current state) leaves the last values in place.

Rendering those families is the hot spot. prometheus_client's encoders format every sample on
its own (10 to 20 µs each), which for 100,000 images of 10 series is over 10 s a scrape. So the
image families' text is rendered per scope when the scope changes, and kept gzipped
(`monitor.exposition.images`); `exposition()` splices it into what prometheus_client renders for
everything else. Their `samples` still exist, built on first access, for `get_sample_value`
and any other reader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import ALLOWUTF8, UNDERSCORES
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from monitor.core.model import PollResult, Scope, StoredImage, Transition
from monitor.exposition.current import CurrentState
from monitor.exposition.images import (
    IMAGE_FAMILIES,
    INFO,
    MAX_PARALLEL_LAUNCHES,
    STATE,
    STATE_TRANSITION_TIMESTAMP,
    TARGET_RESOURCES,
    Member,
    RenderedScopes,
    gzip_member,
    states_of,
)
from monitor.exposition.scope_metrics import ScopeFamily, ScopeMetrics

# The help texts hold no backslash, quote or newline, so both exposition formats print them as
# they are (the rendered text does not escape them).
_HELP: dict[str, str] = {
    TARGET_RESOURCES: (
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

# Escapings under which prometheus_client prints legacy metric and label names unchanged,
# so pre-rendered text is exactly what its encoder would print. (Prometheus 2 asks for the
# default, underscores; Prometheus 3 for allow-utf-8.) Other escapings take the slow path.
_VERBATIM_ESCAPINGS = frozenset({UNDERSCORES, ALLOWUTF8})
_OPENMETRICS_EOF = b"# EOF\n"


def _labels(stored: StoredImage) -> dict[str, str]:
    scope = stored.scope
    return {
        "target": scope.target,
        "account_id": scope.account_id,
        "region": scope.region,
        "image_id": stored.image.image_id,
    }


def _samples(name: str, images: Iterable[StoredImage]) -> Iterator[Sample]:
    """The samples of one image family, in the order its rendered text prints them."""
    for stored in images:
        image = stored.image
        labels = _labels(stored)
        if name == TARGET_RESOURCES and image.target_resource_count is not None:
            yield Sample(name, labels, float(image.target_resource_count))
        elif name == MAX_PARALLEL_LAUNCHES and image.max_parallel_launches is not None:
            yield Sample(name, labels, float(image.max_parallel_launches))
        elif name == STATE:
            for state in states_of(image.state):
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
    """One per-image gauge family of one scrape, with its sample lines already rendered.

    `samples` is built from the images on first access; `exposition()` does not touch it.
    """

    def __init__(
        self,
        name: str,
        scopes: Sequence[tuple[Scope, tuple[StoredImage, ...]]],
        members: Sequence[Member],
    ) -> None:
        self._scopes = scopes
        self._members = members
        self._built: list[Sample] | None = None
        super().__init__(name, _HELP[name])

    @property
    def samples(self) -> list[Sample]:
        if self._built is None:
            images = [stored for _, images in self._scopes for stored in images]
            self._built = list(_samples(self.name, images))
        return self._built

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        # Metric.__init__ starts every family with an empty list: that means "not built yet".
        self._built = value or None

    def exposition(self, openmetrics: bool) -> list[bytes | Member]:
        """This family's HELP and TYPE lines, then its sample lines; the same in both formats."""
        header = f"# HELP {self.name} {self.documentation}\n# TYPE {self.name} gauge\n"
        return [header.encode(), *self._members]


class ImageCollector:
    """The per-image gauges the README lists, from the current state at each scrape.

    Their text is rendered when a scope changes (the collector watches the current state) and
    kept, so a scrape renders only what no change has rendered yet. Yields nothing while
    `exporting()` is false: a standby instance exports no image series.
    """

    def __init__(self, current: CurrentState, exporting: Callable[[], bool] = lambda: True) -> None:
        self._current = current
        self._exporting = exporting
        self._rendered = RenderedScopes()
        current.watch(self._rendered.update)

    def describe(self) -> Iterable[Metric]:
        """The family names, so that the registry refuses a second collector of them."""
        return [GaugeMetricFamily(name, _HELP[name]) for name in _HELP]

    def collect(self) -> Iterable[Metric]:
        """The image families of this scrape."""
        if not self._exporting():
            return []
        scopes = self._current.scopes()
        members = self._rendered.members(scopes)
        return [ImageFamily(name, scopes, members[name]) for name in IMAGE_FAMILIES]


class MonitorMetrics:
    """The monitor's own series: polls, transitions and their detection delays, alert
    delivery, leadership."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._leader = False
        self.scopes = ScopeMetrics()
        registry.register(self.scopes)
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

    def poll_finished(
        self,
        result: PollResult,
        transitions: Sequence[Transition],
        committed_at: datetime | None = None,
    ) -> None:
        """Count one finished poll of a scope and the transitions it recorded.

        `committed_at`, when the transaction that recorded them committed, is what their
        detection delays run to; without it none is observed.
        """
        self.scopes.poll_finished(result, transitions, committed_at)

    def forget_scopes(self, scopes: Iterable[Scope]) -> None:
        """Drop the poll series of scopes no longer polled, as a restart would."""
        self.scopes.forget(scopes)

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
class Body:
    """A response body: its length, and its bytes in chunks to write in order."""

    length: int
    chunks: Iterable[bytes]


@dataclass(frozen=True, slots=True)
class Exposition:
    """One rendered scrape: its `Content-Type` and its text, part plain and part gzipped."""

    content_type: str
    parts: tuple[bytes | Member, ...]

    def plain(self) -> Body:
        """The text as it is; gzipped parts are decompressed one at a time as they are written."""
        length = sum(part.size if isinstance(part, Member) else len(part) for part in self.parts)
        chunks = (part.text() if isinstance(part, Member) else part for part in self.parts)
        return Body(length, chunks)

    def gzipped(self) -> Body:
        """The text as a series of gzip members, which a gzip reader reads as one text."""
        members = [
            part.data if isinstance(part, Member) else gzip_member(part).data for part in self.parts
        ]
        return Body(sum(len(member) for member in members), members)

    def text(self) -> bytes:
        """The whole text at once (for tests and tools; a scrape streams `plain()`)."""
        return b"".join(self.plain().chunks)


#: The families that print their own text.
_RENDERING = (ImageFamily, ScopeFamily)


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
    default, OpenMetrics when asked. Families that render their own text (per image, per
    scope) print it in their place; prometheus_client's encoder prints the others.
    """
    encoder, content_type = choose_encoder(accept or "")
    families = list(registry.collect())
    if _escaping(content_type) not in _VERBATIM_ESCAPINGS or not any(
        isinstance(family, _RENDERING) for family in families
    ):
        return Exposition(content_type, (encoder(_Families(families)),))
    openmetrics = content_type.startswith("application/openmetrics-text")
    parts: list[bytes | Member] = []
    for rendering, group in groupby(families, key=lambda family: isinstance(family, _RENDERING)):
        if rendering:
            rendered = cast(Iterable[ImageFamily | ScopeFamily], group)
            parts.extend(part for family in rendered for part in family.exposition(openmetrics))
        else:
            parts.append(encoder(_Families(list(group))).removesuffix(_OPENMETRICS_EOF))
    if openmetrics:
        parts.append(_OPENMETRICS_EOF)
    return Exposition(content_type, tuple(parts))
