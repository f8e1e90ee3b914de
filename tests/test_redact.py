"""Credentials in URLs are masked in any text, and in every AWS error the monitor makes."""

from __future__ import annotations

import pytest
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError

from monitor.aws.sessions import translate
from monitor.core.redact import redact_url_credentials

CANARY = "s3cret-canary"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            f'Could not connect to the endpoint URL: "http://user:{CANARY}@127.0.0.1:1/"',
            'Could not connect to the endpoint URL: "http://user:***@127.0.0.1:1/"',
        ),
        (f"https://{CANARY}@ec2.example/", "https://***@ec2.example/"),
        (f"http://user:{CANARY}@with-at@host:8080/x", "http://user:***@host:8080/x"),
        (f"http://user:{CANARY}@[::1]:8080", "http://user:***@[::1]:8080"),
        (
            f"a http://a:{CANARY}@h1/ and https://b:{CANARY}@h2?x=1",
            "a http://a:***@h1/ and https://b:***@h2?x=1",
        ),
        (f"user:{CANARY}@host", f"user:{CANARY}@host"),  # no URL: nothing to tell
    ],
    ids=["botocore", "lone user", "at in password", "ipv6", "two urls", "not a url"],
)
def test_the_credentials_of_every_url_in_a_text_are_masked(text, masked):
    assert redact_url_credentials(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "http://127.0.0.1:9877/metrics",
        "mail ops@example.com about https://example.com/path?a=b@c",
        "no url here @ all",
    ],
)
def test_text_without_credentials_in_a_url_is_left_alone(text):
    assert redact_url_credentials(text) == text


@pytest.mark.parametrize(
    "error",
    [
        EndpointConnectionError(endpoint_url=f"http://user:{CANARY}@127.0.0.1:1/"),
        ConnectTimeoutError(endpoint_url=f"http://user:{CANARY}@127.0.0.1:1/"),
    ],
    ids=["unreachable", "connect timeout"],
)
def test_a_botocore_error_naming_an_endpoint_with_a_password_is_translated_without_it(error):
    assert CANARY in str(error)

    translated = translate(error)

    assert CANARY not in str(translated)
    assert "user:***@127.0.0.1:1" in translated.message
    assert translated.code == type(error).__name__


def test_an_aws_error_message_quoting_a_url_with_a_password_is_translated_without_it():
    from botocore.exceptions import ClientError

    response = {"Error": {"Code": "Gateway", "Message": f"via http://u:{CANARY}@proxy:3128"}}
    translated = translate(ClientError(response, "DescribeFastLaunchImages"))

    assert translated.code == "Gateway"
    assert translated.message == "via http://u:***@proxy:3128"
