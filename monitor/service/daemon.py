"""The daemon: wiring, the APScheduler poll job, HTTP endpoints, systemd, signals, reload.

Signal handlers only set events; the main thread acts on them. SIGHUP reloads the config
(`Daemon.reload`). SIGTERM and SIGINT shut down in order: stop scheduling, let the in-flight
cycle finish within the stop bound (or abandon it: its transaction is never committed, so
nothing half-written remains), stop HTTP, dispose the engine.

Under systemd (`Type=notify`) the daemon reports `READY=1` once the database is migrated, HTTP
is listening and the first cycle is scheduled; `STATUS=` with each cycle's summary;
`RELOADING=1` and `READY=1` around a reload; `STOPPING=1` as it begins to stop. With
`WatchdogSec=` it pings `WATCHDOG=1` every half of it while healthy (`Daemon.watchdog_problem`):
a hung poll loop, a stopped scheduler or an unreachable database let systemd restart it.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Final

from apscheduler.executors.pool import ThreadPoolExecutor as SchedulerPool
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry, disable_created_metrics
from sqlalchemy import Engine

from monitor.alerts.dispatcher import Dispatcher
from monitor.alerts.outbox import Outbox, alert_writer
from monitor.alerts.rules import Receiver, alert_policy
from monitor.aws.poll_processes import PollProcesses
from monitor.aws.sessions import BaseSessions, Source, TargetSource
from monitor.config.settings import MonitorSettings, Settings
from monitor.core.errors import ConfigError, SchemaBehindError, StoreError
from monitor.core.malloc import return_large_buffers
from monitor.core.model import PollResult, Scope
from monitor.exposition.current import CurrentState
from monitor.exposition.http import HttpServer, Readiness, serve, server_tls_context
from monitor.exposition.metrics import MonitorMetrics, build_registry
from monitor.poll.cycle import Clock, Cycle, CycleResult, poll_processes_advice, utc_now
from monitor.service.clock_steps import SteadyScheduler
from monitor.service.notify import Notifier, Watchdog, monotonic_usec, watchdog_interval
from monitor.service.preflight import preflight
from monitor.store import Store, create_engine_for, ensure_schema_current, upgrade
from monitor.store.guard import DatabaseFile, SqliteGuard, acquire_sqlite_guard
from monitor.store.leader import Leadership, leadership_for
from monitor.store.repository import OnApplied
from monitor.store.retention import Pruned, prune, retention_of

log = logging.getLogger(__name__)

#: On SIGTERM the in-flight poll is finished or abandoned within 10 s.
STOP_BOUND_SECONDS = 8.0

#: Every job: never two runs at once, missed runs collapsed into one, never dropped as late.
ONE_RUN_AT_A_TIME: Final = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}

#: The share of the interval the poll job waits for its polls before it returns.
CYCLE_WAIT_SHARE = 0.9

#: How often the dispatcher looks for due alerts (a cheap indexed read when none are due).
DISPATCH_TICK_SECONDS = 1.0

#: How often the leader applies the retention, and how long after it starts it first does:
#: soon, so that a daemon restarted more often than hourly still prunes.
PRUNE_EVERY_SECONDS = 3600.0
PRUNE_FIRST_AFTER_SECONDS = 60.0

#: How often an instance checks (or tries to take) leadership; a standby takes over within this
#: (or a quarter interval, if shorter) of the leader's lock being released.
LEADERSHIP_TICK_SECONDS = 5.0

#: How many intervals (with their jitter) may pass without a successful poll before `/readyz`
#: fails, and without progress of the poll loop before the watchdog deems it hung.
STALE_INTERVALS = 3


def hung_after(monitor: MonitorSettings) -> float:
    """Seconds without progress of the poll loop after which it counts as hung.

    Progress is a cycle starting or finishing. A healthy loop starts one every interval plus
    jitter, so three of those without either means a cycle stuck in flight or a scheduler
    that no longer fires: the readiness horizon too, so a hung daemon is unready first. A
    cycle of failing polls is not hung: it ends once botocore's timeouts and retries do.
    """
    return STALE_INTERVALS * (monitor.interval + monitor.jitter)


def build_sources(settings: Settings) -> list[TargetSource]:
    """One `TargetSource` per configured target; raises `ConfigError` for unusable targets."""
    sessions = BaseSessions()
    return [
        TargetSource(i, t, settings.aws, sessions=sessions) for i, t in enumerate(settings.targets)
    ]


def _alert_writer(settings: Settings) -> OnApplied | None:
    receivers = [Receiver(w.name, w.states, w.send_resolved) for w in settings.webhooks]
    if not receivers:
        return None
    return alert_writer(alert_policy(receivers, settings.monitor.stuck_after))


def _dispatcher(
    settings: Settings,
    outbox: Outbox,
    metrics: MonitorMetrics,
    clock: Clock,
    stop: threading.Event,
) -> Dispatcher | None:
    if not settings.webhooks:
        return None
    return Dispatcher(outbox, settings.webhooks, metrics, clock=clock, stop=stop)


def _cycle(
    settings: Settings,
    sources: Sequence[TargetSource],
    store: Store,
    current: CurrentState,
    metrics: MonitorMetrics,
    clock: Clock,
    stop: threading.Event,
) -> Cycle:
    """The poll cycle of `sources`; in poll processes of their own if the config says so."""
    monitor = settings.monitor
    polled: Sequence[Source] = sources
    on_close = None
    if monitor.poll_processes:
        processes = PollProcesses(
            sources,
            settings.aws,
            processes=monitor.poll_processes,
            threads=monitor.max_concurrency,
        )
        polled, on_close = processes.sources, processes.close
    return Cycle(
        polled,
        store,
        current,
        metrics,
        max_concurrency=monitor.max_concurrency,
        clock=clock,
        stop=stop,
        interval=monitor.interval,
        poll_timeout=monitor.poll_deadline,
        max_pages=monitor.max_pages,
        on_close=on_close,
    )


@dataclass(slots=True)
class Runtime:
    """Everything one process needs to poll: what `poll`, `run` and `demo` share.

    A reload replaces `settings`, `sources`, `store`, `cycle` and `dispatcher`; the engine,
    the current state and the metrics stay.
    """

    settings: Settings
    engine: Engine
    store: Store
    current: CurrentState
    registry: CollectorRegistry
    metrics: MonitorMetrics
    sources: tuple[Source, ...]
    cycle: Cycle
    outbox: Outbox
    dispatcher: Dispatcher | None
    stop: threading.Event
    clock: Clock

    def close(self) -> None:
        self.cycle.close()
        if self.dispatcher is not None:
            self.dispatcher.close()
        self.engine.dispose()


def open_runtime(
    settings: Settings, *, clock: Clock = utc_now, guard: SqliteGuard | None = None
) -> Runtime:
    """Open and migrate the database, load the current state, and build the poll cycle.

    `guard` is this process's hold on a SQLite file (`acquire_sqlite_guard`): with it, alert
    leases left in the file can only be a dead process's, and are released at once.
    """
    return_large_buffers()
    sources = build_sources(settings)
    # One connection per concurrent poll, plus one for scrapes' readiness checks.
    engine = create_engine_for(
        settings.database.url, pool_size=settings.monitor.max_concurrency + 1
    )
    try:
        upgrade(engine)
        store = Store(engine, _alert_writer(settings))
        outbox = Outbox(engine)
        if guard is not None and guard.held:
            # No other daemon uses this file: any lease left is a dead process's; its alerts
            # are due again now rather than when the lease would have run out.
            outbox.release_all()
        current = CurrentState()
        current.load(store.current_images())
    except BaseException:
        engine.dispose()
        raise
    # `*_created` series double every counter and histogram for no use to a daemon's scrapes.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry, metrics = build_registry(current)
    stop = threading.Event()
    cycle = _cycle(settings, sources, store, current, metrics, clock, stop)
    runtime = Runtime(
        settings=settings,
        engine=engine,
        store=store,
        current=current,
        registry=registry,
        metrics=metrics,
        sources=cycle.sources,
        cycle=cycle,
        outbox=outbox,
        dispatcher=_dispatcher(settings, outbox, metrics, clock, stop),
        stop=stop,
        clock=clock,
    )
    # Everything made so far (botocore's service models above all) lives as long as the
    # process.
    freeze_long_lived()
    return runtime


def freeze_long_lived() -> None:
    """Exempt every object alive now from the garbage collector's full collections.

    What lives as long as the process (service models; after the first cycle, every client
    and the current images too) is over a million objects for a large fleet: walking them at
    each full collection took 0.7 s, with every thread stopped, at 100,000 images. Collected
    first, so no garbage is frozen. Objects made later are collected as usual, and a frozen
    object is still freed as soon as nothing refers to it; only a reference cycle of frozen
    objects (a client dropped by a reload) outlives its use.
    """
    gc.collect()
    gc.freeze()


def _poll_trigger(monitor: MonitorSettings) -> IntervalTrigger:
    return IntervalTrigger(seconds=monitor.interval, jitter=monitor.jitter or None, timezone=UTC)


class Daemon:
    """`fastlaunch-monitor run`: poll on an interval and serve the HTTP endpoints until stopped.

    `notifier` and `watchdog_period` default to what systemd's environment says
    (`$NOTIFY_SOCKET`, `$WATCHDOG_USEC`); outside systemd both are off.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        notifier: Notifier | None = None,
        watchdog_period: float | None = None,
        leadership: Leadership | None = None,
        database_file: DatabaseFile | None = None,
    ) -> None:
        self._rt = runtime
        self._database_file = database_file
        #: What `run` exits with: 1 once the daemon stopped itself over a lost database file.
        self.exit_code = 0
        #: Called when the daemon must stop by itself (`run_until_signalled` sets it).
        self.on_fatal: Callable[[], None] = lambda: None
        self._leadership = leadership or leadership_for(runtime.settings.database.url, os.environ)
        self._leading = False
        self._rest_until = 0.0
        self._notifier = notifier or Notifier.from_env()
        self._watchdog_period = watchdog_period or watchdog_interval()
        self._watching = False
        # Delivery runs beside polling, so a dead receiver's timeouts never delay a poll.
        # Leadership has its own thread too: a long cycle must not delay a takeover. A step of
        # the wall clock shifts every job by as much, so none stalls or runs early.
        self._scheduler = SteadyScheduler(
            on_step=self._wall_clock_stepped,
            timezone=UTC,
            executors={
                "default": SchedulerPool(1),
                "alerts": SchedulerPool(1),
                "leadership": SchedulerPool(1),
                # Pruning rests between its batches: on a thread of its own it delays nothing.
                "maintenance": SchedulerPool(1),
            },
        )
        self._advised = False
        self._idle = threading.Event()
        self._idle.set()
        self._dispatch_idle = threading.Event()
        self._dispatch_idle.set()
        # Guards which cycle and dispatcher are current and which are in use, so that a
        # reload closes a replaced one exactly once: at once if idle, else when its run ends.
        self._lock = threading.Lock()
        self._polling: Cycle | None = None
        self._dispatching: Dispatcher | None = None
        self._progress = time.monotonic()
        # How far the wall clock stepped back since the outbox's due times were last moved.
        self._stepped_back = 0.0
        # Successes of the scopes a reload kept, until the new cycle polls them itself.
        self._carried_success: dict[tuple[str, str], tuple[datetime, float]] = {}
        # Scopes a reload dropped while a cycle polled them: their series go when it ends.
        self._forget_after_cycle: list[Scope] = []
        self._http: HttpServer | None = None
        self.cycles = 0
        self.last_cycle: CycleResult | None = None

    def _poll_job(self) -> None:
        lost = self._database_file.lost() if self._database_file is not None else None
        if lost is not None:
            if self.exit_code == 0:
                log.error(
                    "%s while the monitor ran: stopping (exit 1) so that it starts again on a "
                    "file that exists; what was recorded since the file went is lost",
                    lost,
                )
                self.exit_code = 1
                self.on_fatal()
            return
        if not self._check_leadership():
            # A standby's loop is alive, not hung: it has nothing to do.
            self._progress = time.monotonic()
            self._count_polls_lost_to_the_database()
            return
        with self._lock:
            cycle = self._polling = self._rt.cycle
            self._progress = time.monotonic()
            self._idle.clear()
        try:
            self._restore_schema()
            started, cpu = time.monotonic(), time.process_time()
            # Until shortly before the next cycle is due at most: a scope whose poll is slower
            # goes on in the background and records itself, and the next cycle starts on time
            # for the others.
            result = cycle.run(wait=self._rt.settings.monitor.interval * CYCLE_WAIT_SHARE)
            self._advise(time.monotonic() - started, time.process_time() - cpu)
            dispatcher = self._rt.dispatcher
            if dispatcher is not None and result.transitions:
                # The cycle may have enqueued alerts: the pending gauge shows them at once.
                dispatcher.update_pending()
            self.cycles += 1
            self.last_cycle = result
            if self.cycles == 1:
                # The first cycle made the clients and loaded the images: they stay.
                freeze_long_lived()
            log.info("cycle done: %s", result.summary())
            self._notifier.notify(f"STATUS={result.summary()}")
        except Exception:
            # One cycle's unexpected failure must not kill the schedule: log it and go on.
            log.exception("poll cycle failed")
            self._notifier.notify("STATUS=the last poll cycle failed; see the log")
        finally:
            with self._lock:
                self._polling = None
                retired = cycle is not self._rt.cycle
                dropped, self._forget_after_cycle = self._forget_after_cycle, []
                self._progress = time.monotonic()
            if retired:
                cycle.close()
            self._rt.metrics.forget_scopes(dropped)
            self._idle.set()

    def _advise(self, wall: float, cpu: float) -> None:
        """Say once if cycles outgrow one core while more are idle."""
        advice = poll_processes_advice(
            wall,
            cpu,
            poll_processes=self._rt.settings.monitor.poll_processes,
            cores=os.cpu_count() or 1,
        )
        if advice is not None and not self._advised:
            self._advised = True
            log.info(advice)

    def _wall_clock_stepped(self, step: float) -> None:
        if step < 0:
            with self._lock:
                self._stepped_back -= step

    def _dispatch_job(self) -> None:
        if self._rt.stop.is_set() or not self._leading:
            with self._lock:
                # The leader's clock wrote the due times; a standby's step says nothing of them.
                self._stepped_back = 0.0
            return
        with self._lock:
            dispatcher = self._dispatching = self._rt.dispatcher
            if dispatcher is None:
                return
            self._dispatch_idle.clear()
        try:
            self._bring_alerts_forward()
            dispatcher.dispatch_due()
        except Exception:
            # The outbox keeps every alert; the next tick tries again.
            log.exception("alert dispatch failed")
        finally:
            with self._lock:
                self._dispatching = None
                retired = dispatcher is not self._rt.dispatcher
            if retired:
                dispatcher.close()
            self._dispatch_idle.set()

    def _bring_alerts_forward(self) -> None:
        """After a step back of the wall clock, move the outbox's retries and re-sends as much
        earlier, so that none waits the length of the step on top of its backoff.

        A step forward needs nothing: what was due later is due at once, early by its backoff.
        """
        with self._lock:
            seconds, self._stepped_back = self._stepped_back, 0.0
        if not seconds:
            return
        try:
            moved = self._rt.outbox.bring_forward(seconds, self._rt.clock())
        except StoreError:
            with self._lock:
                self._stepped_back += seconds
            raise
        log.info("%d alerts due again %.1f s earlier: the wall clock stepped back", moved, seconds)

    def _leadership_tick(self) -> float:
        return min(LEADERSHIP_TICK_SECONDS, self._rt.settings.monitor.interval / 4)

    def _check_leadership(self) -> bool:
        """Acquire or verify leadership; on a change, take over or step down. Thread-safe.

        An instance that just stepped down waits a few ticks before it tries again, so that a
        standby, not the instance that lost its connection, takes over.
        """
        with self._lock:
            resting = time.monotonic() < self._rest_until
        leading = False if resting else self._leadership.acquire_or_verify()
        with self._lock:
            changed, self._leading = leading != self._leading, leading
            if changed and not leading:
                self._rest_until = time.monotonic() + 3 * self._leadership_tick()
        if not changed:
            return leading
        rt = self._rt
        if leading:
            self._restore_schema()
            # The state the previous leader left is the one to diff against and to export.
            try:
                rt.current.load(rt.store.current_images())
            except StoreError as exc:
                log.error("took over, but could not load the current state: %s", exc)
            log.info("leading: this instance polls and delivers alerts")
            rt.metrics.set_leader(True)
            if self._scheduler.running and self._scheduler.get_job("poll") is not None:
                self._scheduler.modify_job("poll", next_run_time=datetime.now(UTC))
        else:
            log.warning("standing by: another instance leads (or the database is unreachable)")
            rt.metrics.set_leader(False)
            rt.current.clear()
        return leading

    def _restore_schema(self) -> None:
        """Migrate the database again if it lost its schema while the daemon ran.

        A database dropped and created anew (or restored from an old dump) under a running
        daemon would otherwise fail every poll until a restart. Checked by the leader at each
        cycle: one small query.
        """
        engine = self._rt.engine
        try:
            ensure_schema_current(engine)
        except SchemaBehindError as exc:
            log.error(
                "the database lost its schema while the monitor ran (%s): applying the "
                "migrations again; what it recorded before is gone from it",
                exc,
            )
            try:
                upgrade(engine)
            except StoreError as failed:
                log.error("could not migrate the database again: %s", failed)
        except StoreError:
            # Unreachable, or migrated by a newer version: the poll says so in its own words.
            return

    def _count_polls_lost_to_the_database(self) -> None:
        """A cycle skipped because the database is down is a failed poll of every scope.

        Without a database no instance can lead, so none polls: say so where operators look,
        in `fastlaunch_poll_success` and `fastlaunch_poll_errors_total{error="StoreError"}`.
        """
        rt = self._rt
        try:
            rt.store.ping()
        except StoreError as exc:
            log.error("poll cycle skipped: %s", exc)
            now = rt.clock()
            for source in rt.sources:
                for region in source.regions:
                    lost = PollResult(
                        scope=source.scope(region),
                        started_at=now,
                        duration_seconds=0.0,
                        pages=0,
                        images=None,
                        error_code="StoreError",
                        error_message=str(exc),
                    )
                    rt.metrics.poll_finished(lost, ())

    def _leadership_job(self) -> None:
        try:
            self._check_leadership()
        except Exception:
            log.exception("leadership check failed")

    def prune_step(self, now: datetime) -> Pruned | None:
        """Apply the retention as of `now` if this instance leads; what it removed.

        It stops between two batches when the daemon stops or leadership is lost.
        """
        if not self._leading:
            return None
        rt = self._rt
        try:
            pruned = prune(
                rt.engine,
                retention_of(rt.settings.database),
                now,
                keep_going=lambda: self._leading and not rt.stop.is_set(),
            )
        except StoreError as exc:
            log.error("applying the retention failed (next try in an hour): %s", exc)
            return None
        if pruned.total:
            log.info(
                "retention: %s, the longest %.3f s",
                pruned.summary(),
                pruned.longest_transaction,
            )
        return pruned

    def _prune_job(self) -> None:
        try:
            self.prune_step(self._rt.clock())
        except Exception:
            log.exception("applying the retention failed")

    def healthy(self) -> bool:
        """`/healthz`: the scheduler runs and the poll loop is not hung (see `hung_after`)."""
        return bool(self._scheduler.running) and self._hung_problem() is None

    def readiness(self) -> Readiness:
        """Ready when the database answers and every scope succeeded within three intervals.

        The intervals are counted on the monotonic clock: a step of the wall clock neither
        makes an old success look new nor a new one old.
        """
        checks: dict[str, str] = {}
        try:
            self._rt.store.ping()
            checks["database"] = "ok"
        except StoreError as exc:
            checks["database"] = f"failing: {exc}"
        if not self._leading:
            checks["leadership"] = "standby"
            return Readiness(ready=checks["database"] == "ok", checks=checks)
        monitor = self._rt.settings.monitor
        horizon = time.monotonic() - STALE_INTERVALS * (monitor.interval + monitor.jitter)
        cycle = self._rt.cycle
        last = {**self._carried_success, **cycle.last_success_times()}
        for key, region in cycle.expected:
            success = last.get((key, region))
            name = f"poll {key}/{region}"
            if success is None:
                checks[name] = "no successful poll yet"
            elif success[1] < horizon:
                checks[name] = f"last successful poll at {success[0].isoformat()}"
            else:
                checks[name] = "ok"
        return Readiness(ready=all(v == "ok" for v in checks.values()), checks=checks)

    def watchdog_problem(self) -> str | None:
        """What keeps the watchdog from pinging systemd, or `None` while the daemon is healthy.

        Healthy: the scheduler runs, the poll loop is not hung (see `hung_after`), and the
        database answers.
        """
        if not self._scheduler.running:
            return "the scheduler is not running"
        hung = self._hung_problem()
        if hung is not None:
            return hung
        try:
            self._rt.store.ping()
        except StoreError as exc:
            return f"the database does not answer: {exc}"
        return None

    def _hung_problem(self) -> str | None:
        # On the monotonic clock: a step of the wall clock neither hides a hang nor makes one.
        bound = hung_after(self._rt.settings.monitor)
        stalled = time.monotonic() - self._progress
        if stalled <= bound:
            return None
        doing = "no poll cycle started" if self._idle.is_set() else "a poll cycle has run"
        return f"{doing} for {stalled:.0f} s, longer than {bound:g} s"

    def _schedule_dispatch(self) -> None:
        """Have the dispatch job exactly when there is a dispatcher (webhooks configured)."""
        job = self._scheduler.get_job("dispatch")
        if self._rt.dispatcher is None:
            if job is not None:
                job.remove()
            return
        self._rt.dispatcher.update_pending()
        if job is None:
            self._scheduler.add_job(
                self._dispatch_job,
                IntervalTrigger(seconds=DISPATCH_TICK_SECONDS, timezone=UTC),
                id="dispatch",
                name="alert dispatch",
                executor="alerts",
                **ONE_RUN_AT_A_TIME,
            )

    def start(self) -> None:
        """Serve HTTP, then schedule the first cycle now and the next every interval."""
        settings = self._rt.settings
        http = settings.http
        self._http = serve(
            http.host,
            http.port,
            self._rt.registry,
            healthy=self.healthy,
            ready=self.readiness,
            tls=server_tls_context(http, settings.source),
        )
        self._check_leadership()
        self._scheduler.add_job(
            self._leadership_job,
            IntervalTrigger(seconds=self._leadership_tick(), timezone=UTC),
            id="leadership",
            name="leadership",
            executor="leadership",
            **ONE_RUN_AT_A_TIME,
        )
        self._scheduler.add_job(
            self._poll_job,
            _poll_trigger(settings.monitor),
            id="poll",
            name="poll cycle",
            next_run_time=datetime.now(UTC),
            **ONE_RUN_AT_A_TIME,
        )
        self._scheduler.add_job(
            self._prune_job,
            IntervalTrigger(seconds=PRUNE_EVERY_SECONDS, timezone=UTC),
            id="prune",
            name="retention",
            executor="maintenance",
            next_run_time=datetime.now(UTC) + timedelta(seconds=PRUNE_FIRST_AFTER_SECONDS),
            **ONE_RUN_AT_A_TIME,
        )
        self._schedule_dispatch()
        self._progress = time.monotonic()
        self._scheduler.start()
        log.info(
            "fastlaunch-monitor running: %d scopes every %ss, metrics at %s/metrics",
            len(self._rt.cycle.expected),
            settings.monitor.interval,
            self._http.url,
        )

    def notify_ready(self) -> None:
        """Tell systemd the daemon is up (after `start`), and start pinging its watchdog."""
        self._notifier.notify("READY=1", f"STATUS={self._status()}")
        if self._watchdog_period is not None and self._notifier.enabled:
            self._warn_if_hung_bound_is_short(self._rt.settings)
            watchdog = Watchdog(
                self._notifier, self._watchdog_period, self.watchdog_problem, self._rt.stop
            )
            watchdog.start()
            self._watching = True

    def _status(self) -> str:
        if self.last_cycle is not None:
            return self.last_cycle.summary()
        return f"polling {len(self._rt.cycle.expected)} scopes, first cycle under way"

    def _warn_if_hung_bound_is_short(self, settings: Settings) -> None:
        # A poll that waits out every timeout and retry is slow, not hung; a bound shorter than
        # that would have systemd restart a working daemon over and over.
        aws = settings.aws
        slowest = aws.max_attempts * (aws.connect_timeout + aws.read_timeout)
        bound = hung_after(settings.monitor)
        if bound < slowest:
            log.warning(
                "the watchdog deems the poll loop hung after %g s without progress (3 x "
                "(interval + jitter)), but one AWS request may take %g s (max_attempts x "
                "(connect_timeout + read_timeout)); lengthen [monitor] interval or shorten "
                "the [aws] timeouts",
                bound,
                slowest,
            )

    def reload(self, settings: Settings) -> None:
        """Apply a new config without a restart, keeping the database, its state and HTTP.

        Targets, `[aws]`, webhooks, interval, jitter, max_concurrency and stuck_after take
        effect: the next cycle polls with a new `Cycle` and the next dispatch tick delivers
        through a new `Dispatcher`; a cycle or delivery in flight finishes with the old ones.
        A changed `[database]` or `[http]` needs a restart: a warning says so and the running
        ones stay. Raises `ConfigError`, changing nothing, if the new targets or webhooks are
        unusable.
        """
        rt = self._rt
        running = rt.settings
        needs_restart = [
            name
            for name, changed in (
                ("database", settings.database != running.database),
                ("http", settings.http != running.http),
            )
            if changed
        ]
        settings = replace(settings, database=running.database, http=running.http)
        sources = build_sources(settings)
        dispatcher = _dispatcher(settings, rt.outbox, rt.metrics, rt.clock, rt.stop)
        store = Store(rt.engine, _alert_writer(settings))
        cycle = _cycle(settings, sources, store, rt.current, rt.metrics, rt.clock, rt.stop)
        kept = set(cycle.expected)
        with self._lock:
            old_cycle, old_dispatcher = rt.cycle, rt.dispatcher
            close_cycle = old_cycle is not self._polling
            close_dispatcher = old_dispatcher is not self._dispatching
            last = {**self._carried_success, **old_cycle.last_success_times()}
            self._carried_success = {k: v for k, v in last.items() if k in kept}
            dropped = [
                s.scope(region)
                for s in rt.sources
                for region in s.regions
                if (s.key, region) not in kept
            ]
            rt.settings, rt.sources, rt.store = settings, cycle.sources, store
            rt.cycle, rt.dispatcher = cycle, dispatcher
            if not close_cycle:
                # The cycle in flight would record them again as it ends.
                self._forget_after_cycle += dropped
                dropped = []
            if self._idle.is_set():
                # The schedule may start over below: idle time so far is no sign of a hang.
                self._progress = time.monotonic()
        if close_cycle:
            old_cycle.close()
        if close_dispatcher and old_dispatcher is not None:
            old_dispatcher.close()
        rt.metrics.forget_scopes(dropped)
        if (settings.monitor.interval, settings.monitor.jitter) != (
            running.monitor.interval,
            running.monitor.jitter,
        ):
            self._scheduler.reschedule_job("poll", trigger=_poll_trigger(settings.monitor))
        self._schedule_dispatch()
        for section in needs_restart:
            log.warning(
                "[%s] changed in %s: it takes a restart to apply; keeping the running one",
                section,
                settings.source,
            )
        if self._watching:
            self._warn_if_hung_bound_is_short(settings)
        log.info(
            "config reloaded from %s: %d scopes every %ss, %d webhooks",
            settings.source,
            len(cycle.expected),
            settings.monitor.interval,
            len(settings.webhooks),
        )

    def reload_from(
        self,
        load: Callable[[], Settings],
        on_reload: Callable[[Settings], None] | None = None,
    ) -> bool:
        """SIGHUP: read the config with `load` and `reload` it, then call `on_reload`.

        An unusable config is one ERROR line naming the file and key; the running config
        stays. Systemd hears `RELOADING=1` before and `READY=1` after, whatever the outcome.
        Returns whether the new config was applied.
        """
        self._notifier.notify(
            "RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", "STATUS=reloading the config"
        )
        applied = False
        try:
            settings = load()
            self.reload(settings)
            if on_reload is not None:
                on_reload(settings)
            applied = True
        except ConfigError as exc:
            log.error("config not reloaded, the running one is kept: %s", exc)
        except Exception:
            log.exception("config not reloaded, the running one is kept")
        self._notifier.notify("READY=1", f"STATUS={self._status()}")
        return applied

    @property
    def http_url(self) -> str:
        assert self._http is not None, "start() first"
        return self._http.url

    def shutdown(self) -> bool:
        """Stop in order; returns False if the in-flight cycle had to be abandoned."""
        log.info("stopping")
        self._notifier.notify("STOPPING=1", "STATUS=stopping")
        self._rt.stop.set()
        self._scheduler.shutdown(wait=False)
        deadline = time.monotonic() + STOP_BOUND_SECONDS
        finished = self._idle.wait(STOP_BOUND_SECONDS)
        finished = self._rt.cycle.wait_idle(max(0.0, deadline - time.monotonic())) and finished
        finished = self._dispatch_idle.wait(max(0.0, deadline - time.monotonic())) and finished
        if not finished:
            log.warning("abandoning the in-flight poll cycle: nothing of it is recorded")
        if self._http is not None:
            self._http.close()
        # Released at once, a standby takes over at its next check, not when the server
        # notices this session is gone.
        self._leadership.release()
        if finished:
            self._rt.close()
        return finished


