"""Retention: old poll rows, ended alerts and old transitions removed in small batches.

Every batch is its own short write transaction, and the pruner rests between batches for as
long as the batch took: SQLite has one writer at a time, so a poll's write waits for at most
one batch, and PostgreSQL's vacuum is never held back by one long transaction.

What is never removed, whatever its age:
- the newest poll of every scope (`status` shows it) and any poll a transition refers to;
- the newest transition of every image (`status`, and what its next transition is diffed and
  its alerts paired against);
- an alert that is not finished (pending or retrying), a firing whose image is still in the
  state it alerted about, and a firing whose resolve is not yet prunable: a firing and its
  resolve go together, so the outbox never holds a firing whose resolve it forgot — that
  would look like an alert still open, and the image coming back would not fire again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    delete,
    exists,
    not_,
    or_,
    select,
    tuple_,
)

from monitor.store.engine import database_errors, write_transaction
from monitor.store.schema import (
    alert_attempts,
    alert_outbox,
    history,
    images,
    polls,
    same_alert_episode,
)

if TYPE_CHECKING:
    from monitor.config.settings import DatabaseSettings

#: How long one transaction of a prune should take: a write waiting for it (a poll's) is
#: delayed by about this much. Batches of polls and transitions are sized to it as they go,
#: from `FIRST_BATCH` rows, between `SMALLEST_BATCH` and their table's most.
BATCH_SECONDS = 0.01
FIRST_BATCH = 500
SMALLEST_BATCH = 50

#: The most rows removed in one transaction, per table.
POLL_BATCH = 10_000
HISTORY_BATCH = 10_000
ALERT_BATCH = 500

#: Free pages SQLite returns to the file system per transaction after a prune, at most; sized
#: to `BATCH_SECONDS` like the batches (moving pages costs more in a larger file).
VACUUM_PAGES = 2000
FIRST_VACUUM_PAGES = 100

#: Keys of `Pruned.removed`, in the order they are reported.
TABLES = ("polls", "history", "alert_outbox", "alert_attempts")


@dataclass(frozen=True, slots=True)
class Retention:
    """How long each kind of row is kept, in seconds; 0 keeps it for ever."""

    polls: float
    alerts: float
    history: float


def retention_of(database: DatabaseSettings) -> Retention:
    """The retention `[database]` sets."""
    return Retention(
        polls=database.poll_retention,
        alerts=database.alert_retention,
        history=database.history_retention,
    )


@dataclass(slots=True)
class Pruned:
    """What one prune did: rows removed per table, and how long its transactions took."""

    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    transactions: int = 0
    longest_transaction: float = 0.0
    vacuumed_pages: int = 0
    #: False when it was stopped before it was done (shutdown, leadership lost).
    complete: bool = True

    @property
    def total(self) -> int:
        return sum(self.removed.values())

    def summary(self) -> str:
        """`"removed 120 polls, 0 history, …"`, for a log line."""
        counts = ", ".join(f"{count} {table}" for table, count in self.removed.items())
        return f"removed {counts} in {self.transactions} transactions"


class _Batches:
    """Runs batches as short transactions, resting between them, until told to stop."""

    def __init__(self, engine: Engine, pruned: Pruned, keep_going: Callable[[], bool]) -> None:
        self._engine = engine
        self._pruned = pruned
        self._keep_going = keep_going

    def run(self, batch: Callable[[Connection], bool], paced: _Pace | None = None) -> bool:
        """Run `batch` until it says it is done; False if stopped first.

        `paced`, when given, is told how long each transaction took, to size the next.
        """
        while True:
            if not self._keep_going():
                self._pruned.complete = False
                return False
            with write_transaction(self._engine) as connection:
                # Timed from the lock held (SQLite) to the commit: waiting for another
                # writer is not this batch's length.
                started = time.monotonic()
                more = batch(connection)
            took = time.monotonic() - started
            self._pruned.transactions += 1
            self._pruned.longest_transaction = max(self._pruned.longest_transaction, took)
            if not more:
                return True
            if paced is not None:
                paced.took(took)
            # Give the other writers a turn as long as this one had.
            time.sleep(took)


def prune(
    engine: Engine,
    retention: Retention,
    now: datetime,
    *,
    keep_going: Callable[[], bool] = lambda: True,
) -> Pruned:
    """Remove what `retention` no longer keeps as of `now`; returns what was removed.

    Alerts go first, then transitions, then polls (a transition keeps its poll). Raises
    `StoreError` when the database fails; what earlier batches removed stays removed.
    """
    pruned = Pruned()
    batches = _Batches(engine, pruned, keep_going)
    with database_errors(engine, "pruning old rows"):
        if retention.alerts > 0:
            cutoff = now - timedelta(seconds=retention.alerts)
            if not batches.run(_AlertBatch(cutoff, pruned.removed)):
                return pruned
        if retention.history > 0:
            cutoff = now - timedelta(seconds=retention.history)
            history_batch = _HistoryBatch(cutoff, pruned.removed)
            if not batches.run(history_batch, history_batch.pace):
                return pruned
        if retention.polls > 0:
            cutoff = now - timedelta(seconds=retention.polls)
            poll_batch = _PollBatch(cutoff, pruned.removed)
            if not batches.run(poll_batch, poll_batch.pace):
                return pruned
        if pruned.total and engine.dialect.name == "sqlite":
            _vacuum_incrementally(batches, pruned)
    return pruned


class _Pace:
    """A batch size that follows how long the last batch took, toward `BATCH_SECONDS`."""

    def __init__(self, first: int, most: int) -> None:
        self._most = most
        self.size = min(most, first)

    def took(self, seconds: float) -> None:
        # At most doubled at a time: one quick batch (a cached page) proves little.
        wanted = self.size * min(2.0, BATCH_SECONDS / max(seconds, 1e-6))
        self.size = min(self._most, max(SMALLEST_BATCH, int(wanted)))


class _KeysetBatch:
    """A batch over `(time column, id)` in order, resumed after the last key it reached."""

    def __init__(self, table: Any, time_column: Any, cutoff: datetime, most: int) -> None:
        self._table = table
        self._key = tuple_(time_column, table.c.id)
        self._time = time_column
        self._cutoff = cutoff
        self.pace = _Pace(FIRST_BATCH, most)
        self._after: tuple[datetime, int] | None = None

    def _range(self, connection: Connection) -> tuple[Any, bool]:
        """The condition selecting this batch's rows, and whether rows are left after it."""
        # Plain bounds beside the row values: they are what bound the index range.
        since: Any = True
        if self._after is not None:
            since = and_(self._time >= self._after[0], self._key > tuple_(*self._after))
        last = connection.execute(
            select(self._time, self._table.c.id)
            .where(since, self._time < self._cutoff)
            .order_by(self._time, self._table.c.id)
            .offset(self.pace.size - 1)
            .limit(1)
        ).first()
        if last is None:
            return and_(since, self._time < self._cutoff), False
        self._after = (last[0], last[1])
        # Older than the cutoff, as `last` is: no need to say it again.
        return and_(since, self._time <= last[0], self._key <= tuple_(*self._after)), True


