"""What the daemon and its poll processes say to each other, and how it is framed.

Two pipes per poll process: requests one way, replies the other. A frame is a 4-byte
big-endian length and a pickle. Both ends are this package, started by the daemon itself, so
pickle is safe here and keeps the raw botocore items (nested dicts, datetimes) as they are.

The daemon first sends a `Setup`, then `Request`s; the poll process answers each with a
`Reply`, in whatever order they finish.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import IO, Any, Literal

from monitor.aws.sessions import PollLimits
from monitor.config.settings import AwsSettings, TargetSettings
from monitor.core.errors import SourceError

#: A frame's length prefix, in bytes.
_LENGTH = 4

#: `describe`: `TargetSource.describe(region)`; `account`: `TargetSource.account_id()`.
Operation = Literal["describe", "account"]


@dataclass(frozen=True, slots=True)
class Setup:
    """The targets a poll process serves (by their index in the config), and how."""

    targets: tuple[tuple[int, TargetSettings], ...]
    aws: AwsSettings
    threads: int
    log_level: str
    log_format: str


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    target: int
    operation: Operation
    region: str
    limits: PollLimits | None = None


#: A `SourceError` as it crosses the pipe: its code, message and whether it is permanent.
Failure = tuple[str, str, bool]


def failure(error: SourceError) -> Failure:
    """`error` as a reply carries it."""
    return (error.code, error.message, error.permanent)


def raised(error: Failure) -> SourceError:
    """The `SourceError` a reply's `error` stands for."""
    code, message, permanent = error
    return SourceError(code, message, permanent=permanent)


@dataclass(frozen=True, slots=True)
class Reply:
    """The value of a request, or the `Failure` it failed with."""

    id: int
    value: Any = None
    error: Failure | None = None


def frame(message: object) -> bytes:
    """`message` as one frame, ready to be written whole."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(_LENGTH, "big") + data


def read_frame(stream: IO[bytes]) -> Any:
    """The next message on `stream`; `None` once the other end has closed it."""
    prefix = stream.read(_LENGTH)
    if len(prefix) < _LENGTH:
        return None
    size = int.from_bytes(prefix, "big")
    data = stream.read(size)
    if len(data) < size:
        return None
    # A pipe between the daemon and the process it started: no one else writes to it.
    return pickle.loads(data)  # noqa: S301
