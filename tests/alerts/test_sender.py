"""The webhook sender against real loopback receivers: statuses, errors, TLS, and no leaks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
import urllib3

from monitor.alerts.records import DeliveryOutcome, WebhookRequest
from monitor.alerts.sender import WebhookSender, parse_retry_after
from monitor.config.settings import WebhookSettings
from monitor.core.errors import ConfigError
from tests.alerts.receivers import Answer, CertificateAuthority, Receiver

CANARY = "canary-7f3a9c"
SECRET_PATH = f"/hook/{CANARY}?token={CANARY}"
BODY = b'{"version": 1, "status": "firing", "image_id": "ami-0123456789abcdef0"}'
HEADERS = {
    "Content-Type": "application/json",
    "X-Team": "windows-images",
    "Authorization": f"Bearer {CANARY}",
}
TIMEOUT = 0.3


def webhook(url: str, *, timeout: float = 5.0, ca_file: Path | None = None) -> WebhookSettings:
    return WebhookSettings(name="ops", urls=(url,), timeout=timeout, ca_file=ca_file)


def post(url: str, *, headers: dict[str, str] | None = None) -> WebhookRequest:
    return WebhookRequest(method="POST", url=url, headers=headers or HEADERS, body=BODY)


def send_once(url: str, *, timeout: float = 5.0, ca_file: Path | None = None) -> DeliveryOutcome:
    with WebhookSender(webhook(url, timeout=timeout, ca_file=ca_file)) as sender:
        return sender.send(post(url))


# answers


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_a_2xx_answer_is_delivered(receiver: Receiver, status: int) -> None:
    receiver.always(Answer(status))

    outcome = send_once(receiver.url_for("/hook"))

    assert outcome.status == status
    assert outcome.error is None
    assert outcome.delivered
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_timeouts_throttling_and_server_errors_are_worth_retrying(
    receiver: Receiver, status: int
) -> None:
    receiver.always(Answer(status))

    outcome = send_once(receiver.url_for("/hook"))

    assert outcome.status == status
    assert not outcome.delivered
    assert not outcome.permanent


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 413, 422])
def test_other_client_errors_are_permanent(receiver: Receiver, status: int) -> None:
    receiver.always(Answer(status))

    outcome = send_once(receiver.url_for("/hook"))

    assert outcome.status == status
    assert outcome.permanent
    assert outcome.gone == (status == 410)


def test_the_headers_and_body_arrive_intact(receiver: Receiver) -> None:
    headers = {**HEADERS, "webhook-id": "msg_2", "X-Empty": ""}
    url = receiver.url_for("/hooks/ops?team=windows&x=%2F")

    with WebhookSender(webhook(url)) as sender:
        sender.send(post(url, headers=headers))

    (request,) = receiver.requests
    assert request.method == "POST"
    assert request.path == "/hooks/ops?team=windows&x=%2F"
    assert request.body == BODY
    assert request.header("Content-Length") == str(len(BODY))
    for name, value in headers.items():
        assert request.header(name) == value


def test_a_large_answer_is_not_read_to_the_end_and_the_next_send_still_works(
    receiver: Receiver,
) -> None:
    receiver.answer(Answer(200, body=b"x" * (4 * 1024 * 1024)), Answer(204))
    url = receiver.url_for("/hook")

    with WebhookSender(webhook(url)) as sender:
        first = sender.send(post(url))
        second = sender.send(post(url))

    assert (first.status, second.status) == (200, 204)


def test_an_answer_whose_body_breaks_off_counts_by_its_status(receiver: Receiver) -> None:
    receiver.always(Answer(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial"))

    outcome = send_once(receiver.url_for("/hook"))

    assert outcome.status == 200
    assert outcome.error is None


def test_seconds_is_the_duration_of_the_attempt(receiver: Receiver) -> None:
    receiver.always(Answer(200, delay=0.2))

    outcome = send_once(receiver.url_for("/hook"))

    assert 0.2 <= outcome.seconds < 2.0


# redirects


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_returned_as_it_is_not_followed(
    receiver: Receiver, make_receiver: Callable[..., Receiver], status: int
) -> None:
    elsewhere = make_receiver()
    receiver.always(Answer.redirect(elsewhere.url_for("/stolen"), status))

    outcome = send_once(receiver.url_for("/hook"))

    assert outcome.status == status
    assert not outcome.delivered
    assert not outcome.permanent
    assert elsewhere.requests == ()


# Retry-After


def test_retry_after_in_seconds_is_returned(receiver: Receiver) -> None:
    receiver.always(Answer(503, headers=(("Retry-After", "120"),)))

    assert send_once(receiver.url_for("/hook")).retry_after == 120.0


def test_retry_after_as_an_http_date_counts_from_now(receiver: Receiver) -> None:
    later = datetime.now(UTC) + timedelta(seconds=120)
    receiver.always(Answer(429, headers=(("Retry-After", format_datetime(later, usegmt=True)),)))

    retry_after = send_once(receiver.url_for("/hook")).retry_after

    assert retry_after is not None
    assert 115.0 <= retry_after <= 120.0


@pytest.mark.parametrize("status", [200, 301, 410, 500])
def test_retry_after_is_returned_whatever_the_status(receiver: Receiver, status: int) -> None:
    receiver.always(Answer(status, headers=(("Retry-After", "30"),)))

    assert send_once(receiver.url_for("/hook")).retry_after == 30.0


def test_an_answer_without_retry_after_has_none(receiver: Receiver) -> None:
    receiver.always(Answer(503))

    assert send_once(receiver.url_for("/hook")).retry_after is None


NOW = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("7", 7.0),
        (" 90 ", 90.0),
        ("-5", 0.0),
        ("Thu, 26 Nov 2026 10:01:30 GMT", 90.0),
        ("Thursday, 26-Nov-26 10:01:30 GMT", 90.0),
        ("Thu Nov 26 10:01:30 2026", 90.0),
        ("Thu, 26 Nov 2026 09:59:00 GMT", 0.0),
        ("99999999999999999999999999", 365 * 86400.0),
    ],
)
def test_retry_after_reads_delta_seconds_and_every_http_date_form(
    value: str, seconds: float
) -> None:
    assert parse_retry_after(value, NOW) == seconds


@pytest.mark.parametrize("value", [None, "", "soon", "1.5", "12 s", "Thu, 99 Nov 2026 10:00 GMT"])
def test_an_unusable_retry_after_is_none(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


# no answer


def test_an_answer_slower_than_the_timeout_is_a_read_timeout(receiver: Receiver) -> None:
    receiver.always(Answer(200, delay=2.0))

    outcome = send_once(receiver.url_for("/hook"), timeout=TIMEOUT)

    assert outcome.status is None
    assert outcome.error == "ReadTimeoutError"
    assert TIMEOUT * 0.9 <= outcome.seconds < 1.5
    assert not outcome.delivered
    assert not outcome.permanent


def test_a_refused_connection_is_a_new_connection_error(refused_url: str) -> None:
    outcome = send_once(refused_url)

    assert outcome.status is None
    assert outcome.error == "NewConnectionError"


def test_a_receiver_that_hangs_up_without_answering_is_a_protocol_error(
    receiver: Receiver,
) -> None:
    receiver.always(Answer(hang_up=True))

    outcome = send_once(receiver.url_for("/hook"))

    assert outcome.status is None
    assert outcome.error == "ProtocolError"


def test_a_header_value_http_cannot_carry_is_an_error_naming_only_its_class(
    receiver: Receiver, all_logs: pytest.LogCaptureFixture
) -> None:
    url = receiver.url_for("/hook")

    with WebhookSender(webhook(url)) as sender:
        outcome = sender.send(post(url, headers={"Authorization": f"{CANARY}-\u20ac"}))

    assert outcome.error == "UnicodeEncodeError"
    assert receiver.requests == ()
    assert_no_canary(outcome, all_logs)


def test_a_closed_sender_opens_new_connections_when_used_again(receiver: Receiver) -> None:
    url = receiver.url_for("/hook")
    sender = WebhookSender(webhook(url))
    sender.send(post(url))
    sender.close()

    assert sender.send(post(url)).status == 200
    sender.close()
    assert len(receiver.requests) == 2


# TLS


def test_an_https_receiver_signed_by_an_unknown_ca_is_refused(https_receiver: Receiver) -> None:
    outcome = send_once(https_receiver.url_for("/hook"))

    assert outcome.error == "SSLError"
    assert https_receiver.requests == ()


def test_an_https_receiver_is_trusted_when_ca_file_names_its_ca(
    https_receiver: Receiver, certificate_authority: CertificateAuthority
) -> None:
    outcome = send_once(https_receiver.url_for("/hook"), ca_file=certificate_authority.ca_file)

    assert outcome.status == 200
    assert https_receiver.requests[0].body == BODY


def test_ca_file_trusts_only_its_own_ca(https_receiver: Receiver, tmp_path: Path) -> None:
    other = CertificateAuthority(tmp_path, name="another CA")

    outcome = send_once(https_receiver.url_for("/hook"), ca_file=other.ca_file)

    assert outcome.error == "SSLError"


def test_a_certificate_for_another_host_is_refused_even_from_the_right_ca(
    make_receiver: Callable[..., Receiver], certificate_authority: CertificateAuthority
) -> None:
    impostor = make_receiver(tls=certificate_authority.server_context(["hooks.example.com"]))

    outcome = send_once(impostor.url_for("/hook"), ca_file=certificate_authority.ca_file)

    assert outcome.error == "SSLError"
    assert impostor.requests == ()


def test_a_ca_file_that_holds_no_certificate_is_a_config_error(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("not a certificate\n")

    with pytest.raises(ConfigError, match="ca_file") as raised:
        WebhookSender(webhook("https://127.0.0.1:1/hook", ca_file=ca_file))

    assert raised.value.file == str(ca_file)


# secrets stay out of outcomes and logs


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every record at DEBUG, urllib3's included even if something quietened it."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="urllib3")
    return caplog


def assert_no_canary(outcome: DeliveryOutcome, logs: pytest.LogCaptureFixture) -> None:
    assert CANARY not in repr(outcome)
    assert CANARY not in logs.text
    for record in logs.records:
        assert CANARY not in repr(vars(record))


BROKEN_HEADERS = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nnot a header line\r\n\r\n"

ANSWERS = {
    "delivered": Answer(200),
    "retry-after": Answer(503, headers=(("Retry-After", "5"),)),
    "gone": Answer(410),
    "redirect": Answer.redirect(f"http://127.0.0.1:1{SECRET_PATH}"),
    "read timeout": Answer(200, delay=2.0),
    "hang up": Answer(hang_up=True),
    "broken headers": Answer(raw=BROKEN_HEADERS),
}


@pytest.mark.parametrize("answer", ANSWERS.values(), ids=ANSWERS.keys())
def test_a_secret_url_and_header_never_reach_an_outcome_or_a_log(
    receiver: Receiver, all_logs: pytest.LogCaptureFixture, answer: Answer
) -> None:
    receiver.always(answer)
    url = receiver.url_for(SECRET_PATH)

    outcome = send_once(url, timeout=TIMEOUT)

    assert receiver.requests[0].path == SECRET_PATH
    assert receiver.requests[0].header("Authorization") == f"Bearer {CANARY}"
    assert_no_canary(outcome, all_logs)


def test_a_secret_url_stays_out_of_the_logs_when_the_connection_is_refused(
    refused_url: str, all_logs: pytest.LogCaptureFixture
) -> None:
    outcome = send_once(refused_url + SECRET_PATH)

    assert outcome.error == "NewConnectionError"
    assert_no_canary(outcome, all_logs)


def test_a_secret_url_stays_out_of_the_logs_when_tls_is_refused(
    https_receiver: Receiver, all_logs: pytest.LogCaptureFixture
) -> None:
    outcome = send_once(https_receiver.url_for(SECRET_PATH))

    assert outcome.error == "SSLError"
    assert_no_canary(outcome, all_logs)


def test_a_urllib3_warning_during_a_delivery_is_kept_without_its_details(
    receiver: Receiver, all_logs: pytest.LogCaptureFixture
) -> None:
    receiver.always(Answer(raw=BROKEN_HEADERS))

    send_once(receiver.url_for(SECRET_PATH))

    (warning,) = [r for r in all_logs.records if r.name.startswith("urllib3")]
    assert warning.levelno == logging.WARNING
    assert "webhook ops" in warning.getMessage()
    assert warning.exc_info is None


def test_the_sender_logs_each_attempt_with_the_receiver_name(
    receiver: Receiver, all_logs: pytest.LogCaptureFixture
) -> None:
    send_once(receiver.url_for("/hook"))

    (record,) = [r for r in all_logs.records if r.name == "monitor.alerts.sender"]
    assert record.receiver == "ops"
    assert record.getMessage().startswith("webhook ops answered 200 in ")


def test_urllib3_logs_of_other_requests_are_left_alone(
    receiver: Receiver, all_logs: pytest.LogCaptureFixture
) -> None:
    WebhookSender(webhook(receiver.url_for("/hook"))).close()

    with urllib3.PoolManager() as pool:
        pool.request("GET", receiver.url_for("/elsewhere?page=2"))

    assert '"GET /elsewhere?page=2 HTTP/1.1" 200' in all_logs.text
