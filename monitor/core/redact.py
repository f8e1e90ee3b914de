"""Credentials in URLs masked before text leaves the process (pure).

An `[aws] endpoint_url` (or botocore's `AWS_ENDPOINT_URL_EC2`) may carry a user and password,
`http://user:pass@host`, and botocore repeats the URL in its messages ("Could not connect to
the endpoint URL: ..."). Those messages become poll errors, which are logged, printed and
stored. Masking happens where the error is translated, so nothing downstream ever holds the
password, and once more in the log formatters for anything else that might quote a URL.
"""

from __future__ import annotations

import re

#: A URL's scheme and its userinfo: everything up to the authority's last `@` (as
#: `urllib.parse` splits it, so a password holding an `@` is masked whole).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/?#\"'<>]*)@")


def _mask(match: re.Match[str]) -> str:
    user, has_password, _ = match.group("userinfo").partition(":")
    # A user with no password is often a token itself (`https://<token>@host`): masked too.
    masked = f"{user}:***" if has_password else "***"
    return f"{match.group('scheme')}{masked}@"


def redact_url_credentials(text: str) -> str:
    """`text` with the password of every URL in it masked, as database URLs are:
    `http://user:***@host`; a user given without a password is masked whole
    (`http://***@host`). Text without a URL holding credentials comes back unchanged."""
    if "@" not in text or "://" not in text:
        return text
    return _USERINFO.sub(_mask, text)
