"""A poll process: makes the AWS requests of some targets for the daemon that started it.

`python -m monitor.aws.poll_worker REQUESTS_FD REPLIES_FD`, started by `monitor.aws.poll_processes`
only. It holds the targets' sessions, credentials, clients and token buckets, and answers
each request in a thread of its own, as the daemon's poll threads would. Its life is the
daemon's: the end of the request pipe (the daemon closed it, or died) ends it at once, and it
ignores SIGINT and SIGTERM, which a terminal or systemd sends to the whole group, so that
the daemon can finish its in-flight polls before it closes the pipe.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import IO, NoReturn

from monitor.aws.poll_protocol import Reply, Request, Setup, failure, frame, read_frame
from monitor.aws.sessions import BaseSessions, TargetSource
from monitor.core.errors import SourceError
from monitor.core.logs import setup_logging
from monitor.core.malloc import return_large_buffers

log = logging.getLogger(__name__)


def answer(sources: dict[int, TargetSource], request: Request) -> Reply:
    """Run one request; whatever goes wrong is its reply, never an exception."""
    try:
        source = sources[request.target]
        if request.operation == "describe":
            return Reply(request.id, source.describe(request.region, request.limits))
        return Reply(request.id, source.account_id())
    except SourceError as exc:
        return Reply(request.id, error=failure(exc))
    except Exception as exc:
        # A bug, not an AWS failure (the adapter translates those): its traceback is here.
        log.exception("%s of targets[%d] failed unexpectedly", request.operation, request.target)
        message = "unexpected error in a poll process; see the monitor's log"
        return Reply(request.id, error=(type(exc).__name__, message, False))


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """Answer requests until the request pipe ends; returns without waiting for those in flight."""
    setup = read_frame(requests)
    if not isinstance(setup, Setup):
        return
    setup_logging(setup.log_level, setup.log_format)
    sessions = BaseSessions()
    sources = {
        index: TargetSource(index, target, setup.aws, sessions=sessions)
        for index, target in setup.targets
    }
    sending = threading.Lock()

    def run(request: Request) -> None:
        reply = answer(sources, request)
        try:
            data = frame(reply)
        except Exception as exc:
            # Never leave the daemon waiting: a reply that cannot be sent is a failed one.
            log.exception("reply %d could not be sent", request.id)
            data = frame(Reply(request.id, error=(type(exc).__name__, "unsendable reply", False)))
        try:
            with sending:
                replies.write(data)
                replies.flush()
        except OSError:
            # The daemon is gone: nobody is left to answer.
            os._exit(0)

    executor = ThreadPoolExecutor(setup.threads, thread_name_prefix="poll")
    while (request := read_frame(requests)) is not None:
        executor.submit(run, request)
    executor.shutdown(wait=False, cancel_futures=True)


def main(argv: list[str]) -> NoReturn:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return_large_buffers()
    requests_fd, replies_fd = (int(fd) for fd in argv[1:3])
    serve(os.fdopen(requests_fd, "rb"), os.fdopen(replies_fd, "wb"))
    # The daemon closed the pipe: it waits for no reply, so no request in flight is waited for.
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
