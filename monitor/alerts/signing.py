"""Standard Webhooks v1 signatures (standardwebhooks.com), for format `json` (pure).

The signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the signature is
`v1,` + base64(HMAC-SHA256(key, content)). A secret of the form `whsec_<base64>` is the
standard's own encoding of the key, so its key is the decoded bytes; any other secret is used
as its UTF-8 bytes. `verify` is the receiver's side, for tests and for the README's example.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

_WHSEC_PREFIX = "whsec_"
_VERSION = "v1"


def _key(secret: str) -> bytes:
    if not secret.startswith(_WHSEC_PREFIX):
        return secret.encode()
    try:
        return base64.b64decode(secret.removeprefix(_WHSEC_PREFIX), validate=True)
    except ValueError:
        # The message must not echo the secret: it may end up in a log line.
        raise ValueError('a "whsec_" secret must be followed by base64') from None


def _digest(secret: str, event_id: str, timestamp: int, body: bytes) -> bytes:
    content = f"{event_id}.{timestamp}.".encode() + body
    return hmac.new(_key(secret), content, hashlib.sha256).digest()


def sign(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one attempt: `v1,<base64 HMAC-SHA256>`.

    Raises `ValueError` when `secret` starts with `whsec_` but the rest is not base64.
    """
    return f"{_VERSION},{base64.b64encode(_digest(secret, event_id, timestamp, body)).decode()}"


def verify(secret: str, event_id: str, timestamp: int, body: bytes, signature_header: str) -> bool:
    """Whether any `v1` signature in `signature_header` signs this id, timestamp and body.

    The header may hold several space-separated signatures (the standard allows one per key
    during a key rotation); signatures of other versions are ignored. Comparison is constant
    time. Checking that `timestamp` is recent, against replays, is the caller's business.
    """
    expected = _digest(secret, event_id, timestamp, body)
    for candidate in signature_header.split():
        version, _, encoded = candidate.partition(",")
        if version != _VERSION:
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except ValueError:
            continue
        if hmac.compare_digest(given, expected):
            return True
    return False
