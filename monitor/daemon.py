"""The daemon: wiring, the APScheduler poll job, HTTP endpoints, signals, orderly shutdown.

Signal handlers only set an event. The main thread then shuts down in order: stop scheduling,
let the in-flight cycle finish within the stop bound (or abandon it: its transaction is never
committed, so nothing half-written remains), stop HTTP, dispose the engine.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor as SchedulerPool
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry, disable_created_metrics
from sqlalchemy import Engine

from monitor.alerts.dispatcher import Dispatcher
from monitor.alerts.rules import Receiver, alert_policy
from monitor.aws import TargetSource
from monitor.current import CurrentState
from monitor.cycle import Clock, Cycle, CycleResult, utc_now
from monitor.errors import StoreError
from monitor.http import HttpServer, Readiness, serve
from monitor.metrics import MonitorMetrics, build_registry
from monitor.settings import Settings
from monitor.store import Store, create_engine_for, upgrade
from monitor.store.outbox import Outbox

log = logging.getLogger(__name__)

#: SPEC §7: on SIGTERM the in-flight poll is finished or abandoned within 10 s.
STOP_BOUND_SECONDS = 8.0

#: How often the dispatcher looks for due alerts (a cheap indexed read when none are due).
DISPATCH_TICK_SECONDS = 1.0


def build_sources(settings: Settings) -> list[TargetSource]:
    """One `TargetSource` per configured target; raises `ConfigError` for unusable targets."""
    return [TargetSource(i, t, settings.aws) for i, t in enumerate(settings.targets)]


@dataclass(slots=True)
class Runtime:
    """Everything one process needs to poll: what `poll`, `run` and `demo` share."""

    settings: Settings
    engine: Engine
    store: Store
    current: CurrentState
    registry: CollectorRegistry
    metrics: MonitorMetrics
    cycle: Cycle
    outbox: Outbox
    dispatcher: Dispatcher | None
    stop: threading.Event

    def close(self) -> None:
        self.cycle.close()
        if self.dispatcher is not None:
            self.dispatcher.close()
        self.engine.dispose()


def open_runtime(settings: Settings, *, clock: Clock = utc_now) -> Runtime:
    """Open and migrate the database, load the current state, and build the poll cycle."""
    sources = build_sources(settings)
    # One connection per concurrent poll, plus one for scrapes' readiness checks.
    engine = create_engine_for(
        settings.database.url, pool_size=settings.monitor.max_concurrency + 1
    )
    receivers = [Receiver(w.name, w.states, w.send_resolved) for w in settings.webhooks]
    policy = alert_policy(receivers, settings.monitor.stuck_after) if receivers else None
    try:
        upgrade(engine)
        store = Store(engine, policy)
        outbox = Outbox(engine)
        if engine.dialect.name == "sqlite":
            # One process per SQLite file: any lease left is a dead process's; its alerts are
            # due again now rather than when the lease would have run out.
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
    cycle = Cycle(
        sources,
        store,
        current,
        metrics,
        max_concurrency=settings.monitor.max_concurrency,
        clock=clock,
        stop=stop,
    )
    dispatcher = (
        Dispatcher(outbox, settings.webhooks, metrics, clock=clock, stop=stop)
        if settings.webhooks
        else None
    )
    runtime = Runtime(
        settings, engine, store, current, registry, metrics, cycle, outbox, dispatcher, stop
    )
    # Everything made so far (botocore's service models above all) lives as long as the
    # process: frozen, the garbage collector stops walking it at every full collection.
    gc.collect()
    gc.freeze()
    return runtime


class Daemon:
    """`fastlaunch-monitor run`: poll on an interval and serve the HTTP endpoints until stopped."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._interval = runtime.settings.monitor.interval
        self._jitter = runtime.settings.monitor.jitter
        # Delivery runs beside polling, so a dead receiver's timeouts never delay a poll.
        self._scheduler = BackgroundScheduler(
            timezone=UTC, executors={"default": SchedulerPool(1), "alerts": SchedulerPool(1)}
        )
        self._idle = threading.Event()
        self._idle.set()
        self._dispatch_idle = threading.Event()
        self._dispatch_idle.set()
        self._http: HttpServer | None = None
        self.cycles = 0
        self.last_cycle: CycleResult | None = None

    def _poll_job(self) -> None:
        self._idle.clear()
        try:
            result = self._rt.cycle.run()
            if self._rt.dispatcher is not None and result.transitions:
                # The cycle may have enqueued alerts: the pending gauge shows them at once.
                self._rt.dispatcher.update_pending()
            self.cycles += 1
            self.last_cycle = result
            log.info("cycle done: %s", result.summary())
        except Exception:
            # One cycle's unexpected failure must not kill the schedule: log it and go on.
            log.exception("poll cycle failed")
        finally:
            self._idle.set()

    def _dispatch_job(self) -> None:
        dispatcher = self._rt.dispatcher
        if dispatcher is None or self._rt.stop.is_set():
            return
        self._dispatch_idle.clear()
        try:
            dispatcher.dispatch_due()
        except Exception:
            # The outbox keeps every alert; the next tick tries again.
            log.exception("alert dispatch failed")
        finally:
            self._dispatch_idle.set()

    def healthy(self) -> bool:
        return bool(self._scheduler.running)

    def readiness(self, now: datetime | None = None) -> Readiness:
        """Ready when the database answers and every scope succeeded within three intervals."""
        now = now or utc_now()
        checks: dict[str, str] = {}
        try:
            self._rt.store.ping()
            checks["database"] = "ok"
        except StoreError as exc:
            checks["database"] = f"failing: {exc}"
        horizon = now - timedelta(seconds=3 * (self._interval + self._jitter))
        last = self._rt.cycle.last_success()
        for key, region in self._rt.cycle.expected:
            when = last.get((key, region))
            name = f"poll {key}/{region}"
            if when is None:
                checks[name] = "no successful poll yet"
            elif when < horizon:
                checks[name] = f"last successful poll at {when.isoformat()}"
            else:
                checks[name] = "ok"
        return Readiness(ready=all(v == "ok" for v in checks.values()), checks=checks)

    def start(self) -> None:
        """Serve HTTP, then schedule the first cycle now and the next every interval."""
        http = self._rt.settings.http
        self._http = serve(
            http.host,
            http.port,
            self._rt.registry,
            healthy=self.healthy,
            ready=self.readiness,
            tls_cert_file=http.tls_cert_file,
            tls_key_file=http.tls_key_file,
            tls_client_ca_file=http.tls_client_ca_file,
        )
        self._rt.metrics.set_leader(True)
        self._scheduler.add_job(
            self._poll_job,
            IntervalTrigger(seconds=self._interval, jitter=self._jitter or None, timezone=UTC),
            id="poll",
            name="poll cycle",
            next_run_time=datetime.now(UTC),
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        if self._rt.dispatcher is not None:
            self._rt.dispatcher.update_pending()
            self._scheduler.add_job(
                self._dispatch_job,
                IntervalTrigger(seconds=DISPATCH_TICK_SECONDS, timezone=UTC),
                id="dispatch",
                name="alert dispatch",
                executor="alerts",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        self._scheduler.start()
        log.info(
            "fastlaunch-monitor running: %d scopes every %ss, metrics at %s/metrics",
            len(self._rt.cycle.expected),
            self._interval,
            self._http.url,
        )

    @property
    def http_url(self) -> str:
        assert self._http is not None, "start() first"
        return self._http.url

    def shutdown(self) -> bool:
        """Stop in order; returns False if the in-flight cycle had to be abandoned."""
        log.info("stopping")
        self._rt.stop.set()
        self._scheduler.shutdown(wait=False)
        deadline = time.monotonic() + STOP_BOUND_SECONDS
        finished = self._idle.wait(STOP_BOUND_SECONDS)
        finished = self._dispatch_idle.wait(max(0.0, deadline - time.monotonic())) and finished
        if not finished:
            log.warning("abandoning the in-flight poll cycle: nothing of it is recorded")
        if self._http is not None:
            self._http.close()
        if finished:
            self._rt.close()
        return finished


def run_until_signalled(daemon: Daemon, stop: threading.Event, deadline: float | None) -> None:
    """Block until SIGTERM/SIGINT sets `stop` or the monotonic `deadline` passes."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.is_set():
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if stop.wait(timeout if timeout is not None else 3600) or (
            deadline is not None and time.monotonic() >= deadline
        ):
            break
    if not daemon.shutdown():
        # Worker threads stuck in a network call cannot be interrupted; leave without them.
        logging.shutdown()
        os._exit(0)


def run_daemon(settings: Settings, *, duration: float | None = None) -> int:
    """`fastlaunch-monitor run` (and the daemon half of `demo`): returns the exit code."""
    runtime = open_runtime(settings)
    daemon = Daemon(runtime)
    daemon.start()
    deadline = None if duration is None else time.monotonic() + duration
    run_until_signalled(daemon, threading.Event(), deadline)
    log.info("stopped")
    return 0
