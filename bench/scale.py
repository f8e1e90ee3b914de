"""Issue 5's scale figures: poll cycles of many (target, region) pairs, and 100,000 images.

The fleet: `--pairs` pairs, as `--regions` regions of `--pairs / --regions` accounts, each
account reached by a target that assumes a role into it. Its EC2 and STS endpoint runs in a
child process (this file, `serve`), so its CPU is not counted, and answers every describe after
`--latency` seconds:

- `lean` (the default): a small threaded HTTP server that answers `AssumeRole` and
  `DescribeFastLaunchImages` with pages rendered once, at start, by the simulator's own wire
  code (`monitor.demo.simulator.wire`); it routes by the SigV4 credential scope (the access key it
  handed out names the account; the scope names the region). Its CPU per describe is small,
  so the figures are the monitor's.
- `moto`: the simulator server (moto with the fast launch extension), a thread per request.
  It serves 64 requests at once (werkzeug's server, a thread per connection), but on a
  2-core machine its CPU per describe caps it near 135 describes a second, whatever the
  concurrency, which then sets the cycle time instead of the monitor.

Every measurement runs the monitor's real objects (`parse_settings`, `open_runtime` on SQLite
in a temporary folder, `Cycle`) in a fresh process (this file, `cycles` or `images`), so peak
RSS and CPU are its own.

(a) Cycle wall time: a first (cold) cycle, which also assumes every role and makes every
    client; then, at each `--concurrency`, `--cycles` unchanged cycles, whose median is held
    against the goal 1.3 x pairs x latency / max_concurrency; last, the same at the highest
    concurrency with no added latency (the machine's floor), and the monitor's CPU per cycle.
(b) For each of `--images` (spread evenly over the pairs), at `--images-concurrency`: a first
    cycle; an unchanged cycle whose time inside `Store.apply_poll` is summed (wall, and CPU of
    the polling threads); another unchanged cycle while this process scrapes `/metrics` as
    Prometheus does (gzip, its Accept header), again and again; the monitor's peak RSS.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

from endpoint_child import EndpointChild, use_endpoint

from monitor.aws.poll_processes import RemoteSource
from monitor.config.settings import parse_settings
from monitor.core.logs import setup_logging
from monitor.demo.simulator.table import LaunchTemplateRef, SimulatedImage
from monitor.demo.simulator.wire import describe_reply
from monitor.exposition.http import Readiness, serve
from monitor.poll.cycle import Cycle
from monitor.service.daemon import Runtime, freeze_long_lived, open_runtime

RSS_GOAL_MB = 500
SCRAPE_GOAL_SECONDS = 1.0
CYCLE_GOAL_FACTOR = 1.3
#: The regions the accounts are spread over, in this order.
REGIONS = (
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-northeast-1",
    "ap-south-1",
    "sa-east-1",
    "ca-central-1",
)
FIRST_ACCOUNT = 200_000_000_000
#: What Prometheus 2 sends; the monitor answers it with OpenMetrics.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
#: Between two scrapes; back to back would starve the cycle as no Prometheus does.
SCRAPE_PAUSE_SECONDS = 0.2
#: Scrapes of an idle monitor, before those during a cycle.
IDLE_SCRAPES = 3
#: The prefix of a child's stdout line that carries its result, as JSON.
RESULT = "result "


@dataclass(frozen=True, slots=True)
class Fleet:
    """`accounts` accounts in each of `regions`, `per_pair` images in each (account, region)."""

    accounts: int
    regions: tuple[str, ...]
    per_pair: int

    @property
    def pairs(self) -> int:
        return self.accounts * len(self.regions)

    @property
    def images(self) -> int:
        return self.pairs * self.per_pair

    def account_ids(self) -> list[str]:
        return [f"{FIRST_ACCOUNT + index:012d}" for index in range(self.accounts)]

    def arguments(self) -> list[str]:
        """The command-line options that give this fleet to a child."""
        return [
            "--accounts",
            str(self.accounts),
            "--regions",
            ",".join(self.regions),
            "--per-pair",
            str(self.per_pair),
        ]

    @staticmethod
    def from_arguments(args: argparse.Namespace) -> Fleet:
        return Fleet(args.accounts, tuple(args.regions.split(",")), args.per_pair)


# -- the endpoints (child process) -------------------------------------------------------------


class _Controls(Protocol):
    def set_latency(self, seconds: float) -> None: ...

    def grow(self, per_pair: int) -> None: ...


def _obey(controls: _Controls) -> None:
    """Obey, one a line on stdin, `latency SECONDS` and `grow PER_PAIR` (each answered `ok`:
    done), and `quit`."""
    for line in sys.stdin:
        command, *rest = line.split()
        if command == "quit":
            return
        if command == "latency" and len(rest) == 1:
            controls.set_latency(float(rest[0]))
        elif command == "grow" and len(rest) == 1:
            controls.grow(int(rest[0]))
        else:
            print(f"error: unknown command {line.strip()!r}", flush=True)
            continue
        print("ok", flush=True)


class _MotoControls:
    """The simulators of the fleet, in the moto server of this process."""

    def __init__(self, fleet: Fleet) -> None:
        from monitor.demo.simulator import simulator_for

        self._per_pair = 0
        self._simulators = [
            simulator_for(account, region)
            for account in fleet.account_ids()
            for region in fleet.regions
        ]
        self.grow(fleet.per_pair)

    def set_latency(self, seconds: float) -> None:
        for simulator in self._simulators:
            simulator.latency(seconds)

    def grow(self, per_pair: int) -> None:
        for simulator in self._simulators:
            simulator.seed(per_pair - self._per_pair, states="enabled")
        self._per_pair = per_pair


def serve_moto(fleet: Fleet, latency: float) -> None:
    """The simulator server with the fleet seeded (every image `enabled`)."""
    # moto would otherwise build ~1300 public AMIs per region and account first.
    os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"
    from monitor.demo.simulator import start_server

    server = start_server()
    controls = _MotoControls(fleet)
    controls.set_latency(latency)
    print(f"ready {server.endpoint_url}", flush=True)
    try:
        _obey(controls)
    finally:
        server.stop()


#: `Credential=<access key>/<date>/<region>/<service>/aws4_request` of a SigV4 Authorization.
_CREDENTIAL = re.compile(r"Credential=(\w+)/\d{8}/([\w-]+)/(\w+)/aws4_request")
_ACCESS_KEY = "ASIA{account}BNCH"
_STS_NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"
_XML = "text/xml;charset=UTF-8"
#: Images per page of the lean endpoint: the most the monitor asks for (its `MaxResults`).
_LEAN_PAGE = 200


def _assume_role_reply(role_arn: str) -> bytes:
    account = role_arn.split(":")[4]
    expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f'<AssumeRoleResponse xmlns="{_STS_NAMESPACE}"><AssumeRoleResult><Credentials>'
        f"<AccessKeyId>{_ACCESS_KEY.format(account=account)}</AccessKeyId>"
        "<SecretAccessKey>bench</SecretAccessKey><SessionToken>bench</SessionToken>"
        f"<Expiration>{expires}</Expiration></Credentials><AssumedRoleUser>"
        f"<AssumedRoleId>AROABENCH:bench</AssumedRoleId><Arn>{role_arn}</Arn>"
        "</AssumedRoleUser></AssumeRoleResult><ResponseMetadata><RequestId>bench</RequestId>"
        "</ResponseMetadata></AssumeRoleResponse>"
    ).encode()


def _rendered_pages(fleet: Fleet) -> dict[tuple[str, str], list[bytes]]:
    """Every (access key, region)'s describe pages, as the simulator's wire code writes them."""
    changed_at = datetime(2026, 1, 1, tzinfo=UTC)
    template = LaunchTemplateRef("lt-0123456789abcdef0", "fastlaunch", "1")
    pages: dict[tuple[str, str], list[bytes]] = {}
    pair = 0
    for account in fleet.account_ids():
        for region in fleet.regions:
            pair += 1
            images = []
            for index in range(fleet.per_pair):
                images.append(
                    SimulatedImage(
                        # By pair and index, so that `grow` adds images and keeps the others.
                        image_id=f"ami-{pair:07x}{index:010x}",
                        state="enabled",
                        state_transition_reason="",
                        state_transition_time=changed_at,
                        owner_id=account,
                        resource_type="snapshot",
                        target_resource_count=5,
                        max_parallel_launches=6,
                        launch_template=template,
                    )
                )
            starts = range(0, max(len(images), 1), _LEAN_PAGE)
            pages[(_ACCESS_KEY.format(account=account), region)] = [
                describe_reply(
                    images[start : start + _LEAN_PAGE],
                    str(start + _LEAN_PAGE) if start + _LEAN_PAGE < len(images) else None,
                ).body.encode()
                for start in starts
            ]
    return pages


class _LeanServer(ThreadingHTTPServer):
    # 64 polls connect at once; the stdlib's backlog of 5 would drop SYNs (a 1 s retry each).
    request_queue_size = 1024
    daemon_threads = True

    def __init__(self, fleet: Fleet, latency: float) -> None:
        self.fleet = fleet
        self.pages = _rendered_pages(fleet)
        self.latency = latency
        super().__init__(("127.0.0.1", 0), _LeanHandler)

    def set_latency(self, seconds: float) -> None:
        self.latency = seconds

    def grow(self, per_pair: int) -> None:
        self.fleet = replace(self.fleet, per_pair=per_pair)
        self.pages = _rendered_pages(self.fleet)


class _LeanHandler(BaseHTTPRequestHandler):
    server: _LeanServer
    # Connections stay open between requests, as EC2's endpoints keep them: each client's
    # connection is reused from cycle to cycle rather than opened for every describe.
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
        scope = _CREDENTIAL.search(self.headers.get("Authorization") or "")
        action = form.get("Action", [""])[0]
        if scope is not None and action == "AssumeRole":
            self._answer(200, _assume_role_reply(form["RoleArn"][0]))
            return
        pages = None if scope is None else self.server.pages.get((scope[1], scope[2]))
        if pages is None or action != "DescribeFastLaunchImages":
            self._answer(400, b"<Response><Errors><Error><Code>Bench</Code></Error></Errors>")
            return
        time.sleep(self.server.latency)
        start = int(form.get("NextToken", ["0"])[0])
        self._answer(200, pages[start // _LEAN_PAGE])

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", _XML)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_lean(fleet: Fleet, latency: float) -> None:
    """The lean endpoint: pages rendered at start, answered after `latency` seconds."""
    server = _LeanServer(fleet, latency)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    print(f"ready http://{host!s}:{port}", flush=True)
    try:
        _obey(server)
    finally:
        server.shutdown()


class Endpoint(EndpointChild):
    """An endpoint of `kind` (`lean` or `moto`) with `fleet` seeded, in a child process."""

    def __init__(self, kind: str, fleet: Fleet, latency: float) -> None:
        command = [sys.executable, __file__, "serve", kind, *fleet.arguments()]
        super().__init__([*command, "--latency", str(latency)])

    def set_latency(self, seconds: float) -> None:
        """Make every describe wait `seconds` from now on."""
        self.ask(f"latency {seconds}")

    def grow(self, per_pair: int) -> None:
        """Add images, to `per_pair` in every pair; the ones there stay as they are."""
        self.ask(f"grow {per_pair}")


@contextmanager
def endpoint(kind: str, fleet: Fleet, latency: float) -> Iterator[Endpoint]:
    started = Endpoint(kind, fleet, latency)
    try:
        yield started
    finally:
        started.close()


# -- the monitor (child processes) -------------------------------------------------------------


def log_like_the_daemon() -> None:
    """Log as the daemon does by default (INFO, text), into /dev/null instead of stderr."""
    setup_logging("INFO", "text")
    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sink)


def config_text(fleet: Fleet, database: Path, *, concurrency: int, processes: int) -> str:
    """One target per account, assuming a role into it, polling every region of the fleet;
    requests made in `processes` poll processes (0: in the monitor's own), up to
    `concurrency` at a time."""
    regions = ", ".join(f'"{region}"' for region in fleet.regions)
    targets = "".join(
        f'[[targets]]\nname = "a{account}"\nregions = [{regions}]\n'
        f'role_arn = "arn:aws:iam::{account}:role/FastLaunchMonitor"\n'
        for account in fleet.account_ids()
    )
    monitor = f"[monitor]\nmax_concurrency = {concurrency}\npoll_processes = {processes}\n"
    return f'{monitor}[database]\nurl = "sqlite:///{database}"\n{targets}'


@dataclass(frozen=True, slots=True)
class Timed:
    """One cycle: its wall seconds, the CPU seconds of this whole process, its failed polls."""

    wall: float
    cpu: float
    failed: int
    #: One message per error code of the failed polls.
    errors: dict[str, str]


class Monitor:
    """The daemon's `Runtime` over a fresh SQLite file, leading, and cycles over its objects.

    Cycles are made here, one per concurrency, over the runtime's sources (and so its
    clients and assumed roles), store, current state and metrics.
    """

    def __init__(self, runtime: Runtime, pairs: int) -> None:
        self.runtime = runtime
        self._pairs = pairs
        self._cycles: dict[int, Cycle] = {}
        # After a failed poll, the next cycle sees that pair's images for the first time.
        self._exact = True
        self._cycled = False

    def run(self, concurrency: int, transitions: int) -> Timed:
        """One cycle; fails loudly if it is not the cycle of `transitions` changes expected."""
        rt = self.runtime
        cycle = self._cycles.get(concurrency)
        if cycle is None:
            # Without an `interval`, no backoff: every pair is polled in every cycle.
            cycle = Cycle(rt.sources, rt.store, rt.current, rt.metrics, max_concurrency=concurrency)
            self._cycles[concurrency] = cycle
        started, cpu = time.monotonic(), cpu_seconds(rt)
        result = cycle.run()
        wall, cpu = time.monotonic() - started, cpu_seconds(rt) - cpu
        if not self._cycled:
            # As the daemon does after its first cycle.
            freeze_long_lived()
            self._cycled = True
        errors = {
            str(poll.result.error_code): str(poll.result.error_message) for poll in result.failed
        }
        if len(result.polls) != self._pairs or (
            self._exact and not errors and result.transitions != transitions
        ):
            raise RuntimeError(f"unexpected cycle: {result.summary()}")
        self._exact = self._exact and not errors
        return Timed(wall, cpu, len(result.failed), errors)

    def close(self) -> None:
        for cycle in self._cycles.values():
            cycle.close()


def poll_process_pids(runtime: Runtime) -> list[int]:
    """The pids of the runtime's poll processes that run now."""
    processes = {s.process for s in runtime.sources if isinstance(s, RemoteSource)}
    return [pid for process in processes if (pid := process.pid) is not None]


