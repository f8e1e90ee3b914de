"""CPU time of one poll cycle of many images, next to plain botocore paging the same pages.

Issue 2's figure: 10,000 images in one region, served by the simulator in a child process
(`endpoint.py`), so the endpoint's CPU is not counted here. Each repetition measures, with
`time.process_time()` (every thread of this process), one after the other:

- botocore alone (a paginator with PageSize 200 collecting the items: the floor), then
  (a) the monitor's real `Cycle.run()` into a fresh SQLite file, every image new;
- the floor again, then (b) an unchanged cycle;
- the floor again, then (c) a cycle in which 1% of the images transitioned;

and prints the medians and ratios, this process's peak RSS, and how many SQL statements an
unchanged cycle issues at 1,000 images and at `--images` (they must be equal).
`--profile first|unchanged|transition` prints where one such cycle spends its time instead.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import logging
import os
import pstats
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from endpoint_child import EndpointChild, use_endpoint
from sqlalchemy import Connection, Engine, event

from monitor.aws.sessions import TargetSource
from monitor.config.settings import Settings, parse_settings
from monitor.core.logs import setup_logging
from monitor.exposition.current import CurrentState
from monitor.exposition.metrics import build_registry
from monitor.poll.cycle import Cycle
from monitor.service.daemon import build_sources
from monitor.store import Store, create_engine_for, upgrade

PAGE_SIZE = 200
REGION = "us-east-1"
SMALL = 1_000
RSS_GOAL_MB = 200

#: Each scenario's title and the issue's goal for its ratio to the floor (`None`: no goal).
SCENARIOS: dict[str, tuple[str, float | None]] = {
    "first": ("(a) first cycle, all new", 2.0),
    "unchanged": ("(b) unchanged cycle", 1.3),
    "transition": ("(c) 1% transition", None),
}


class Endpoint(EndpointChild):
    """The simulator server with `images` seeded images, in a child process (`endpoint.py`)."""

    def __init__(self, images: int) -> None:
        script = str(Path(__file__).with_name("endpoint.py"))
        super().__init__([sys.executable, script, "--images", str(images)])

    def transition(self, count: int) -> None:
        """Force `count` images into a new state; returns once the endpoint has done it."""
        self.ask(f"transition {count}")

    def close(self) -> None:
        """Stop the child and wait for it."""
        super().close(timeout=30)


def log_like_the_daemon() -> None:
    """Log as the daemon does by default (INFO, text), into /dev/null instead of stderr.

    Formatting and writing the per-transition lines is the monitor's CPU; journald's is not.
    """
    setup_logging("INFO", "text")
    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sink)


@contextmanager
def cpu(samples: list[float]) -> Iterator[None]:
    """Append the CPU seconds the block took (all threads of this process) to `samples`."""
    gc.collect()
    started = time.process_time()
    yield
    samples.append(time.process_time() - started)


def botocore_floor() -> Callable[[], int]:
    """Plain botocore paging every image into a list; the callable returns how many it got."""
    client = boto3.Session().client(
        "ec2", region_name=REGION, config=Config(retries={"mode": "standard"})
    )
    paginator = client.get_paginator("describe_fast_launch_images")

    def page_all() -> int:
        items: list[dict[str, Any]] = []
        for page in paginator.paginate(PaginationConfig={"PageSize": PAGE_SIZE}):
            items.extend(page["FastLaunchImages"])
        return len(items)

    page_all()  # botocore loads the paginator's model on first use
    return page_all


def settings_for(database: Path) -> Settings:
    """One target in `REGION` (credentials and endpoint from the environment), SQLite."""
    toml = (
        f'[database]\nurl = "sqlite:///{database}"\n'
        f'[[targets]]\nname = "bench"\nregions = ["{REGION}"]\n'
    )
    return parse_settings(toml, source="bench", env={}, base_dir=database.parent)


@dataclass(frozen=True, slots=True)
class Opened:
    """A cycle over a fresh database."""

    engine: Engine
    cycle: Cycle

    def run(self, expected_transitions: int) -> None:
        """One cycle; fails loudly if it did not do what the scenario is about."""
        result = self.cycle.run()
        if result.failed or result.transitions != expected_transitions:
            raise RuntimeError(
                f"expected {expected_transitions} transitions, got: {result.summary()}"
            )


class Monitor:
    """The monitor's real objects over one target and region; a fresh database per `open()`."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        # Sources live as long as the daemon: their clients and account id are made once and
        # reused, so botocore's model loading and the STS call belong to no measured cycle.
        self.sources: list[TargetSource] = build_sources(settings_for(folder / "unused.sqlite3"))
        for source in self.sources:
            source.account_id()
            for region in source.regions:
                source.check(region)

    @contextmanager
    def open(self) -> Iterator[Opened]:
        """A new, migrated SQLite file and a `Cycle` over it, wired as `open_runtime` does."""
        settings = settings_for(Path(tempfile.mkdtemp(dir=self._folder)) / "history.sqlite3")
        engine = create_engine_for(settings.database.url)
        upgrade(engine)
        store = Store(engine)
        current = CurrentState()
        current.load(store.current_images())
        _registry, metrics = build_registry(current)
        metrics.set_leader(True)
        cycle = Cycle(
            self.sources,
            store,
            current,
            metrics,
            max_concurrency=settings.monitor.max_concurrency,
        )
        try:
            yield Opened(engine, cycle)
        finally:
            cycle.close()
            engine.dispose()


