from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.core.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("90s", 90.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
    ],
)
def test_each_unit_is_read_as_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_units_combine_from_the_largest_down() -> None:
    assert parse_duration("1h30m") == 5400.0
    assert parse_duration("1d2h3m4s500ms") == 93784.5


def test_an_integer_is_a_number_of_seconds() -> None:
    assert parse_duration(45) == 45.0


def test_zero_needs_no_unit() -> None:
    assert parse_duration("0") == 0.0
    assert parse_duration(0) == 0.0


def test_decimal_parts_are_read_exactly() -> None:
    assert parse_duration("1.1h") == 3960.0
    assert parse_duration("1.5s") == 1.5


def test_surrounding_spaces_are_ignored() -> None:
    assert parse_duration(" 5m ") == 300.0


def test_a_duration_written_in_words_is_refused_with_examples() -> None:
    message = 'expected a duration like "90s", "5m" or "1h30m", got "5 minutes"'
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_duration("5 minutes")


def test_a_number_in_a_string_is_asked_for_its_unit() -> None:
    message = (
        'expected a duration like "90s", "5m" or "1h30m", got "90" '
        '(a number needs a unit, e.g. "90s")'
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_duration("90")


@pytest.mark.parametrize("text", ["30m1h", "5m5m", "5M", "-5s", "1h 30m", "", "h", "1.h"])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r'^expected a duration like "90s"'):
        parse_duration(text)


def test_a_negative_integer_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^expected a duration of zero or more seconds, got -3$"):
        parse_duration(-3)


def test_a_boolean_is_not_a_number_of_seconds() -> None:
    with pytest.raises(ValueError, match=r"got True$"):
        parse_duration(True)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.25, "250ms"),
        (90, "1m30s"),
        (5400, "1h30m"),
        (7200, "2h"),
        (90061.5, "1d1h1m1s500ms"),
    ],
)
def test_durations_are_formatted_with_the_largest_units_first(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_formatting_rounds_to_the_millisecond() -> None:
    assert format_duration(1.0004) == "1s"
    assert format_duration(0.0006) == "1ms"


def test_a_negative_duration_is_formatted_with_a_minus() -> None:
    assert format_duration(-90) == "-1m30s"


def test_infinity_cannot_be_formatted() -> None:
    with pytest.raises(ValueError, match="cannot format"):
        format_duration(math.inf)


@given(st.integers(min_value=0, max_value=10**12))
def test_any_whole_number_of_milliseconds_survives_formatting_and_parsing(millis: int) -> None:
    assert parse_duration(format_duration(millis / 1000)) == millis / 1000
