"""CPU time of one poll cycle of many images, next to plain botocore paging the same pages.

Issue 2's figure: 10,000 images in one region, served by the simulator in a child process (so
its CPU is not counted here). For each repetition, interleaved, it measures this process's CPU
time (`time.process_time()`, every thread) of:

- botocore alone: a paginator with PageSize 200 collecting the items, the floor;
- the monitor's real `Cycle.run()` for (a) a first cycle into a fresh SQLite file (all images
  new), (b) an unchanged cycle, (c) a cycle in which 1% of the images transitioned;

and prints the medians and ratios, the peak RSS of this process, and the SQL statements an
unchanged cycle issues at 1,000 images and at `--images` (they must be equal).
`--profile first|unchanged|transition` prints where one such cycle spends its CPU instead.
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
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAGE_SIZE = 200
REGION = "us-east-1"
SMALL = 1_000
GOALS = {"first": 2.0, "unchanged": 1.3, "transition": 1.3}
RSS_GOAL_MB = 200
SCENARIOS = {
    "first": "(a) first cycle, all new",
    "unchanged": "(b) unchanged cycle",
    "transition": "(c) 1% transition",
}


class Endpoint:
    """The simulator server with `images` seeded images, in a child process (`endpoint.py`)."""

    def __init__(self, images: int) -> None:
        env = {**os.environ, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"}
        self._process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("endpoint.py")), "--images", str(images)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        ready = self._read()
        if not ready.startswith("ready "):
            raise RuntimeError(f"the endpoint did not start: {ready!r}")
        self.url = ready.split()[1]

    def _read(self) -> str:
        assert self._process.stdout is not None
        return self._process.stdout.readline().strip()

    def _send(self, command: str) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()

    def transition(self, count: int) -> None:
        """Force `count` images into a new state; returns once the endpoint has done it."""
        self._send(f"transition {count}")
        answer = self._read()
        if answer != "ok":
            raise RuntimeError(f"the endpoint answered {answer!r}")

    def close(self) -> None:
        self._send("quit")
        self._process.wait(timeout=30)


def use_endpoint(url: str) -> None:
    """Point botocore (the monitor's and the floor's) at `url`, with fake credentials only."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "FASTLAUNCH_MONITOR_DATABASE_URL"):
        os.environ.pop(name, None)
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION=REGION,
        AWS_ENDPOINT_URL=url,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )


def quiet_logging() -> None:
    """Log as the daemon does by default (INFO, text), into /dev/null instead of journald.

    Formatting the per-transition lines is the monitor's CPU; journald's is not.
    """
    from monitor.logs import setup_logging

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


def botocore_pages() -> Callable[[], int]:
    """The floor: plain botocore paging every image into a list; returns how many it got."""
    import boto3
    from botocore.config import Config

    client = boto3.Session().client(
        "ec2", region_name=REGION, config=Config(retries={"mode": "standard"})
    )
    paginator = client.get_paginator("describe_fast_launch_images")

    def page_all() -> int:
        items: list[dict[str, Any]] = []
        for page in paginator.paginate(PaginationConfig={"PageSize": PAGE_SIZE}):
            items.extend(page["FastLaunchImages"])
        return len(items)

    return page_all


class Monitor:
    """The monitor's real objects over one target and region; a fresh database on `open()`."""

    def __init__(self, folder: Path) -> None:
        from monitor.daemon import build_sources
        from monitor.settings import parse_settings

        self._folder = folder
        self.settings = parse_settings(
            self._toml(folder / "unused.sqlite3"),
            source="bench",
            env={},
            base_dir=folder,
        )
        # Sources live as long as the daemon does: their clients and account id are reused,
        # so botocore's model loading and the STS call are not part of any measured cycle.
        self.sources = build_sources(self.settings)
        for source in self.sources:
            source.account_id()
            for region in source.regions:
                source.check(region)

    def _toml(self, database: Path) -> str:
        return (
            f'[database]\nurl = "sqlite:///{database}"\n'
            f'[[targets]]\nname = "bench"\nregions = ["{REGION}"]\n'
        )

    @contextmanager
    def open(self) -> Iterator[Opened]:
        """A new, migrated SQLite file and a `Cycle` over it, wired as `open_runtime` does."""
        from monitor.current import CurrentState
        from monitor.cycle import Cycle
        from monitor.metrics import build_registry
        from monitor.settings import parse_settings
        from monitor.store import Store, create_engine_for, upgrade

        database = Path(tempfile.mkdtemp(dir=self._folder)) / "history.sqlite3"
        settings = parse_settings(
            self._toml(database), source="bench", env={}, base_dir=self._folder
        )
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


@dataclass(slots=True)
class Opened:
    engine: Any
    cycle: Any

    def run(self, expected_transitions: int) -> None:
        """One cycle; fails loudly if it did not do what the scenario is about."""
        result = self.cycle.run()
        if result.failed or result.transitions != expected_transitions:
            raise RuntimeError(
                f"expected {expected_transitions} transitions, got: {result.summary()}"
            )


