"""Standard Webhooks v1 signing and verifying."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.alerts.signing import sign, verify

# The published test vector of the Standard Webhooks specification.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_published_test_vector_is_signed_as_published() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_the_published_test_vector_verifies() -> None:
    assert verify(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY, VECTOR_SIGNATURE)


@pytest.mark.parametrize(
    ("secret", "event_id", "timestamp", "body"),
    [
        ("whsec_" + base64.b64encode(b"another key").decode(), VECTOR_ID, VECTOR_TIMESTAMP, None),
        (VECTOR_SECRET, "msg_another", VECTOR_TIMESTAMP, None),
        (VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP + 1, None),
        (VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, b'{"test": 2432232315}'),
    ],
    ids=["other key", "other id", "other timestamp", "other body"],
)
def test_a_signature_does_not_verify_anything_it_did_not_sign(
    secret: str, event_id: str, timestamp: int, body: bytes | None
) -> None:
    assert not verify(secret, event_id, timestamp, body or VECTOR_BODY, VECTOR_SIGNATURE)


def test_one_matching_signature_among_several_verifies() -> None:
    header = f"v1,bm90IHRoaXMgb25l {VECTOR_SIGNATURE} v1a,c29tZXRoaW5nIGVsc2U="

    assert verify(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY, header)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "v1,not base64!",
        "v2," + VECTOR_SIGNATURE.removeprefix("v1,"),
        VECTOR_SIGNATURE.removeprefix("v1,"),
    ],
    ids=["empty", "not base64", "another version", "no version"],
)
def test_a_malformed_or_foreign_signature_header_does_not_verify(header: str) -> None:
    assert not verify(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY, header)


def test_a_plain_secret_keys_with_its_utf8_bytes() -> None:
    plain = "s3cret-ключ"
    encoded = "whsec_" + base64.b64encode(plain.encode()).decode()

    assert sign(plain, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == sign(
        encoded, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY
    )


def test_a_whsec_secret_that_is_not_base64_is_refused_without_echoing_it() -> None:
    secret = "whsec_canary-not*base64"

    with pytest.raises(ValueError, match="base64") as raised:
        sign(secret, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)

    assert "canary" not in str(raised.value)
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__


@given(
    secret=st.text(min_size=1).filter(lambda text: not text.startswith("whsec_")),
    event_id=st.text(min_size=1),
    timestamp=st.integers(min_value=0, max_value=2**40),
    body=st.binary(),
)
def test_whatever_is_signed_verifies_with_the_same_secret(
    secret: str, event_id: str, timestamp: int, body: bytes
) -> None:
    signature = sign(secret, event_id, timestamp, body)

    assert signature.startswith("v1,")
    assert verify(secret, event_id, timestamp, body, signature)


def test_a_standard_webhooks_library_verifies_a_json_alert_as_sent() -> None:
    from datetime import UTC, datetime

    from standardwebhooks.webhooks import Webhook

    from monitor.alerts.formats import build_requests
    from monitor.alerts.records import OutboxEntry
    from monitor.config.settings import WebhookSettings
    from monitor.core.model import Scope

    secret = "whsec_" + base64.b64encode(b"a key of thirty-two bytes, truly").decode()
    now = datetime.now(UTC)
    entry = OutboxEntry(
        id=1,
        event_id="6f1c0b7e-2b1d-5c1e-9d4f-0a1b2c3d4e5f",
        receiver="ops",
        kind="failed",
        status="firing",
        scope=Scope("prod", "111111111111", "us-east-1"),
        image_id="ami-1",
        state="enabled-failed",
        since=now,
        payload={"version": 1, "event_id": "6f1c0b7e-2b1d-5c1e-9d4f-0a1b2c3d4e5f"},
        attempts=0,
        created_at=now,
    )
    hook = WebhookSettings(name="ops", urls=("https://hooks.example/x",), secret=secret)
    (request,) = build_requests(entry, hook, now)
    headers = {name.lower(): value for name, value in request.headers.items()}
    assert Webhook(secret).verify(request.body, headers) == dict(entry.payload)