def measure(
    monitor: Monitor, endpoint: Endpoint, images: int, repeat: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """CPU samples (the monitor's, the floor's) per scenario, `repeat` interleaved rounds."""
    floor = botocore_floor()
    changed = max(1, images // 100)
    ours: dict[str, list[float]] = {scenario: [] for scenario in SCENARIOS}
    floors: dict[str, list[float]] = {scenario: [] for scenario in SCENARIOS}
    for _ in range(repeat):
        with monitor.open() as opened:
            for scenario, transitions in (
                ("first", images),
                ("unchanged", 0),
                ("transition", changed),
            ):
                with cpu(floors[scenario]):
                    paged = floor()
                if paged != images:
                    raise RuntimeError(f"botocore paged {paged} images, not {images}")
                if scenario == "transition":
                    endpoint.transition(changed)
                with cpu(ours[scenario]):
                    opened.run(transitions)
    return ours, floors


def unchanged_statements(monitor: Monitor, images: int) -> list[str]:
    """The first word of every SQL statement of an unchanged cycle (BEGIN and COMMIT too)."""
    statements: list[str] = []

    def on_execute(_conn: Connection, _cursor: Any, statement: str, *_rest: Any) -> None:
        statements.append(statement.split(None, 1)[0].upper())

    def on_commit(_conn: Connection) -> None:
        statements.append("COMMIT")

    with monitor.open() as opened:
        opened.run(images)
        event.listen(opened.engine, "before_cursor_execute", on_execute)
        event.listen(opened.engine, "commit", on_commit)
        opened.run(0)
    return statements


def profile(monitor: Monitor, endpoint: Endpoint, images: int, scenario: str) -> None:
    """Print where one cycle of `scenario` spends its time: the monitor's functions first."""
    transitions = {"first": images, "unchanged": 0, "transition": max(1, images // 100)}
    profiler = cProfile.Profile()
    with monitor.open() as opened:
        if scenario != "first":
            opened.run(images)
        if scenario == "transition":
            endpoint.transition(transitions[scenario])
        gc.collect()
        # cProfile sees only its own thread: poll the one scope here, not in the pool.
        (source,) = monitor.sources
        profiler.enable()
        applied = opened.cycle.poll_scope(source, REGION)
        profiler.disable()
    if applied is None or len(applied.transitions) != transitions[scenario]:
        raise RuntimeError(f"the profiled cycle is not a {scenario} cycle")
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("cumulative").print_stats(r"/monitor/", 30)
    stats.sort_stats("tottime").print_stats(25)


def _verdict(met: bool) -> str:
    return "ok" if met else "MISSED"


def report(
    ours: dict[str, list[float]],
    floors: dict[str, list[float]],
    images: int,
    repeat: int,
    statements: dict[int, list[str]],
) -> None:
    """Print the table of medians and ratios, the peak RSS and the statement counts."""
    pages = -(-images // PAGE_SIZE)
    print(
        f"\n{images:,} images in one region, {pages} pages of {PAGE_SIZE}; "
        f"CPU seconds of the benchmark process, median of {repeat} rounds;\n"
        "ratio: median of each round's cycle / the botocore floor measured just before it"
    )
    print(f"{'cycle':<26} {'monitor':>8} {'botocore':>9} {'ratio':>6}  goal")
    for scenario, (title, goal) in SCENARIOS.items():
        monitor_cpu = statistics.median(ours[scenario])
        floor_cpu = statistics.median(floors[scenario])
        # Paired: other load on the machine drifts, and moves a cycle and the floor measured
        # just before it together.
        pairs = zip(ours[scenario], floors[scenario], strict=True)
        ratio = statistics.median(cycle / floor for cycle, floor in pairs)
        verdict = "-" if goal is None else f"<= {goal:.1f}x {_verdict(ratio <= goal)}"
        print(f"{title:<26} {monitor_cpu:>8.3f} {floor_cpu:>9.3f} {ratio:>5.2f}x  {verdict}")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(
        f"peak RSS of the benchmark process: {rss_mb:.0f} MB "
        f"(goal <= {RSS_GOAL_MB} MB) {_verdict(rss_mb <= RSS_GOAL_MB)}"
    )
    counts = {size: len(listed) for size, listed in statements.items()}
    equal = "equal" if len(set(counts.values())) == 1 else "NOT EQUAL"
    print(f"SQL statements of an unchanged cycle ({equal}):")
    for size in sorted(statements):
        print(f"  {size:>6,} images: {counts[size]} ({', '.join(statements[size])})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="images in the region")
    parser.add_argument("--repeat", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--profile", choices=tuple(SCENARIOS), help="profile one cycle instead")
    args = parser.parse_args()
    if args.images < 100 or args.repeat < 1:
        parser.error("--images must be at least 100 and --repeat at least 1")

    log_like_the_daemon()
    statements: dict[int, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="fastlaunch-bench-") as folder:
        endpoint = Endpoint(args.images)
        try:
            use_endpoint(endpoint.url, REGION)
            monitor = Monitor(Path(folder))
            if args.profile:
                profile(monitor, endpoint, args.images, args.profile)
                return 0
            ours, floors = measure(monitor, endpoint, args.images, args.repeat)
            statements[args.images] = unchanged_statements(monitor, args.images)
        finally:
            endpoint.close()
        if args.images != SMALL:
            small = Endpoint(SMALL)
            try:
                use_endpoint(small.url, REGION)
                statements[SMALL] = unchanged_statements(Monitor(Path(folder)), SMALL)
            finally:
                small.close()
    report(ours, floors, args.images, args.repeat, statements)
    return 0


if __name__ == "__main__":
    sys.exit(main())