def run_until_signalled(
    daemon: Daemon,
    stop: threading.Event,
    deadline: float | None,
    *,
    reload: Callable[[], Settings] | None = None,
    on_reload: Callable[[Settings], None] | None = None,
) -> None:
    """Tell systemd the started `daemon` is ready, then serve signals until it must stop.

    Returns once SIGTERM/SIGINT sets `stop` (the handlers do) or the monotonic `deadline`
    passes, after the shutdown. With `reload`, SIGHUP reloads the config it returns
    (`Daemon.reload_from`); without, SIGHUP keeps its default action.
    """
    wake = threading.Event()
    hangup = threading.Event()

    def on_fatal() -> None:
        stop.set()
        wake.set()

    daemon.on_fatal = on_fatal

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()
        wake.set()

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        hangup.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    if reload is not None:
        signal.signal(signal.SIGHUP, on_hangup)
    # Only now: systemd sends its first SIGHUP as soon as it hears READY.
    daemon.notify_ready()
    while not stop.is_set():
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            break
        wake.wait(3600 if remaining is None else remaining)
        # Cleared before the flags are read: a signal arriving meanwhile wakes the next wait.
        wake.clear()
        if hangup.is_set() and reload is not None and not stop.is_set():
            hangup.clear()
            daemon.reload_from(reload, on_reload)
    if not daemon.shutdown():
        # Worker threads stuck in a network call cannot be interrupted; leave without them.
        logging.shutdown()
        os._exit(0)


def run_daemon(
    settings: Settings,
    *,
    duration: float | None = None,
    reload: Callable[[], Settings] | None = None,
    on_reload: Callable[[Settings], None] | None = None,
) -> int:
    """`fastlaunch-monitor run`: returns the exit code.

    `reload` reads the config again on SIGHUP; `on_reload` is then given what was applied.
    """
    # What `check` opens too: a file that does not load is a config error before anything
    # is locked or migrated.
    preflight(settings)
    guard = acquire_sqlite_guard(settings.database.url)
    try:
        runtime = open_runtime(settings, guard=guard)
        # Migrated by now, so the file exists.
        database_file = DatabaseFile(guard.database_path) if guard is not None else None
        daemon = Daemon(runtime, database_file=database_file)
        daemon.start()
        deadline = None if duration is None else time.monotonic() + duration
        run_until_signalled(daemon, threading.Event(), deadline, reload=reload, on_reload=on_reload)
    finally:
        if guard is not None:
            guard.close()
    log.info("stopped")
    return daemon.exit_code
