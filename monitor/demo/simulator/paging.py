"""Opaque, stable `NextToken`s.

A token names the last image id of the page it ends, bound to the query it came from
(`ImageIds` and `Filters`) by a keyed MAC, so a client can neither forge one nor reuse it with
another query. Tokens stay valid while the process lives; images added or removed between two
pages do not shift the pages that follow.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence

from monitor.demo.simulator.wire import Ec2Error

_KEY = secrets.token_bytes(32)
_MAC_SIZE = 16

Filters = Sequence[tuple[str, Sequence[str]]]


def query_fingerprint(image_ids: Sequence[str], filters: Filters) -> bytes:
    """A digest of what a describe call asks for, ignoring order and duplicates."""
    canonical = json.dumps(
        [sorted(set(image_ids)), sorted((name, sorted(set(values))) for name, values in filters)]
    )
    return hashlib.sha256(canonical.encode()).digest()


def _mac(after: bytes, fingerprint: bytes) -> bytes:
    return hmac.new(_KEY, fingerprint + b"\0" + after, hashlib.sha256).digest()[:_MAC_SIZE]


def encode_token(after: str, fingerprint: bytes) -> str:
    """The token that continues the query `fingerprint` after image id `after`."""
    raw = after.encode()
    return base64.urlsafe_b64encode(_mac(raw, fingerprint) + raw).decode().rstrip("=")


def decode_token(token: str, fingerprint: bytes) -> str:
    """The image id `token` continues after; `InvalidParameterValue` if it is not ours."""
    invalid = Ec2Error("InvalidParameterValue", "The pagination token is invalid or has expired.")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise invalid from None
    mac, after = raw[:_MAC_SIZE], raw[_MAC_SIZE:]
    if len(mac) < _MAC_SIZE or not hmac.compare_digest(mac, _mac(after, fingerprint)):
        raise invalid
    return after.decode()
