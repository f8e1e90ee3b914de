"""The one exception hierarchy of the monitor.

Errors from the outside (botocore, SQLAlchemy, urllib3, the TOML parser) are translated into
these at the adapter where the outside call is made, so the rest of the code never imports an
outside library just to catch its exceptions. Messages never carry secrets: a webhook is named
by its receiver name, a database by its scheme and host.
"""

from __future__ import annotations


class MonitorError(Exception):
    """Base of every error the monitor raises on purpose."""


class ConfigError(MonitorError):
    """The configuration is unusable; the CLI prints it as one line and exits 2.

    `file` is the config file (or the environment variable) the value came from, `key` the
    dotted key (`targets[1].regions`), `message` what is wrong and how to fix it.
    """

    def __init__(self, file: str, key: str | None, message: str) -> None:
        self.file = file
        self.key = key
        self.message = message
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {message}")


class SourceError(MonitorError):
    """A call to AWS failed; `code` is the AWS error code or the error class name.

    `permanent`: the cause does not pass by itself and needs a person (a missing permission,
    unknown or expired static credentials, a region not opted in); anything else (throttling,
    5xx, timeouts, an unparseable answer, a poll past its deadline) may be gone at the next poll.
    """

    def __init__(self, code: str, message: str, *, permanent: bool = False) -> None:
        self.code = code
        self.message = message
        self.permanent = permanent
        super().__init__(f"{code}: {message}")


class StoreError(MonitorError):
    """The database failed or refused an operation.

    `refused`: the database answered and refused what it was given (a value out of a column's
    range, a broken constraint), as opposed to not answering at all.
    """

    def __init__(self, message: str, *, refused: bool = False) -> None:
        self.refused = refused
        super().__init__(message)


class SchemaBehindError(StoreError):
    """The database schema is older than this version of the monitor (run `db upgrade`)."""


class DeliveryError(MonitorError):
    """A webhook delivery failed; `permanent` failures are not retried."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        self.permanent = permanent
        super().__init__(message)
