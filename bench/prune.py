"""Retention on a large polls table: wall time, the longest transaction, and a cycle meanwhile.

    .venv/bin/python bench/prune.py                         # 10 million rows, SQLite and PostgreSQL
    .venv/bin/python bench/prune.py --rows 1000000 --database sqlite      # a quicker look

For each database: a fresh one at the current schema is filled (in SQL, outside the figures)
with `--rows` poll rows older than the 30-day retention, spread over `--scopes` scopes at five
minutes apart, plus each scope's newest poll (which is kept). Then:

1. a poll cycle alone, `--cycles` times: `--scopes-per-cycle` scopes polled concurrently by
   `--concurrency` threads, each poll written with `Store.apply_poll` (200 unchanged images,
   the write a real poll makes; no AWS time, so only the database's share of a cycle, which
   the prune can delay) — the median is the cycle's own duration;
2. `prune()` of everything, with a cycle starting every `--every` seconds beside it the
   whole time;
3. the figures: rows removed, wall time, transactions, the longest one, and the cycles during
   the prune (median and worst) against the cycle alone. The goal: no cycle during the prune
   takes more than twice the cycle alone (it is not delayed by more than its own duration).

PostgreSQL: `$FASTLAUNCH_MONITOR_TEST_POSTGRES_URL` (a server where a database can be created),
default `postgresql+psycopg://postgres@127.0.0.1:5432/postgres`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import sqlalchemy
from sqlalchemy import Engine, func, make_url, select

from monitor.core.model import FastLaunchImage, PollResult, Scope
from monitor.store import Store, create_engine_for, upgrade
from monitor.store.retention import Retention, prune
from monitor.store.schema import polls

NOW = datetime.now(UTC).replace(microsecond=0)
KEEP_30_DAYS = Retention(polls=30 * 86400, alerts=90 * 86400, history=0)
IMAGES_PER_POLL = 200

T = TypeVar("T")


def _fill_sqlite(engine: Engine, rows: int, scopes: int) -> None:
    oldest = NOW - timedelta(days=31) - timedelta(seconds=300 * (rows // scopes + 1))
    with engine.begin() as c:
        c.exec_driver_sql(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO polls (target, account_id, region, started_at, duration_seconds, "
            "pages, images, outcome) "
            "SELECT 'prod', printf('%012d', i % ?), 'eu-west-1', "
            "strftime('%Y-%m-%d %H:%M:%f', ?, '+' || ((i / ?) * 300) || ' seconds') || '000', "
            "0.5, 1, 200, 'ok' FROM n",
            (rows - 1, scopes, oldest.strftime("%Y-%m-%d %H:%M:%S"), scopes),
        )


def _fill_postgres(engine: Engine, rows: int, scopes: int) -> None:
    oldest = NOW - timedelta(days=31) - timedelta(seconds=300 * (rows // scopes + 1))
    with engine.begin() as c:
        c.exec_driver_sql(
            "INSERT INTO polls (target, account_id, region, started_at, duration_seconds, "
            "pages, images, outcome) "
            "SELECT 'prod', lpad((i %% %(scopes)s)::text, 12, '0'), 'eu-west-1', "
            "%(oldest)s::timestamptz + ((i / %(scopes)s) * 300) * interval '1 second', "
            "0.5, 1, 200, 'ok' FROM generate_series(0, %(last)s) AS i",
            {"scopes": scopes, "oldest": oldest, "last": rows - 1},
        )
        c.exec_driver_sql("ANALYZE polls")


def _images(account: int) -> tuple[FastLaunchImage, ...]:
    image = FastLaunchImage(
        image_id="ami-0",
        state="enabled",
        state_transition_reason="Client.UserInitiated",
        state_transition_time=NOW - timedelta(days=40),
        resource_type="snapshot",
        target_resource_count=5,
        max_parallel_launches=6,
        owner_id=f"{account:012d}",
        launch_template_id="lt-1",
        launch_template_name="win",
        launch_template_version="2",
    )
    return tuple(
        replace(image, image_id=f"ami-{account:08x}{i:09x}") for i in range(IMAGES_PER_POLL)
    )


class Cycles:
    """Poll cycles as the daemon runs them: scopes polled by a pool, each written at once."""

    def __init__(self, store: Store, scopes: int, concurrency: int) -> None:
        self._store = store
        self._scopes = [Scope("prod", f"{i:012d}", "eu-west-1") for i in range(scopes)]
        self._images = {scope: _images(i) for i, scope in enumerate(self._scopes)}
        self._pool = ThreadPoolExecutor(concurrency)

    def once(self) -> float:
        started = time.monotonic()
        now = datetime.now(UTC)
        results = [PollResult(scope, now, 0.2, 1, self._images[scope]) for scope in self._scopes]
        list(self._pool.map(lambda r: self._store.apply_poll(r, now), results))
        return time.monotonic() - started

    def beside(self, work: Callable[[], T], every: float) -> tuple[T, list[float]]:
        """Run `work`, with a cycle starting every `every` s until it ends; its result and
        the cycles' times."""
        done = threading.Event()
        times: list[float] = []

        def loop() -> None:
            while True:
                took = self.once()
                times.append(took)
                if done.wait(max(0.0, every - took)):
                    return

        runner = threading.Thread(target=loop)
        runner.start()
        try:
            result = work()
        finally:
            done.set()
            runner.join()
        return result, times

    def close(self) -> None:
        self._pool.shutdown()


