"""Durations as people write them: `"90s"`, `"5m"`, `"1h30m"`, `"250ms"`, or integer seconds.

Shared by the config file and the CLI (`--since`, `demo --duration`), so both accept the same
spelling. Pure: raises `ValueError` with a message fit to show a user; callers add where the
value came from.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal

#: Units from the largest down, in the order they must appear (`"1h30m"`, not `"30m1h"`).
_UNITS: tuple[tuple[str, Decimal], ...] = (
    ("d", Decimal(86400)),
    ("h", Decimal(3600)),
    ("m", Decimal(60)),
    ("s", Decimal(1)),
    ("ms", Decimal("0.001")),
)

_NUMBER = r"\d+(?:\.\d+)?"

# `m(?!s)` keeps "250ms" from being read as 250 minutes followed by a stray "s".
_PATTERN = re.compile(
    rf"(?:(?P<d>{_NUMBER})d)?"
    rf"(?:(?P<h>{_NUMBER})h)?"
    rf"(?:(?P<m>{_NUMBER})m(?!s))?"
    rf"(?:(?P<s>{_NUMBER})s)?"
    rf"(?:(?P<ms>{_NUMBER})ms)?"
)

_BARE_NUMBER = re.compile(_NUMBER)

_EXPECTED = 'expected a duration like "90s", "5m" or "1h30m"'


def parse_duration(value: str | int) -> float:
    """Return the seconds `value` stands for.

    Strings are one or more `<number><unit>` parts with units `d`, `h`, `m`, `s`, `ms`, largest
    first (`"1h30m"`, `"1.5s"`, `"250ms"`); `"0"` is zero. Integers are seconds. Negative
    durations are refused. Raises `ValueError` saying what was expected and what was given.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{_EXPECTED}, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected a duration of zero or more seconds, got {value}")
        return float(value)
    text = value.strip()
    if text == "0":
        return 0.0
    match = _PATTERN.fullmatch(text)
    if not text or match is None:
        hint = f' (a number needs a unit, e.g. "{text}s")' if _BARE_NUMBER.fullmatch(text) else ""
        raise ValueError(f"{_EXPECTED}, got {json.dumps(value)}{hint}")
    total = sum(
        (Decimal(match[unit]) * factor for unit, factor in _UNITS if match[unit] is not None),
        Decimal(0),
    )
    return float(total)


def format_duration(seconds: float) -> str:
    """Spell `seconds` the way `parse_duration` reads it, to the millisecond.

    `5400` gives `"1h30m"`, `90` gives `"1m30s"`, `0.25` gives `"250ms"`, `0` gives `"0s"`;
    a negative value gets a leading `-`.
    """
    if not math.isfinite(seconds):
        raise ValueError(f"cannot format {seconds!r} as a duration")
    millis = round(seconds * 1000)
    if millis < 0:
        return "-" + format_duration(-millis / 1000)
    if millis == 0:
        return "0s"
    parts: list[str] = []
    for unit, factor in _UNITS:
        unit_millis = int(factor * 1000)
        count, millis = divmod(millis, unit_millis)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