def cpu_seconds(runtime: Runtime) -> float:
    """The CPU seconds used so far by this process and by its poll processes that run now."""
    total = time.process_time()
    for pid in poll_process_pids(runtime):
        # /proc/PID/stat: utime and stime are the 14th and 15th fields, in clock ticks; the
        # command name (2nd) may hold spaces, so count from its closing parenthesis.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def peak_rss_mb(runtime: Runtime) -> float:
    """The peak RSS of this process plus those of its poll processes that run now."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for pid in poll_process_pids(runtime):
        status = Path(f"/proc/{pid}/status").read_text()
        kib += int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)[1])  # type: ignore[index]
    return kib / 1024


@contextmanager
def monitor_for(fleet: Fleet, *, concurrency: int, processes: int) -> Iterator[Monitor]:
    with tempfile.TemporaryDirectory(prefix="fastlaunch-scale-") as folder:
        database = Path(folder) / "history.sqlite3"
        text = config_text(fleet, database, concurrency=concurrency, processes=processes)
        settings = parse_settings(text, source="bench", env={}, base_dir=Path(folder))
        runtime = open_runtime(settings)
        runtime.metrics.set_leader(True)
        monitor = Monitor(runtime, fleet.pairs)
        try:
            yield monitor
        finally:
            monitor.close()
            runtime.close()


def emit(result: dict[str, Any]) -> None:
    print(RESULT + json.dumps(result), flush=True)


def ask_parent(request: str) -> None:
    """Print `request` for the parent and wait for its answer line."""
    print(request, flush=True)
    sys.stdin.readline()


def measure_cycles(fleet: Fleet, concurrencies: list[int], cycles: int, processes: int) -> None:
    """(a), in this process; asks the parent for `latency 0` before the last runs."""
    log_like_the_daemon()
    result: dict[str, Any] = {"runs": []}
    with monitor_for(fleet, concurrency=max(concurrencies), processes=processes) as monitor:
        result["cold"] = asdict(monitor.run(concurrencies[0], fleet.images))
        for concurrency in concurrencies:
            warm = [monitor.run(concurrency, 0) for _ in range(cycles)]
            result["runs"].append([concurrency, False, [asdict(t) for t in warm]])
        ask_parent("latency 0")
        fastest = max(concurrencies)
        warm = [monitor.run(fastest, 0) for _ in range(cycles)]
        result["runs"].append([fastest, True, [asdict(t) for t in warm]])
        result["rss_mb"] = peak_rss_mb(monitor.runtime)
    emit(result)


class ApplyTimer:
    """Wraps `Store.apply_poll`, summing its wall time and its thread's CPU time while on."""

    def __init__(self, apply: Callable[..., Any]) -> None:
        self._apply = apply
        self._lock = threading.Lock()
        self.on = False
        self.wall = 0.0
        self.cpu = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.monotonic(), time.thread_time()
        try:
            return self._apply(*args, **kwargs)
        finally:
            wall, cpu = time.monotonic() - wall, time.thread_time() - cpu
            if self.on:
                with self._lock:
                    self.wall += wall
                    self.cpu += cpu


