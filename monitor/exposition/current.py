"""The in-memory current state of every image, which the metrics are built from at each scrape.

The database is the record; this is its read-optimised mirror for the HTTP threads, which
must never wait on a poll cycle or on the database. A scope is replaced whole after each
successful, persisted poll, so an image a poll no longer lists disappears with it, and a
failed poll (which replaces nothing) leaves the last known values in place.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from monitor.core.diff import first_of_each
from monitor.core.model import FastLaunchImage, Scope, StoredImage

#: Told a scope's images each time they change; no images means the scope is gone.
Watcher = Callable[[Scope, tuple[StoredImage, ...]], None]


class CurrentState:
    """The current images of every scope; safe to use from several threads at once.

    `snapshot()` and `scopes()` hand out immutable tuples, so a scrape renders a consistent
    picture while a cycle replaces scopes concurrently. A scope whose images a poll finds
    unchanged keeps the very tuple it had, so what was derived from it (rendered text) stays
    valid, and its watchers hear nothing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scopes: dict[Scope, tuple[StoredImage, ...]] = {}
        self._watchers: list[Watcher] = []
        # Rebuilt on the first read after a change, not on every read.
        self._snapshot: tuple[StoredImage, ...] | None = ()
        self._ordered: tuple[tuple[Scope, tuple[StoredImage, ...]], ...] | None = ()

    def watch(self, watcher: Watcher) -> None:
        """Call `watcher` with every change of a scope from now on, in the changing thread."""
        with self._lock:
            self._watchers.append(watcher)

    def replace_scope(self, scope: Scope, images: Iterable[FastLaunchImage]) -> None:
        """Make `images` the whole current state of `scope` (after a successful persisted poll).

        Should a poll list an image id twice, the first record wins, as it does in the store.
        """
        self._replace({scope: _stored(scope, images)}, whole=False)

    def load(self, stored: Iterable[StoredImage]) -> None:
        """Replace everything with `stored` (at start, or on taking over leadership)."""
        grouped: dict[Scope, list[FastLaunchImage]] = {}
        for item in stored:
            grouped.setdefault(item.scope, []).append(item.image)
        self._replace({scope: _stored(scope, images) for scope, images in grouped.items()}, True)

    def clear(self) -> None:
        """Forget every image (on losing leadership: a standby exports no image series)."""
        self._replace({}, whole=True)

    def snapshot(self) -> tuple[StoredImage, ...]:
        """Every current image, grouped by scope and ordered by image id within one."""
        with self._lock:
            if self._snapshot is None:
                self._snapshot = tuple(
                    item for _, images in self._ordered_locked() for item in images
                )
            return self._snapshot

    def scopes(self) -> tuple[tuple[Scope, tuple[StoredImage, ...]], ...]:
        """Every scope with images and its images, in the order of `snapshot()`."""
        with self._lock:
            return self._ordered_locked()

    def _ordered_locked(self) -> tuple[tuple[Scope, tuple[StoredImage, ...]], ...]:
        if self._ordered is None:
            self._ordered = tuple(
                (scope, self._scopes[scope]) for scope in sorted(self._scopes, key=_scope_order)
            )
        return self._ordered

    def _replace(self, new: dict[Scope, tuple[StoredImage, ...]], whole: bool) -> None:
        """Set the scopes of `new` (an empty tuple removes one); if `whole`, drop all others."""
        changed: list[tuple[Scope, tuple[StoredImage, ...]]] = []
        with self._lock:
            if whole:
                new = dict.fromkeys(self._scopes, ()) | new
            for scope, images in new.items():
                if self._scopes.get(scope, ()) == images:
                    continue
                if images:
                    self._scopes[scope] = images
                else:
                    del self._scopes[scope]
                changed.append((scope, images))
            if changed:
                self._snapshot = self._ordered = None
            watchers = tuple(self._watchers)
        # Outside the lock: a watcher may take its time (rendering) without holding up scrapes.
        for scope, images in changed:
            for watcher in watchers:
                watcher(scope, images)


def _stored(scope: Scope, images: Iterable[FastLaunchImage]) -> tuple[StoredImage, ...]:
    by_id = first_of_each(images)
    return tuple(StoredImage(scope, by_id[image_id]) for image_id in sorted(by_id))


def _scope_order(scope: Scope) -> tuple[str, str, str]:
    return (scope.target, scope.account_id, scope.region)
