"""Text from outside made safe to print as one line for people (pure).

Image ids, states, reasons and error messages come from AWS, or from whatever answers at the
configured endpoint, and end up in text log lines and the CLI's tables. A line break in one
would forge a log line or a table row, and an escape sequence would restyle the terminal. So
wherever such text is printed for people, each character that is not printable is shown
escaped, the way Python's `repr` shows it (`\\n`, `\\x1b`, `\\u2028`). Printable text, letters
of every script included, is left as it is. JSON output needs none of this: JSON escapes them.
"""

from __future__ import annotations

import traceback


def printable(text: str) -> str:
    """`text` with every non-printable character escaped: line breaks and tabs (`\\n`, `\\t`),
    other C0 and C1 controls and DEL (`\\x1b`, `\\x9b`, `\\x7f`), and Unicode's format and
    separator characters (`\\u2028`, `\\u202e`). A plain space stays a space."""
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def printable_traceback(exc: BaseException) -> str:
    """The traceback Python would print for `exc`, its chain included, but with each
    exception's message made `printable`: only the traceback's own lines break the text.

    The frames (file, line, code) come from the program; the messages may quote anything.
    """
    return "".join(_traceback_lines(exc, set())).removesuffix("\n")


def _traceback_lines(exc: BaseException, seen: set[int]) -> list[str]:
    seen.add(id(exc))
    lines: list[str] = []
    cause, context = exc.__cause__, exc.__context__
    if cause is not None and id(cause) not in seen:
        lines += [*_traceback_lines(cause, seen), _CAUSE]
    elif context is not None and not exc.__suppress_context__ and id(context) not in seen:
        lines += [*_traceback_lines(context, seen), _CONTEXT]
    if exc.__traceback__ is not None:
        lines += ["Traceback (most recent call last):\n", *traceback.format_tb(exc.__traceback__)]
    lines += [
        printable(part.removesuffix("\n")) + "\n" for part in traceback.format_exception_only(exc)
    ]
    return lines
