"""Polling in several processes: a large fleet's AWS requests spread over the machine's cores.

botocore's work for each request (signing, its event hooks, parsing the reply) and
http.client's hold the GIL: a daemon polling 1,000 (target, region) pairs 64 at a time ran
out of one core before it ran out of concurrency (`bench/scale.py`). With
`[monitor] poll_processes = N`, the targets are spread over N poll processes
(`monitor.aws.poll_worker`) that make their requests; the daemon keeps everything else —
normalising, diffing, the database, metrics, alerts — so what a poll records is the same.

An account is served by one process, so its token buckets (`monitor.aws.ratelimit`) stay in one
place: targets are placed by the account their role names, else by their profile. A poll
process starts at the first request it must answer, so a standby starts none; one that exits
is started again by the next request, and the requests it had in flight fail as
`PollProcessExited`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from monitor.aws.poll_protocol import (
    Operation,
    Reply,
    Request,
    Setup,
    failure,
    frame,
    raised,
    read_frame,
)
from monitor.aws.sessions import PollLimits, RawImage, TargetSource, target_scope
from monitor.config.settings import AwsSettings, TargetSettings
from monitor.core.errors import SourceError
from monitor.core.logs import configured
from monitor.core.model import Scope

log = logging.getLogger(__name__)

#: How long a closed poll process may take to exit before it is killed.
_EXIT_SECONDS = 5.0

#: Where `monitor` is imported from: a poll process imports the same code, installed or not.
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def placement(source: TargetSource) -> str:
    """What decides a target's poll process: the account its role names, else its profile."""
    if source.known_account_id:
        return f"account {source.known_account_id}"
    return f"profile {source.settings.profile or ''}"


@dataclass(slots=True)
class _Running:
    """One started poll process, its pipes and the requests it has not answered yet."""

    process: subprocess.Popen[bytes]
    requests: IO[bytes]
    replies: IO[bytes]
    pending: dict[int, Future[Reply]] = field(default_factory=dict)


