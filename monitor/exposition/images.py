"""The per-image families' exposition text, rendered once per change of a scope and kept gzipped.

A fleet of 100,000 images is over a million sample lines, some 170 MB of text: formatting it at
every scrape takes seconds of CPU (and the GIL, which the poll threads need), and holding it
takes as much memory again. Yet an image's lines change only when the image does. So each
scope's lines of each family are rendered when the scope changes (in the poll thread that
changed it), compressed at once into one gzip member, and kept. A scrape then only splices
members: as they are for a client that accepts gzip (a gzip file may be a series of members,
RFC 1952 §2.2, and Prometheus reads them all), decompressed on the way out for one that
does not. Held compressed, 100,000 images' 157 MB of text are 5 MB.

The lines are exactly those prometheus_client prints (the tests compare byte for byte): the
same in its text and OpenMetrics formats, for the metric-name escapings under which names print
unchanged.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.utils import floatToGoString

from monitor.core.model import KNOWN_STATES, Scope, StoredImage

TARGET_RESOURCES = "fastlaunch_image_target_resources"
MAX_PARALLEL_LAUNCHES = "fastlaunch_image_max_parallel_launches"
STATE = "fastlaunch_image_state"
STATE_TRANSITION_TIMESTAMP = "fastlaunch_image_state_transition_timestamp_seconds"
INFO = "fastlaunch_image_info"

#: The per-image families the README lists, in the order they are exposed.
IMAGE_FAMILIES: tuple[str, ...] = (
    TARGET_RESOURCES,
    MAX_PARALLEL_LAUNCHES,
    STATE,
    STATE_TRANSITION_TIMESTAMP,
    INFO,
)

# Level 1: the text is so repetitive that it compresses about as well as at level 6, in a
# third of the time.
GZIP_LEVEL = 1
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # the gzip container, not raw zlib

# prometheus_client's own number formatting (Go style), typed: it ships unannotated.
go_float: Callable[[float], str] = floatToGoString


@dataclass(frozen=True, slots=True)
class Member:
    """One gzip member of exposition text, and the length of the text it holds."""

    data: bytes
    size: int

    def text(self) -> bytes:
        """The text, decompressed (zlib lets other threads run meanwhile)."""
        return zlib.decompress(self.data, _GZIP_WBITS)


def gzip_member(text: bytes) -> Member:
    """`text` as one complete gzip member."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
    return Member(compressor.compress(text) + compressor.flush(), len(text))


def escape(value: str) -> str:
    """Escape a label value as both exposition formats do."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def states_of(state: str) -> tuple[str, ...]:
    """The states exported for an image in `state`: every known one, and its own if unknown."""
    if state in KNOWN_STATES:
        return KNOWN_STATES
    return (*KNOWN_STATES, state)


class _Numbers(dict[int, str]):
    """Counts as prometheus_client prints them, each formatted once per scope."""

    def __missing__(self, number: int) -> str:
        text = self[number] = go_float(number)
        return text


class _ScopeTemplates:
    """The constant parts of one scope's sample lines; each image's id goes in between."""

    def __init__(self, scope: Scope) -> None:
        self.numbers = _Numbers()
        self.account = escape(scope.account_id)
        self.region = escape(scope.region)
        self.target = escape(scope.target)
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
            f'",region="{self._scope.region}",state="{escape(each)}",'
            f'target="{self._scope.target}"}} {"1.0" if each == state else "0.0"}\n'
            for each in states_of(state)
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
            escape(value or "") for value in key
        )
        end = self[key] = (
            f'",launch_template_id="{template_id}",'
            f'launch_template_name="{template_name}",'
            f'launch_template_version="{template_version}",'
            f'owner_id="{owner_id}",region="{self._scope.region}",'
            f'resource_type="{resource_type}",target="{self._scope.target}"}} 1.0\n'
        )
        return end


# These run once per image and family, so what they look up per line is in locals.


def _count_lines(name: str, parts: _ScopeTemplates, images: Iterable[StoredImage]) -> Iterator[str]:
    head, tail, numbers, field = parts.head(name), parts.tail, parts.numbers, _COUNTS[name]
    for stored in images:
        count = getattr(stored.image, field)
        if count is not None:
            yield f"{head}{escape(stored.image.image_id)}{tail}{numbers[count]}\n"


def _state_lines(name: str, parts: _ScopeTemplates, images: Iterable[StoredImage]) -> Iterator[str]:
    state_parts = parts.state_parts
    for stored in images:
        yield escape(stored.image.image_id).join(state_parts[stored.image.state])


def _time_lines(name: str, parts: _ScopeTemplates, images: Iterable[StoredImage]) -> Iterator[str]:
    head, tail = parts.head(name), parts.tail
    for stored in images:
        changed_at = stored.image.state_transition_time
        if changed_at is not None:
            seconds = go_float(changed_at.timestamp())
            yield f"{head}{escape(stored.image.image_id)}{tail}{seconds}\n"


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
        yield f"{head}{escape(image.image_id)}{info_ends[key]}"


_COUNTS = {
    TARGET_RESOURCES: "target_resource_count",
    MAX_PARALLEL_LAUNCHES: "max_parallel_launches",
}

_LINES: dict[str, Callable[[str, _ScopeTemplates, Iterable[StoredImage]], Iterator[str]]] = {
    TARGET_RESOURCES: _count_lines,
    MAX_PARALLEL_LAUNCHES: _count_lines,
    STATE: _state_lines,
    STATE_TRANSITION_TIMESTAMP: _time_lines,
    INFO: _info_lines,
}


def render_scope(scope: Scope, images: Sequence[StoredImage]) -> dict[str, Member]:
    """The sample lines of each image family for one scope's images, each as a gzip member."""
    templates = _ScopeTemplates(scope)
    return {
        name: gzip_member("".join(_LINES[name](name, templates, images)).encode())
        for name in IMAGE_FAMILIES
    }


@dataclass(frozen=True, slots=True)
class _Rendered:
    images: tuple[StoredImage, ...]
    members: Mapping[str, Member]


class RenderedScopes:
    """The rendered members of every scope, kept for as long as the scope's images are the same.

    `update` is given a scope's images whenever they change (`CurrentState.watch`), and renders
    them there and then; no images (the scope is gone) forgets it. `members` gives the members
    for a scrape's images, rendering any that `update` has not been given. An entry
    is valid for the very tuple of images it was rendered from: `CurrentState` hands out the
    same tuple for as long as a scope's images are unchanged.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scopes: dict[Scope, _Rendered] = {}

    def update(self, scope: Scope, images: tuple[StoredImage, ...]) -> None:
        """Render `scope`'s new images now; no images forgets the scope."""
        if not images:
            with self._lock:
                self._scopes.pop(scope, None)
            return
        self._store(scope, images)

    def members(
        self, scopes: Sequence[tuple[Scope, tuple[StoredImage, ...]]]
    ) -> dict[str, list[Member]]:
        """For each image family, the members of `scopes`, in their order."""
        with self._lock:
            known = dict(self._scopes)
        rendered = []
        for scope, images in scopes:
            entry = known.get(scope)
            if entry is None or entry.images is not images:
                entry = self._store(scope, images)
            rendered.append(entry.members)
        return {name: [members[name] for members in rendered] for name in IMAGE_FAMILIES}

    def _store(self, scope: Scope, images: tuple[StoredImage, ...]) -> _Rendered:
        entry = _Rendered(images, render_scope(scope, images))
        with self._lock:
            self._scopes[scope] = entry
        return entry