def measure_images(fleet: Fleet, sizes: list[int], concurrency: int, processes: int) -> None:
    """(b), in this process: per size (images per pair), in turn, asking the parent to grow
    the endpoint's images to it, then to scrape during the last cycle."""
    log_like_the_daemon()
    stages = []
    with monitor_for(fleet, concurrency=concurrency, processes=processes) as monitor:
        store = monitor.runtime.store
        timer = ApplyTimer(store.apply_poll)
        # The cycles call the runtime's store: this very object.
        store.apply_poll = timer  # type: ignore[method-assign]
        http = serve(
            "127.0.0.1",
            0,
            monitor.runtime.registry,
            healthy=lambda: True,
            ready=lambda: Readiness(True, {}),
        )
        try:
            known = 0
            for per_pair in sizes:
                if known:
                    ask_parent(f"grow {per_pair}")
                images = fleet.pairs * per_pair
                first = monitor.run(concurrency, images - known)
                known = images
                timer.wall = timer.cpu = 0.0
                timer.on = True
                unchanged = monitor.run(concurrency, 0)
                timer.on = False
                unscraped_rss = peak_rss_mb(monitor.runtime)
                ask_parent(f"scrape {http.url}/metrics")
                scraped = monitor.run(concurrency, 0)
                ask_parent("stop")
                stages.append(
                    {
                        "images": images,
                        "first": asdict(first),
                        "unchanged": asdict(unchanged),
                        "scraped_cycle": asdict(scraped),
                        "db_wall": timer.wall,
                        "db_cpu": timer.cpu,
                        "unscraped_rss_mb": unscraped_rss,
                        "rss_mb": peak_rss_mb(monitor.runtime),
                    }
                )
        finally:
            http.close()
    emit({"stages": stages})