@contextmanager
def _database(kind: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="prune-bench-") as folder:
            yield f"sqlite:///{Path(folder) / 'monitor.sqlite3'}"
        return
    base = os.environ.get(
        "FASTLAUNCH_MONITOR_TEST_POSTGRES_URL",
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    )
    server = make_url(base).set(drivername="postgresql+psycopg")
    name = f"prune_bench_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def run(kind: str, args: argparse.Namespace) -> None:
    with _database(kind) as url:
        engine = create_engine_for(url, pool_size=args.concurrency + 1)
        upgrade(engine)
        store = Store(engine)
        cycles = Cycles(store, args.scopes_per_cycle, args.concurrency)
        filling = time.monotonic()
        (_fill_sqlite if kind == "sqlite" else _fill_postgres)(engine, args.rows, args.scopes)
        cycles.once()  # every scope's newest poll, and its images
        filled = time.monotonic() - filling
        with engine.connect() as c:
            total = c.execute(select(func.count()).select_from(polls)).scalar_one()
        print(f"{kind}: {total:,} poll rows ({filled:.0f} s to fill)", flush=True)

        alone = [cycles.once() for _ in range(args.cycles)]
        started = time.monotonic()
        pruned, during = cycles.beside(
            lambda: prune(engine, KEEP_30_DAYS, datetime.now(UTC)), every=args.every
        )
        wall = time.monotonic() - started
        cycles.close()
        engine.dispose()

    removed = pruned.removed["polls"]
    own = statistics.median(alone)
    print(
        f"{kind}: removed {removed:,} polls in {wall:.1f} s "
        f"({removed / wall:,.0f} rows/s), {pruned.transactions} transactions, "
        f"longest {pruned.longest_transaction * 1000:.0f} ms"
    )
    print(
        f"{kind}: cycle of {args.scopes_per_cycle} polls alone: median {own * 1000:.0f} ms "
        f"(n={len(alone)}); during the prune: median {statistics.median(during) * 1000:.0f} ms, "
        f"worst {max(during) * 1000:.0f} ms (n={len(during)}); worst / alone = "
        f"{max(during) / own:.2f} (goal ≤ 2)",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--scopes", type=int, default=1000, help="scopes the rows belong to")
    parser.add_argument("--database", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--scopes-per-cycle", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--cycles", type=int, default=15, help="cycles measured alone")
    parser.add_argument("--every", type=float, default=0.5, help="seconds between cycles")
    args = parser.parse_args()
    kinds = ("sqlite", "postgres") if args.database == "both" else (args.database,)
    for kind in kinds:
        run(kind, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
