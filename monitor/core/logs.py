"""Logging to stderr (journald under systemd), as text or as one JSON object a line.

Context such as the target, region and image travels in `extra=` and is printed by both
formats. Nothing secret is ever passed to a logger: receivers, databases and targets are named,
not their URLs or keys; credentials in any URL a message quotes are masked all the same. A
record is one line in either format whatever its text holds (AWS's included): JSON escapes
line breaks and control characters, the text format shows them escaped.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from types import TracebackType
from typing import TextIO

from monitor.core.printable import printable, printable_traceback
from monitor.core.redact import redact_url_credentials

#: `extra=` keys that both formats print.
CONTEXT_KEYS = ("target", "account_id", "region", "image", "receiver")

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any context keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_url_credentials(record.getMessage()),
        }
        for key in CONTEXT_KEYS:
            value = record.__dict__.get(key)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = redact_url_credentials(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """`LEVEL logger: message` — journald adds the time itself.

    The message is one line: a line break or escape sequence in it is printed escaped
    (`printable`), so no text from outside can forge a log line or restyle a terminal. A
    traceback follows on lines of its own, its exception messages escaped the same way.
    """

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname} {record.name}: {printable(record.getMessage())}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact_url_credentials(line)

    def formatException(
        self,
        ei: tuple[type[BaseException], BaseException, TracebackType | None]
        | tuple[None, None, None],
    ) -> str:
        """The traceback, with each exception's message made `printable`."""
        _, exc, _ = ei
        return "NoneType: None" if exc is None else printable_traceback(exc)


#: The level and format of the last `setup_logging`: what a poll process logs with too.
_configured = {"level": "INFO", "format": "text"}


def configured() -> tuple[str, str]:
    """The (level, format) this process logs with."""
    return _configured["level"], _configured["format"]


def setup_logging(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every log record at `level` and above to `stream` (stderr) in the chosen format."""
    _configured.update(level=level, format=fmt)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # APScheduler announces every job run at INFO; that is noise at the default level.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
    for chatty in ("botocore", "boto3", "urllib3", "alembic"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
