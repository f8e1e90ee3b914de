"""Command line: argument parsing and output formatting only.

Every command builds its objects from the settings and hands off to the modules that do the
work. Errors leave as one line on stderr: exit 2 for bad usage or config, 1 for a runtime
failure; never a traceback for either. Text output shows every value on its own line or in its
own cell whatever it holds: values from AWS (image ids, states, reasons, error messages) are
printed with their control characters escaped (`printable`); `--json` escapes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from monitor import __version__
from monitor.config.settings import Settings, config_path, load_settings
from monitor.core.durations import parse_duration
from monitor.core.errors import ConfigError, MonitorError, SchemaBehindError
from monitor.core.logs import LEVELS, setup_logging
from monitor.core.model import HistoryEntry, PollSummary, Scope, StoredImage
from monitor.core.printable import printable
from monitor.core.times import rfc3339
from monitor.poll.cycle import utc_now
from monitor.store import Store

if TYPE_CHECKING:
    from monitor.alerts.outbox import OutboxView

PROG = "fastlaunch-monitor"


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Watch EC2 Windows fast launch images: history, alerts, Prometheus metrics.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", metavar="PATH", help="the TOML config file")
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LEVELS,
        help="overrides [monitor] log_level of the config; default INFO",
    )
    parser.add_argument("--log-format", default="text", choices=("text", "json"))
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("run", help="the daemon: poll on an interval, serve /metrics")
    commands.add_parser("poll", help="one poll cycle of every target now, then exit")
    status = commands.add_parser("status", help="current images")
    status.add_argument("--json", action="store_true")
    history = commands.add_parser("history", help="transitions, newest first")
    history.add_argument("image_id", nargs="?", metavar="IMAGE_ID")
    history.add_argument("--since", type=_duration, metavar="DURATION", help='e.g. "1h", "7d"')
    history.add_argument("--limit", type=_positive_int, default=100, metavar="N")
    history.add_argument("--json", action="store_true")
    alerts = commands.add_parser("alerts", help="the alert outbox and its deliveries")
    alerts.add_argument("--pending", action="store_true", help="only alerts not delivered yet")
    alerts.add_argument("--limit", type=_positive_int, default=100, metavar="N")
    alerts.add_argument("--json", action="store_true")
    commands.add_parser("check", help="validate config and database, DryRun every target")
    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", metavar="DB_COMMAND", required=True)
    db_commands.add_parser("upgrade", help="apply the database migrations")
    prune = db_commands.add_parser("prune", help="apply the retention now; prints what it removed")
    prune.add_argument(
        "--vacuum",
        action="store_true",
        help="then compact the database (SQLite: stop the daemon first, it waits meanwhile)",
    )
    demo = commands.add_parser("demo", help="the whole daemon against the built-in simulator")
    demo.add_argument("--duration", type=_duration, metavar="DURATION")
    return parser


def _say(line: str) -> None:
    """Print one line of text output; whatever it quotes stays on that line."""
    print(printable(line))


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    rows = [[printable(str(value)) for value in row] for row in rows]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def _number(value: int | None) -> str:
    return "-" if value is None else str(value)


def _scope_json(scope: Scope) -> dict[str, str]:
    return {"target": scope.target, "account_id": scope.account_id, "region": scope.region}


def _image_json(stored: StoredImage) -> dict[str, Any]:
    image = stored.image
    return {
        **_scope_json(stored.scope),
        "image_id": image.image_id,
        "state": image.state,
        "state_transition_reason": image.state_transition_reason,
        "state_transition_time": rfc3339(image.state_transition_time),
        "resource_type": image.resource_type,
        "target_resource_count": image.target_resource_count,
        "max_parallel_launches": image.max_parallel_launches,
        "owner_id": image.owner_id,
        "launch_template": {
            "id": image.launch_template_id,
            "name": image.launch_template_name,
            "version": image.launch_template_version,
        },
    }


def _poll_json(poll: PollSummary) -> dict[str, Any]:
    return {
        **_scope_json(poll.scope),
        "started_at": rfc3339(poll.started_at),
        "duration_seconds": round(poll.duration_seconds, 3),
        "pages": poll.pages,
        "images": poll.images,
        "ok": poll.ok,
        "error_code": poll.error_code,
        "error_message": poll.error_message,
    }


def _history_json(entry: HistoryEntry) -> dict[str, Any]:
    t = entry.transition
    return {
        **_scope_json(entry.scope),
        "image_id": t.image_id,
        "previous_state": t.previous_state,
        "state": t.new_state,
        "state_transition_time": rfc3339(t.transition_time),
        "state_transition_reason": t.reason,
        "observed_at": rfc3339(entry.observed_at),
    }


def _print_json(document: object) -> None:
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _open_read_only(settings: Settings) -> Engine:
    """The database for commands that only read: never creates or migrates one."""
    from monitor.store import create_engine_for, ensure_schema_current

    url = make_url(settings.database.url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        raise SchemaBehindError(
            f"no database at {url.database} yet: start the daemon or run `{PROG} db upgrade`"
        )
    engine = create_engine_for(settings.database.url)
    ensure_schema_current(engine)
    return engine


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    store = Store(_open_read_only(settings))
    images = sorted(
        store.current_images(),
        key=lambda s: (s.scope.target, s.scope.region, s.image.image_id),
    )
    polls = store.latest_polls()
    if args.json:
        _print_json(
            {"images": [_image_json(i) for i in images], "polls": [_poll_json(p) for p in polls]}
        )
        return 0
    rows = [
        (
            s.scope.target,
            s.scope.region,
            s.image.image_id,
            s.image.state,
            rfc3339(s.image.state_transition_time) or "-",
            _number(s.image.target_resource_count),
            _number(s.image.max_parallel_launches),
        )
        for s in images
    ]
    header = ("TARGET", "REGION", "IMAGE", "STATE", "SINCE", "TARGET_RESOURCES", "MAX_PARALLEL")
    print(_table(rows, header) if rows else "no fast launch images recorded yet")
    for poll in polls:
        outcome = "ok" if poll.ok else f"FAILED {poll.error_code}"
        _say(
            f"last poll {poll.scope.target}/{poll.scope.region}: {outcome} at "
            f"{rfc3339(poll.started_at)}"
        )
    return 0


def cmd_history(settings: Settings, args: argparse.Namespace) -> int:
    store = Store(_open_read_only(settings))
    since = None if args.since is None else utc_now() - timedelta(seconds=args.since)
    entries = store.history(image_id=args.image_id, since=since, limit=args.limit)
    if args.json:
        _print_json({"transitions": [_history_json(e) for e in entries]})
        return 0
    rows = [
        (
            rfc3339(e.transition.transition_time) or "-",
            e.scope.target,
            e.scope.region,
            e.transition.image_id,
            e.transition.previous_state or "(new)",
            e.transition.new_state,
            e.transition.reason,
        )
        for e in entries
    ]
    header = ("TIME", "TARGET", "REGION", "IMAGE", "FROM", "TO", "REASON")
    print(_table(rows, header) if rows else "no transitions recorded")
    return 0


def _alert_json(view: OutboxView) -> dict[str, Any]:
    entry = view.entry
    return {
        "event_id": entry.event_id,
        "receiver": entry.receiver,
        "status": entry.status,
        "kind": entry.kind,
        **_scope_json(entry.scope),
        "image_id": entry.image_id,
        "state": entry.state,
        "since": rfc3339(entry.since),
        "created_at": rfc3339(entry.created_at),
        "outcome": view.outcome,
        "next_attempt_at": rfc3339(view.next_attempt_at) if view.outcome == "pending" else None,
        "delivered_at": rfc3339(view.delivered_at),
        "failed_at": rfc3339(view.failed_at),
        "last_error": view.last_error,
        "attempts": [
            {
                "attempted_at": rfc3339(a.attempted_at),
                "outcome": a.outcome,
                "status_code": a.status_code,
                "error": a.error,
                "duration_seconds": round(a.duration_seconds, 3),
            }
            for a in view.attempts
        ],
    }


def cmd_alerts(settings: Settings, args: argparse.Namespace) -> int:
    from monitor.alerts.outbox import Outbox

    views = Outbox(_open_read_only(settings)).listing(pending_only=args.pending, limit=args.limit)
    if args.json:
        _print_json({"alerts": [_alert_json(v) for v in views]})
        return 0
    rows = [
        (
            rfc3339(v.entry.created_at) or "-",
            v.entry.receiver,
            v.entry.status,
            v.entry.kind,
            v.entry.image_id,
            v.entry.state,
            v.outcome,
            str(len(v.attempts)),
            v.last_error or "",
        )
        for v in views
    ]
    header = (
        "CREATED",
        "RECEIVER",
        "STATUS",
        "KIND",
        "IMAGE",
        "STATE",
        "OUTCOME",
        "ATTEMPTS",
        "LAST_ERROR",
    )
    print(_table(rows, header) if rows else "no alerts")
    return 0


def cmd_poll(settings: Settings, args: argparse.Namespace) -> int:
    from monitor.service.daemon import open_runtime
    from monitor.service.preflight import check_database_folder

    check_database_folder(settings.database)
    runtime = open_runtime(settings)
    try:
        result = runtime.cycle.run()
        if runtime.dispatcher is not None:
            # One delivery attempt of what is due; the daemon retries what this one could not.
            runtime.dispatcher.dispatch_due()
    finally:
        runtime.close()
    for applied in result.polls:
        poll = applied.result
        where = f"{poll.scope.target or '?'}/{poll.scope.region}"
        if poll.ok:
            _say(
                f"{where}: ok, {len(poll.images or ())} images in {poll.pages} pages, "
                f"{len(applied.transitions)} transitions, {poll.duration_seconds:.2f}s"
            )
        else:
            _say(f"{where}: FAILED {poll.error_code}: {poll.error_message}")
    _say(result.summary())
    return 1 if result.failed else 0


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    from monitor.core.errors import SourceError
    from monitor.service.daemon import build_sources
    from monitor.service.preflight import preflight
    from monitor.store import create_engine_for, current_revision, head_revision

    # The files `run` opens at start, opened by the same code: what fails there fails here.
    preflight(settings)
    _say(f"config {settings.source}: ok")
    ok = True
    engine = create_engine_for(settings.database.url)
    try:
        revision = current_revision(engine)
        schema = (
            "current"
            if revision == head_revision()
            else (
                f"behind (at {revision or 'empty'}): `{PROG} db upgrade` or the daemon applies it"
            )
        )
        _say(f"database {settings.database.safe_url}: ok, schema {schema}")
    except MonitorError as exc:
        _say(f"database {settings.database.safe_url}: FAILED {exc}")
        ok = False
    finally:
        engine.dispose()
    for source in build_sources(settings):
        try:
            account = source.account_id()
        except SourceError as exc:
            _say(f"target {source.key}: FAILED {exc}")
            ok = False
            continue
        outcomes = [(region, source.check(region)) for region in source.regions]
        ok = ok and all(o.permitted for _, o in outcomes)
        regions = ", ".join(f"{region} {o.detail}" for region, o in outcomes)
        _say(f"target {source.key} ({account}): {regions}")
    return 0 if ok else 1


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    from monitor.service.preflight import check_database_folder
    from monitor.store import create_engine_for, head_revision, upgrade

    if args.db_command == "prune":
        return _prune(settings, vacuum=args.vacuum)
    check_database_folder(settings.database)
    engine = create_engine_for(settings.database.url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    print(f"database {settings.database.safe_url}: at revision {head_revision()}")
    return 0


def _prune(settings: Settings, *, vacuum: bool) -> int:
    from monitor.store.retention import prune, retention_of
    from monitor.store.retention import vacuum as compact

    engine = _open_read_only(settings)
    try:
        pruned = prune(engine, retention_of(settings.database), utc_now())
        for table, count in pruned.removed.items():
            _say(f"{table}: {count} removed")
        if pruned.vacuumed_pages:
            _say(f"sqlite: {pruned.vacuumed_pages} free pages given back")
        if vacuum:
            compact(engine)
            _say("vacuumed")
    finally:
        engine.dispose()
    return 0


def _log_level(args: argparse.Namespace, settings: Settings | None) -> str:
    """`--log-level`, else the config's `[monitor] log_level`, else INFO."""
    configured = settings.monitor.log_level if settings is not None else None
    return str(args.log_level or configured or "INFO")


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from monitor.service.daemon import run_daemon

    def reload() -> Settings:
        # The path is looked up again: a config file created since start-up counts too.
        return load_settings(config_path(args.config, os.environ), os.environ)

    def on_reload(new: Settings) -> None:
        setup_logging(_log_level(args, new), args.log_format)

    return run_daemon(settings, reload=reload, on_reload=on_reload)


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "run": cmd_run,
    "poll": cmd_poll,
    "status": cmd_status,
    "history": cmd_history,
    "alerts": cmd_alerts,
    "check": cmd_check,
    "db": cmd_db,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    setup_logging(_log_level(args, None), args.log_format)
    try:
        if args.command == "demo":
            # The demo builds its own settings: it must work on a laptop with no config at all.
            from monitor.demo.run import run_demo

            return run_demo(duration=args.duration)
        settings = load_settings(config_path(args.config, os.environ), os.environ)
        if settings.monitor.log_level is not None:
            setup_logging(_log_level(args, settings), args.log_format)
        return COMMANDS[args.command](settings, args)
    except ConfigError as exc:
        print(f"{PROG}: config error: {printable(str(exc))}", file=sys.stderr)
        return 2
    except MonitorError as exc:
        print(f"{PROG}: {printable(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
