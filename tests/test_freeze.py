"""What lives as long as the process is frozen out of full collections, and no garbage with it."""

from __future__ import annotations

import gc
import weakref

from monitor.service.daemon import freeze_long_lived


class Node:
    me: Node | None = None


def test_freezing_collects_the_garbage_first_and_exempts_everything_alive():
    alive = [Node() for _ in range(1_000)]
    garbage = Node()
    garbage.me = garbage  # a reference cycle: only the collector can free it
    gone = weakref.ref(garbage)
    del garbage
    before = gc.get_freeze_count()

    freeze_long_lived()
    try:
        assert gone() is None
        assert gc.get_freeze_count() >= before + len(alive)
    finally:
        gc.unfreeze()
