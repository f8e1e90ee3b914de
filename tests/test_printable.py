"""Text from outside printed as one line: control characters escaped, readable text kept."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.core.printable import printable, printable_traceback


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("one\ntwo", "one\\ntwo"),
        ("a\r\nb\tc", "a\\r\\nb\\tc"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("nul\x00 del\x7f", "nul\\x00 del\\x7f"),
        ("csi\x9b31m nel\x85", "csi\\x9b31m nel\\x85"),
        ("line\u2028paragraph\u2029", "line\\u2028paragraph\\u2029"),
        ("bidi \u202egnp.exe", "bidi \\u202egnp.exe"),
    ],
    ids=["newline", "cr and tab", "escape sequence", "nul and del", "c1", "separators", "bidi"],
)
def test_control_characters_are_shown_escaped_as_repr_shows_them(text, shown):
    assert printable(text) == shown


@pytest.mark.parametrize(
    "text",
    [
        "ami-0123456789abcdef0",
        "Client.InvalidLaunchTemplateName.NotFoundException: it does not exist.",
        "Ключ, 鍵, clé, مفتاح — “quoted” ✓",
        'C:\\path\\with "quotes" and \\n as two characters',
        "",
    ],
)
def test_printable_text_of_any_script_is_left_as_it_is(text):
    assert printable(text) == text


@given(st.text())
def test_whatever_the_text_it_prints_as_one_line_without_controls(text):
    shown = printable(text)

    assert shown.isprintable()
    assert len(shown.splitlines()) <= 1


def test_a_traceback_keeps_its_lines_but_escapes_what_its_exceptions_say():
    def fail() -> None:
        try:
            raise LookupError("ami-1\nERROR monitor.poll.cycle: forged")
        except LookupError as exc:
            raise ValueError("wrapped\x1b[31m") from exc

    try:
        fail()
    except ValueError as exc:
        text = printable_traceback(exc)

    lines = text.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert "LookupError: ami-1\\nERROR monitor.poll.cycle: forged" in lines
    assert "The above exception was the direct cause of the following exception:" in lines
    assert lines[-1] == "ValueError: wrapped\\x1b[31m"
    assert not any(line.startswith("ERROR") for line in lines)
    assert "\x1b" not in text
    assert any(line.strip() == "fail()" for line in lines)