# -- the parent: runs the children, scrapes, prints --------------------------------------------


def child(arguments: list[str], answer: Callable[[str], None]) -> dict[str, Any]:
    """Run this file with `arguments` to its end and return its result.

    Its other lines are requests: `answer` acts on each, then the child hears `ok`.
    """
    process = subprocess.Popen(
        [sys.executable, __file__, *arguments],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdin is not None
    result: dict[str, Any] | None = None
    for line in process.stdout:
        if line.startswith(RESULT):
            result = json.loads(line[len(RESULT) :])
            continue
        answer(line.strip())
        process.stdin.write("ok\n")
        process.stdin.flush()
    if process.wait() != 0 or result is None:
        raise RuntimeError(f"the {arguments[0]} child failed (exit {process.returncode})")
    return result


class Scraper:
    """Scrapes a `/metrics` URL as Prometheus does, again and again, on a thread of its own."""

    def __init__(self, url: str, *, again: bool = True) -> None:
        """With `again`, scrape until `stop()` on a thread; without, scrape `IDLE_SCRAPES`
        times now, one after the other."""
        self._url = url
        self._stop = threading.Event()
        self.seconds: list[float] = []
        self.last_body = b""
        self._thread = threading.Thread(target=self._loop, daemon=True)
        if again:
            self._thread.start()
        else:
            for _ in range(IDLE_SCRAPES):
                self._scrape()

    def _scrape(self) -> None:
        request = urllib.request.Request(
            self._url, headers={"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
        )
        started = time.monotonic()
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
        self.seconds.append(time.monotonic() - started)
        self.last_body = body

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._scrape()
            self._stop.wait(SCRAPE_PAUSE_SECONDS)

    def stop(self) -> None:
        """Stop after the scrape in flight."""
        self._stop.set()
        self._thread.join()

    def image_count(self) -> int:
        """How many images the last scrape carried (its `fastlaunch_image_info` series)."""
        # A series of gzip members, as the monitor sends it: gzip reads them all.
        text = gzip.decompress(self.last_body)
        return text.count(b"\nfastlaunch_image_info{")


def run_cycles(
    kind: str, fleet: Fleet, latency: float, concurrencies: list[int], cycles: int, processes: int
) -> dict[str, Any]:
    """(a): the child's figures."""
    with endpoint(kind, fleet, latency) as simulated:

        def answer(request: str) -> None:
            if request != "latency 0":
                raise RuntimeError(f"unexpected request {request!r}")
            simulated.set_latency(0)

        arguments = ["cycles", "--url", simulated.url, *fleet.arguments()]
        arguments += ["--concurrency", *map(str, concurrencies), "--cycles", str(cycles)]
        arguments += ["--poll-processes", str(processes)]
        return child(arguments, answer)


def run_images(
    kind: str, fleet: Fleet, sizes: list[int], latency: float, concurrency: int, processes: int
) -> list[dict[str, Any]]:
    """(b): per size, the child's figures and those of the scrapes: idle, then in a cycle."""
    scrapes: list[tuple[list[float], Scraper]] = []

    with endpoint(kind, replace(fleet, per_pair=sizes[0]), latency) as simulated:

        def answer(request: str) -> None:
            command, *rest = request.split()
            if command == "grow":
                simulated.grow(int(rest[0]))
            elif command == "scrape":
                idle = Scraper(rest[0], again=False)
                scrapes.append((idle.seconds, Scraper(rest[0])))
            elif command == "stop":
                scrapes[-1][1].stop()
            else:
                raise RuntimeError(f"unexpected request {request!r}")

        arguments = ["images", "--url", simulated.url, *fleet.arguments()]
        arguments += ["--sizes", *map(str, sizes), "--concurrency", str(concurrency)]
        arguments += ["--poll-processes", str(processes)]
        stages: list[dict[str, Any]] = child(arguments, answer)["stages"]
    for stage, (idle, busy) in zip(stages, scrapes, strict=True):
        stage["idle_scrapes"] = idle
        stage["scrapes"] = busy.seconds
        stage["scraped_images"] = busy.image_count()
    return stages


def _verdict(met: bool) -> str:
    return "ok" if met else "MISSED"


def _failures(cycles: list[dict[str, Any]], notes: dict[str, str]) -> str:
    """The failed polls of `cycles`, for a table cell; their messages go to `notes`."""
    for cycle in cycles:
        notes.update(cycle["errors"])
    return "/".join(str(cycle["failed"]) for cycle in cycles)


def _print_notes(notes: dict[str, str]) -> None:
    for code, message in sorted(notes.items()):
        print(f"    failed polls, {code}: {message}")


def report_cycles(
    kind: str, fleet: Fleet, latency: float, results: list[tuple[int, dict[str, Any]]]
) -> None:
    """Print (a): per number of poll processes, per concurrency the unchanged cycles and the
    goal, then each cold cycle."""
    cycles = len(results[0][1]["runs"][0][2])
    print(
        f"\n(a) {fleet.pairs:,} (target, region) pairs: {fleet.accounts} accounts (assumed "
        f"roles) x {len(fleet.regions)} regions, {fleet.per_pair} images each; {kind} "
        "endpoint; SQLite.\n"
        "    processes: [monitor] poll_processes (0: requests made in the monitor's own "
        "process); wall seconds of\n"
        f"    {cycles} unchanged cycles (median, range); CPU: the monitor's and its poll "
        "processes' per unchanged cycle (median);\n"
        "    failed: failed polls of each cycle; goal: "
        f"{CYCLE_GOAL_FACTOR} x pairs x latency / max_concurrency"
    )
    print(
        f"{'processes':>9} {'max_concurrency':>15} {'latency':>8} {'unchanged':>10} "
        f"{'range':>12} {'CPU':>6} {'failed':>8}  goal"
    )
    notes: dict[str, str] = {}
    for processes, result in results:
        _failures([result["cold"]], notes)
        for concurrency, no_latency, warm in result["runs"]:
            walls = [cycle["wall"] for cycle in warm]
            median = statistics.median(walls)
            cpu = statistics.median(cycle["cpu"] for cycle in warm)
            added = 0.0 if no_latency else latency
            if added > 0:
                goal = CYCLE_GOAL_FACTOR * fleet.pairs * added / concurrency
                verdict = f"<= {goal:.2f} s {_verdict(median <= goal)}"
            else:
                verdict = "- (no added latency: the machine's floor)"
            print(
                f"{processes:>9} {concurrency:>15} {added:>7g}s {median:>10.2f} "
                f"{f'{min(walls):.2f}-{max(walls):.2f}':>12} {cpu:>6.2f} "
                f"{_failures(warm, notes):>8}  {verdict}"
            )
    for processes, result in results:
        cold = result["cold"]
        print(
            f"cold (first) cycle, {processes} poll processes, max_concurrency "
            f"{result['runs'][0][0]}, every role assumed and every client made: "
            f"{cold['wall']:.2f} s, CPU {cold['cpu']:.2f} s, {cold['failed']} failed; "
            f"peak RSS {result['rss_mb']:.0f} MB"
        )
    _print_notes(notes)


def report_images(kind: str, fleet: Fleet, concurrency: int, stages: list[dict[str, Any]]) -> None:
    """Print (b): cycle and database times, peak RSS, and the scrapes, per size."""
    print(
        f"\n(b) images spread over {fleet.pairs:,} pairs, max_concurrency {concurrency}, "
        f"{kind} endpoint, SQLite; one monitor process, the sizes in turn.\n"
        "    Wall seconds of the cycle that first sees the images (the first one also assumes "
        "every role and makes every client) and of an unchanged one;\n"
        "    DB: time inside Store.apply_poll summed over that unchanged cycle (wall; CPU of "
        "the polling threads), and per image in microseconds;\n"
        "    failed: failed polls of the new, unchanged and scraped cycles; peak RSS before "
        "the scrapes, and after"
    )
    print(
        f"{'images':>8} {'new':>7} {'unchanged':>10} {'DB wall':>8} {'DB CPU':>7} "
        f"{'us/image':>13} {'failed':>8} {'peak RSS':>16}  goal"
    )
    notes: dict[str, str] = {}
    for stage in stages:
        images = stage["images"]
        wall, cpu = (stage[key] / images * 1e6 for key in ("db_wall", "db_cpu"))
        cycles = [stage["first"], stage["unchanged"], stage["scraped_cycle"]]
        rss = stage["rss_mb"]
        print(
            f"{images:>8,} {stage['first']['wall']:>7.2f} {stage['unchanged']['wall']:>10.2f} "
            f"{stage['db_wall']:>8.2f} {stage['db_cpu']:>7.2f} {f'{wall:.1f} / {cpu:.1f}':>13} "
            f"{_failures(cycles, notes):>8} {stage['unscraped_rss_mb']:>6.0f} / {rss:>5.0f} MB  "
            f"<= {RSS_GOAL_MB} MB {_verdict(rss <= RSS_GOAL_MB)}"
        )
    _print_notes(notes)
    if len(stages) > 1:
        low, *_, high = stages
        wall, cpu = (
            (high[key] / high["images"]) / (low[key] / low["images"])
            for key in ("db_wall", "db_cpu")
        )
        print(
            f"DB time per image, {high['images']:,} over {low['images']:,} images: CPU "
            f"{cpu:.2f}x (flat: <= 1) {_verdict(cpu <= 1.0)}; wall {wall:.2f}x (it includes "
            "the waits for SQLite's one writer and for the GIL)"
        )
    print(
        f"/metrics (gzip, OpenMetrics, as Prometheus asks): {IDLE_SCRAPES} scrapes of the "
        "idle monitor (median), then scrapes during an unchanged cycle\n"
        f"    ({SCRAPE_PAUSE_SECONDS:g} s apart; median, max), that cycle's wall seconds, and "
        "the image series of the last scrape"
    )
    print(
        f"{'images':>8} {'idle':>6} {'scrapes':>8} {'median':>7} {'max':>6} {'cycle':>6} "
        f"{'series':>8}  goal"
    )
    for stage in stages:
        scrapes = stage["scrapes"]
        worst = max(scrapes)
        print(
            f"{stage['images']:>8,} {statistics.median(stage['idle_scrapes']):>5.2f}s "
            f"{len(scrapes):>8} {statistics.median(scrapes):>6.2f}s {worst:>5.2f}s "
            f"{stage['scraped_cycle']['wall']:>5.2f}s {stage['scraped_images']:>8,}  "
            f"max <= {SCRAPE_GOAL_SECONDS:g} s {_verdict(worst <= SCRAPE_GOAL_SECONDS)}"
        )


def _fleet_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accounts", type=int, required=True)
    parser.add_argument("--regions", required=True, help="comma-separated")
    parser.add_argument("--per-pair", type=int, required=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000, help="(target, region) pairs")
    parser.add_argument("--regions", type=int, default=10, help="regions the pairs spread over")
    parser.add_argument("--latency", type=float, default=0.1, help="added per describe, seconds")
    parser.add_argument("--endpoint", choices=("lean", "moto"), default="lean")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--cycles", type=int, default=3, help="unchanged cycles per run in (a)")
    parser.add_argument("--seeded", type=int, default=3, help="images per pair in (a)")
    parser.add_argument("--images", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--images-concurrency", type=int, default=16, help="in (b)")
    parser.add_argument(
        "--poll-processes", type=int, nargs="+", default=[0, 1, 2], help="in (a), in turn"
    )
    parser.add_argument("--images-poll-processes", type=int, default=0, help="in (b)")
    parser.add_argument("--only", choices=("cycles", "images"), help="run one part only")
    # The children: this file again, in processes of their own.
    commands = parser.add_subparsers(dest="command", help=argparse.SUPPRESS)
    served = commands.add_parser("serve")
    served.add_argument("kind", choices=("lean", "moto"))
    _fleet_options(served)
    served.add_argument("--latency", type=float, required=True)
    for name in ("cycles", "images"):
        measured = commands.add_parser(name)
        _fleet_options(measured)
        measured.add_argument("--url", required=True)
        measured.add_argument("--concurrency", type=int, nargs="+", required=True)
        measured.add_argument("--cycles", type=int, default=1)
        measured.add_argument("--sizes", type=int, nargs="+", help="images per pair, in turn")
        measured.add_argument("--poll-processes", type=int, default=0)
    return parser


def main() -> int:
    parser = _parser()
    args = parser.parse_args()
    if args.command == "serve":
        run_endpoint = serve_lean if args.kind == "lean" else serve_moto
        run_endpoint(Fleet.from_arguments(args), args.latency)
        return 0
    if args.command in ("cycles", "images"):
        use_endpoint(args.url, REGIONS[0])
        if args.command == "cycles":
            fleet = Fleet.from_arguments(args)
            measure_cycles(fleet, args.concurrency, args.cycles, args.poll_processes)
        else:
            fleet = Fleet.from_arguments(args)
            measure_images(fleet, args.sizes, args.concurrency[0], args.poll_processes)
        return 0
    if not 1 <= args.regions <= len(REGIONS) or args.pairs % args.regions:
        parser.error(f"--regions must be 1 to {len(REGIONS)} and divide --pairs")
    if any(images % args.pairs for images in args.images):
        parser.error("every --images must be a multiple of --pairs")
    regions = REGIONS[: args.regions]
    accounts = args.pairs // args.regions
    started = time.monotonic()
    if args.only in (None, "cycles"):
        fleet = Fleet(accounts, regions, args.seeded)
        results = [
            (
                processes,
                run_cycles(
                    args.endpoint, fleet, args.latency, args.concurrency, args.cycles, processes
                ),
            )
            for processes in args.poll_processes
        ]
        report_cycles(args.endpoint, fleet, args.latency, results)
    if args.only in (None, "images"):
        sizes = [images // args.pairs for images in sorted(args.images)]
        fleet = Fleet(accounts, regions, sizes[0])
        stages = run_images(
            args.endpoint,
            fleet,
            sizes,
            args.latency,
            args.images_concurrency,
            args.images_poll_processes,
        )
        report_images(args.endpoint, fleet, args.images_concurrency, stages)
    print(f"\n(run time {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