@dataclass(slots=True)
class Samples:
    monitor: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in SCENARIOS})
    floor: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in SCENARIOS})


def measure(monitor: Monitor, endpoint: Endpoint, images: int, repeat: int) -> Samples:
    """`repeat` rounds of: floor, first; floor, unchanged; floor, 1% transition."""
    floor = botocore_pages()
    changed = max(1, images // 100)
    samples = Samples()
    for _ in range(repeat):
        with monitor.open() as opened:
            for scenario, transitions in (
                ("first", images),
                ("unchanged", 0),
                ("transition", changed),
            ):
                with cpu(samples.floor[scenario]):
                    got = floor()
                if got != images:
                    raise RuntimeError(f"botocore paged {got} images, not {images}")
                if scenario == "transition":
                    endpoint.transition(changed)
                with cpu(samples.monitor[scenario]):
                    opened.run(transitions)
    return samples


def count_statements(monitor: Monitor, images: int) -> int:
    """SQL statements (BEGIN and COMMIT included) of an unchanged cycle after a first one."""
    from sqlalchemy import event

    with monitor.open() as opened:
        opened.run(images)
        statements: list[str] = []

        def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            statements.append(statement)

        def count_commit(_conn: Any) -> None:
            statements.append("COMMIT")

        event.listen(opened.engine, "before_cursor_execute", count)
        event.listen(opened.engine, "commit", count_commit)
        opened.run(0)
        return len(statements)


def profile(monitor: Monitor, endpoint: Endpoint, images: int, scenario: str) -> None:
    """Print the functions one cycle of `scenario` spends the most CPU in."""
    profiler = cProfile.Profile()
    with monitor.open() as opened:
        if scenario != "first":
            opened.run(images)
        transitions = {"first": images, "unchanged": 0, "transition": max(1, images // 100)}
        if scenario == "transition":
            endpoint.transition(transitions[scenario])
        gc.collect()
        # cProfile sees only this thread: run the scope inline rather than in the pool.
        profiler.enable()
        (source,) = monitor.sources
        applied = opened.cycle.poll_scope(source, REGION)
        profiler.disable()
    if applied is None or len(applied.transitions) != transitions[scenario]:
        raise RuntimeError(f"the profiled cycle did not do what {scenario} means")
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)


def report(samples: Samples, images: int, repeat: int, counts: dict[int, int]) -> None:
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\n{images:,} images in one region, {-(-images // PAGE_SIZE)} pages of {PAGE_SIZE}; "
        f"CPU seconds of this process, median of {repeat}"
    )
    print(f"{'cycle':<26} {'monitor':>8} {'botocore':>9} {'ratio':>6}  goal")
    for scenario, title in SCENARIOS.items():
        ours = statistics.median(samples.monitor[scenario])
        floor = statistics.median(samples.floor[scenario])
        ratio = ours / floor
        verdict = "ok" if ratio <= GOALS[scenario] else "MISSED"
        print(
            f"{title:<26} {ours:>8.3f} {floor:>9.3f} {ratio:>5.2f}x  "
            f"<= {GOALS[scenario]:.1f}x {verdict}"
        )
    verdict = "ok" if rss_mb <= RSS_GOAL_MB else "MISSED"
    print(f"peak RSS of this process: {rss_mb:.0f} MB  (goal <= {RSS_GOAL_MB} MB) {verdict}")
    sizes = sorted(counts)
    equal = "equal" if len(set(counts.values())) == 1 else "NOT EQUAL"
    listed = ", ".join(f"{size:,} images: {counts[size]}" for size in sizes)
    print(f"SQL statements of an unchanged cycle: {listed} ({equal})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="images in the region")
    parser.add_argument("--repeat", type=int, default=5, help="rounds of each measurement")
    parser.add_argument("--profile", choices=tuple(SCENARIOS), help="profile one cycle instead")
    args = parser.parse_args()
    if args.images < 100 or args.repeat < 1:
        parser.error("--images must be at least 100 and --repeat at least 1")

    quiet_logging()
    with tempfile.TemporaryDirectory(prefix="fastlaunch-bench-") as folder:
        endpoint = Endpoint(args.images)
        try:
            use_endpoint(endpoint.url)
            monitor = Monitor(Path(folder))
            if args.profile:
                profile(monitor, endpoint, args.images, args.profile)
                return 0
            samples = measure(monitor, endpoint, args.images, args.repeat)
            counts = {args.images: count_statements(monitor, args.images)}
        finally:
            endpoint.close()
        small = Endpoint(SMALL)
        try:
            use_endpoint(small.url)
            counts[SMALL] = count_statements(Monitor(Path(folder)), SMALL)
        finally:
            small.close()
    report(samples, args.images, args.repeat, counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
