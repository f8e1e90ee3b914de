"""The in-memory current state of every image, which the metrics are built from at each scrape.

The database is the record; this is its read-optimised mirror for the HTTP threads, which
must never wait on a poll cycle or on the database. A scope is replaced whole after each
successful, persisted poll, so an image a poll no longer lists disappears with it, and a
failed poll (which replaces nothing) leaves the last known values in place.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from monitor.model import FastLaunchImage, Scope, StoredImage


class CurrentState:
    """The current images of every scope; safe to use from several threads at once.

    `snapshot()` hands out an immutable tuple, so a scrape renders a consistent picture
    while a cycle replaces scopes concurrently.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scopes: dict[Scope, tuple[StoredImage, ...]] = {}
        # Rebuilt on the first scrape after a change, not on every scrape.
        self._snapshot: tuple[StoredImage, ...] | None = ()

    def replace_scope(self, scope: Scope, images: Iterable[FastLaunchImage]) -> None:
        """Make `images` the whole current state of `scope` (after a successful persisted poll).

        Should a poll list an image id twice, the last record wins, as it does in the store.
        """
        stored = _stored(scope, images)
        with self._lock:
            if stored:
                self._scopes[scope] = stored
            else:
                self._scopes.pop(scope, None)
            self._snapshot = None

    def load(self, stored: Iterable[StoredImage]) -> None:
        """Replace everything with `stored` (at start, or on taking over leadership)."""
        grouped: dict[Scope, list[FastLaunchImage]] = {}
        for item in stored:
            grouped.setdefault(item.scope, []).append(item.image)
        scopes = {scope: _stored(scope, images) for scope, images in grouped.items()}
        with self._lock:
            self._scopes = scopes
            self._snapshot = None

    def clear(self) -> None:
        """Forget every image (on losing leadership: a standby exports no image series)."""
        with self._lock:
            self._scopes = {}
            self._snapshot = ()

    def snapshot(self) -> tuple[StoredImage, ...]:
        """Every current image, grouped by scope and ordered by image id within one."""
        with self._lock:
            if self._snapshot is None:
                self._snapshot = tuple(
                    item
                    for scope in sorted(self._scopes, key=_scope_order)
                    for item in self._scopes[scope]
                )
            return self._snapshot


def _stored(scope: Scope, images: Iterable[FastLaunchImage]) -> tuple[StoredImage, ...]:
    by_id = {image.image_id: image for image in images}
    return tuple(StoredImage(scope, by_id[image_id]) for image_id in sorted(by_id))


def _scope_order(scope: Scope) -> tuple[str, str, str]:
    return (scope.target, scope.account_id, scope.region)