class _PollBatch(_KeysetBatch):
    def __init__(self, cutoff: datetime, removed: dict[str, int]) -> None:
        super().__init__(polls, polls.c.started_at, cutoff, POLL_BATCH)
        self._removed = removed

    def __call__(self, connection: Connection) -> bool:
        in_range, more = self._range(connection)
        newer = polls.alias("newer")
        removed = connection.execute(
            delete(polls).where(
                in_range,
                not_(exists().where(history.c.poll_id == polls.c.id)),
                exists().where(
                    newer.c.target == polls.c.target,
                    newer.c.account_id == polls.c.account_id,
                    newer.c.region == polls.c.region,
                    newer.c.started_at > polls.c.started_at,
                ),
            )
        ).rowcount
        self._removed["polls"] += removed
        return more


class _HistoryBatch(_KeysetBatch):
    def __init__(self, cutoff: datetime, removed: dict[str, int]) -> None:
        super().__init__(history, history.c.transition_time, cutoff, HISTORY_BATCH)
        self._removed = removed

    def __call__(self, connection: Connection) -> bool:
        in_range, more = self._range(connection)
        newer = history.alias("newer")
        # "Newest" in the order `history` lists them: by transition time, then as recorded.
        removed = connection.execute(
            delete(history).where(
                in_range,
                exists().where(
                    newer.c.account_id == history.c.account_id,
                    newer.c.region == history.c.region,
                    newer.c.image_id == history.c.image_id,
                    tuple_(newer.c.transition_time, newer.c.id)
                    > tuple_(history.c.transition_time, history.c.id),
                ),
            )
        ).rowcount
        self._removed["history"] += removed
        return more


_o = alert_outbox


def _finished(table: Any) -> Any:
    return or_(table.c.delivered_at.is_not(None), table.c.failed_at.is_not(None))