class PollProcess:
    """One poll process: started on demand, and again after it exits. Thread-safe."""

    def __init__(self, number: int, setup: Setup) -> None:
        self.number = number
        self._setup = setup
        self._lock = threading.Lock()
        self._running: _Running | None = None
        self._ids = itertools.count()
        self._closed = False

    def call(
        self,
        target: int,
        operation: Operation,
        region: str = "",
        limits: PollLimits | None = None,
    ) -> Any:
        """Run `operation` for the target at config index `target`; its value, or the
        `SourceError` it failed with."""
        future: Future[Reply] = Future()
        with self._lock:
            if self._closed:
                raise SourceError("PollProcessClosed", "the monitor is stopping")
            running = self._running or self._start()
            request_id = next(self._ids)
            running.pending[request_id] = future
            try:
                running.requests.write(
                    frame(Request(request_id, target, operation, region, limits))
                )
                running.requests.flush()
            except OSError:
                # It has exited: its reader fails every pending request, this one included.
                pass
        reply = future.result()
        if reply.error is not None:
            raise raised(reply.error)
        return reply.value

    @property
    def pid(self) -> int | None:
        """The running process's pid, if one runs."""
        with self._lock:
            return None if self._running is None else self._running.process.pid

    def close(self) -> None:
        """End the process (it exits at the end of its request pipe); pending requests fail."""
        with self._lock:
            self._closed = True
            running, self._running = self._running, None
        if running is None:
            return
        _close_quietly(running.requests)
        try:
            running.process.wait(_EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            running.process.kill()
            running.process.wait()
        self._fail_pending(running, SourceError("PollProcessClosed", "the monitor is stopping"))

    def _start(self) -> _Running:
        requests_read, requests_write = os.pipe()
        replies_read, replies_write = os.pipe()
        command = ["-m", "monitor.aws.poll_worker", str(requests_read), str(replies_write)]
        python_path = os.pathsep.join(filter(None, (_PACKAGE_ROOT, os.environ.get("PYTHONPATH"))))
        try:
            # Our own interpreter and module, and two numbers: nothing from outside.
            process = subprocess.Popen(  # noqa: S603
                [sys.executable, *command],
                pass_fds=(requests_read, replies_write),
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": python_path},
            )
        except OSError as exc:
            for fd in (requests_write, replies_read):
                os.close(fd)
            raise SourceError("PollProcessFailed", f"cannot start a poll process: {exc}") from exc
        finally:
            # The child's ends: open in the child only, so that its exit is our end of file.
            os.close(requests_read)
            os.close(replies_write)
        running = _Running(process, os.fdopen(requests_write, "wb"), os.fdopen(replies_read, "rb"))
        try:
            running.requests.write(frame(self._setup))
            running.requests.flush()
        except OSError:
            # It exited at once: its reader fails the request that started it.
            pass
        threading.Thread(
            target=self._read, args=(running,), name=f"poll-process-{self.number}", daemon=True
        ).start()
        self._running = running
        log.info(
            "poll process %d started (pid %d) for %d targets",
            self.number,
            process.pid,
            len(self._setup.targets),
        )
        return running

    def _read(self, running: _Running) -> None:
        try:
            while (reply := read_frame(running.replies)) is not None:
                with self._lock:
                    future = running.pending.pop(reply.id, None)
                if future is not None:
                    future.set_result(reply)
        except Exception:
            # A reply that cannot be read leaves the stream unusable: end the process, and
            # with it every request it holds, as if it had died.
            log.exception("poll process %d sent an unreadable reply", self.number)
            running.process.kill()
        _close_quietly(running.replies)
        with self._lock:
            exited = self._running is running
            if exited:
                self._running = None
        if not exited:
            return  # closed on purpose
        code = running.process.wait()
        _close_quietly(running.requests)
        log.error(
            "poll process %d (pid %d) exited with code %d; its polls in flight failed, "
            "and the next poll starts it again",
            self.number,
            running.process.pid,
            code,
        )
        self._fail_pending(
            running,
            SourceError("PollProcessExited", f"poll process {self.number} exited with code {code}"),
        )

    def _fail_pending(self, running: _Running, error: SourceError) -> None:
        with self._lock:
            pending, running.pending = running.pending, {}
        for request_id, future in pending.items():
            future.set_result(Reply(request_id, error=failure(error)))


def _close_quietly(stream: IO[bytes]) -> None:
    # What it still buffers is for a process that is gone.
    with contextlib.suppress(OSError):
        stream.close()


class RemoteSource:
    """A target polled by a poll process: what `Cycle` needs of a `TargetSource`."""

    def __init__(self, source: TargetSource, index: int, process: PollProcess) -> None:
        self.key = source.key
        self.regions = source.regions
        self.settings = source.settings
        #: The poll process that makes its requests.
        self.process = process
        self._index = index
        self._account_id = source.known_account_id

    @property
    def known_account_id(self) -> str:
        return self._account_id

    def account_id(self) -> str:
        if not self._account_id:
            self._account_id = str(self.process.call(self._index, "account"))
        return self._account_id

    def scope(self, region: str) -> Scope:
        return target_scope(self.settings, self._account_id, region)

    def describe(self, region: str, limits: PollLimits | None = None) -> tuple[list[RawImage], int]:
        items, pages = self.process.call(self._index, "describe", region, limits)
        return items, pages


class PollProcesses:
    """`sources` (in config order) spread over `processes` poll processes by `placement`.

    `threads`: how many requests each process makes at once (the cycle's `max_concurrency`
    bounds them all together).
    """

    def __init__(
        self,
        sources: Sequence[TargetSource],
        aws: AwsSettings,
        *,
        processes: int,
        threads: int,
    ) -> None:
        by_placement: dict[str, int] = {}
        numbers = [
            by_placement.setdefault(placement(source), len(by_placement) % processes)
            for source in sources
        ]
        placed: list[list[tuple[int, TargetSettings]]] = [[] for _ in range(processes)]
        for index, (source, number) in enumerate(zip(sources, numbers, strict=True)):
            placed[number].append((index, source.settings))
        level, log_format = configured()
        self.processes = tuple(
            PollProcess(number, Setup(tuple(targets), aws, threads, level, log_format))
            for number, targets in enumerate(placed)
        )
        self.sources = tuple(
            RemoteSource(source, index, self.processes[number])
            for index, (source, number) in enumerate(zip(sources, numbers, strict=True))
        )

    def close(self) -> None:
        for process in self.processes:
            process.close()