def _resolve_of(firing: Any, resolve: Any) -> Any:
    """`resolve` is the resolve row of the firing row `firing` (same alert and episode)."""
    return and_(resolve.c.status == "resolved", same_alert_episode(resolve, firing))


class _AlertBatch:
    """Firings whose episode ended, with their resolves and every attempt of both."""

    def __init__(self, cutoff: datetime, removed: dict[str, int]) -> None:
        self._cutoff = cutoff
        self._removed = removed
        self._after = 0

    def _prunable_firings(self) -> Any:
        resolve = _o.alias("resolve")
        resolve_kept = exists().where(
            _resolve_of(_o, resolve),
            or_(not_(_finished(resolve)), resolve.c.created_at >= self._cutoff),
        )
        resolved = exists().where(_resolve_of(_o, resolve))
        # Conservative: any image of that id in that state keeps the firing, whatever its
        # transition time (a firing's `since` is the poll's time when AWS gave none).
        still_alerting = exists().where(
            images.c.account_id == _o.c.account_id,
            images.c.region == _o.c.region,
            images.c.image_id == _o.c.image_id,
            images.c.state == _o.c.state,
        )
        return and_(
            _o.c.status == "firing",
            _o.c.id > self._after,
            _o.c.created_at < self._cutoff,
            _finished(_o),
            not_(resolve_kept),
            or_(resolved, not_(still_alerting)),
        )

    def __call__(self, connection: Connection) -> bool:
        firing_ids = list(
            connection.execute(
                select(_o.c.id).where(self._prunable_firings()).order_by(_o.c.id).limit(ALERT_BATCH)
            ).scalars()
        )
        if not firing_ids:
            return False
        self._after = firing_ids[-1]
        firing = _o.alias("firing")
        resolve_ids = list(
            connection.execute(
                select(_o.c.id).where(
                    exists().where(firing.c.id.in_(firing_ids), _resolve_of(firing, _o))
                )
            ).scalars()
        )
        ids = firing_ids + resolve_ids
        # Attempts first: SQLite enforces the foreign key, and may not cascade.
        self._removed["alert_attempts"] += connection.execute(
            delete(alert_attempts).where(alert_attempts.c.outbox_id.in_(ids))
        ).rowcount
        self._removed["alert_outbox"] += connection.execute(
            delete(_o).where(_o.c.id.in_(ids))
        ).rowcount
        return len(firing_ids) == ALERT_BATCH


def _vacuum_incrementally(batches: _Batches, pruned: Pruned) -> None:
    """Give the pages the prune freed back to the file system, a few at a time.

    Only a file created with `auto_vacuum = INCREMENTAL` (every file this version creates)
    can; an older one keeps its free pages for new rows until `db prune --vacuum`.
    """

    pace = _Pace(FIRST_VACUUM_PAGES, VACUUM_PAGES)

    def step(connection: Connection) -> bool:
        pages = pace.size
        mode = connection.exec_driver_sql("PRAGMA auto_vacuum").scalar()
        free = connection.exec_driver_sql("PRAGMA freelist_count").scalar() or 0
        if mode != SQLITE_INCREMENTAL or not free:
            return False
        # sqlite3 steps a statement once per `execute`, and this pragma frees one page per
        # step; `executescript` steps it to the end. It commits the (empty) transaction begun
        # first, so the pragma runs as a transaction of its own, still under this process's
        # writer lock.
        dbapi = connection.connection.dbapi_connection
        assert dbapi is not None
        dbapi.executescript(f"PRAGMA incremental_vacuum({pages})")
        pruned.vacuumed_pages += min(int(free), pages)
        return int(free) > pages

    batches.run(step, pace)


#: `PRAGMA auto_vacuum`'s value for INCREMENTAL.
SQLITE_INCREMENTAL = 2


def vacuum(engine: Engine) -> None:
    """Compact the database now: SQLite is rewritten (set to vacuum incrementally from then
    on), PostgreSQL's tables vacuumed. SQLite holds the write lock until it is done."""
    with database_errors(engine, "vacuuming the database"):
        if engine.dialect.name == "sqlite":
            # The connections run in the driver's autocommit mode (transactions are begun
            # explicitly), which VACUUM needs.
            raw = engine.raw_connection()
            try:
                raw.driver_connection.executescript(  # type: ignore[union-attr]
                    "PRAGMA auto_vacuum = INCREMENTAL; VACUUM;"
                )
            finally:
                raw.close()
            return
        with engine.connect() as connection:
            autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
            for table in TABLES:
                autocommit.exec_driver_sql(f"VACUUM (ANALYZE) {table}")
