"""The AWS adapter against the fast launch simulator, through real botocore."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    NoCredentialsError,
)
from botocore.parsers import ResponseParserError

from monitor.aws.ratelimit import RateLimits
from monitor.aws.sessions import (
    ROLE_SESSION_NAME,
    BaseSessions,
    PollLimits,
    TargetSource,
    translate,
)
from monitor.config.settings import AwsSettings, TargetSettings
from monitor.core.errors import ConfigError, SourceError
from monitor.demo.simulator import FastLaunchSimulator, ManualClock, simulator_for, start_server
from tests.fakes import (
    ACCOUNT,
    NO_RETRIES,
    REGION,
    assume_role_calls,
    fake_aws_environment,
    raised_within,
    role_arn,
    simulated_aws,
    source,
)

FIRST = "111111111111"
SECOND = "222222222222"
OTHER_OWNER = "444455556666"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ManualClock]:
    """moto with the simulator, on a manual clock; the clock is what tests move."""
    with simulated_aws(monkeypatch, tmp_path) as manual:
        yield manual


@pytest.fixture
def sim(clock: ManualClock) -> FastLaunchSimulator:
    """The simulator of the default credential chain's account, in the default region."""
    return simulator_for(ACCOUNT, REGION)


def ids(items: list[dict[str, object]]) -> list[str]:
    return sorted(str(item["ImageId"]) for item in items)


def test_450_images_come_back_complete_over_three_pages(sim: FastLaunchSimulator) -> None:
    seeded = sim.seed(450)

    items, pages = source().describe(REGION)

    assert ids(items) == sorted(seeded)
    assert pages == 3
    assert sim.calls == 3


def test_an_empty_region_is_one_page_without_images(sim: FastLaunchSimulator) -> None:
    assert source().describe(REGION) == ([], 1)


def test_the_state_and_owner_filters_are_sent_and_honoured(sim: FastLaunchSimulator) -> None:
    wanted = sim.seed(3, states="enabled")
    sim.seed(2, states="enabling-failed")
    sim.seed(2, states="enabled", owner_id=OTHER_OWNER)
    filters = (("state", ("enabled",)), ("owner-id", (ACCOUNT,)))

    items, _ = source(TargetSettings(filters=filters)).describe(REGION)

    assert ids(items) == sorted(wanted)


def test_several_values_of_one_filter_match_any_of_them(sim: FastLaunchSimulator) -> None:
    enabled = sim.seed(2, states="enabled")
    failed = sim.seed(2, states="enabling-failed")
    sim.seed(2, states="enabling")
    filters = (("state", ("enabled", "enabling-failed")),)

    items, _ = source(TargetSettings(filters=filters)).describe(REGION)

    assert ids(items) == sorted(enabled + failed)


def test_image_ids_limit_the_describe_to_those_images(sim: FastLaunchSimulator) -> None:
    seeded = sim.seed(5)
    wanted = (seeded[1], seeded[3])

    items, pages = source(TargetSettings(image_ids=wanted)).describe(REGION)

    assert ids(items) == sorted(wanted)
    assert pages == 1


def test_each_region_of_a_target_is_described_on_its_own(clock: ManualClock) -> None:
    east = simulator_for(ACCOUNT, "us-east-1").seed(2)
    west = simulator_for(ACCOUNT, "eu-west-1").seed(1)
    target = source(TargetSettings(regions=("us-east-1", "eu-west-1")))

    assert ids(target.describe("us-east-1")[0]) == sorted(east)
    assert ids(target.describe("eu-west-1")[0]) == sorted(west)


def test_the_default_chain_target_learns_its_account_from_sts(sim: FastLaunchSimulator) -> None:
    target = source()

    assert target.known_account_id == ""
    assert target.account_id() == ACCOUNT
    assert target.scope(REGION).account_id == ACCOUNT
    assert target.scope(REGION).target == ACCOUNT


def test_two_assumed_roles_each_see_only_their_own_accounts_images(clock: ManualClock) -> None:
    first_images = simulator_for(FIRST, REGION).seed(2)
    second_images = simulator_for(SECOND, REGION).seed(3)
    simulator_for(ACCOUNT, REGION).seed(4)
    first = source(TargetSettings(name="first", role_arn=role_arn(FIRST)), index=0)
    second = source(TargetSettings(name="second", role_arn=role_arn(SECOND)), index=1)

    assert ids(first.describe(REGION)[0]) == sorted(first_images)
    assert ids(second.describe(REGION)[0]) == sorted(second_images)
    assert (first.account_id(), second.account_id()) == (FIRST, SECOND)
    assert first.scope(REGION).target == "first"


def test_targets_of_one_config_share_their_base_session_and_sts_client(
    clock: ManualClock,
) -> None:
    first_images = simulator_for(FIRST, REGION).seed(2)
    second_images = simulator_for(SECOND, REGION).seed(1)
    sessions = BaseSessions()
    used: list[object] = []
    sts = sessions.sts

    def recording_sts(*args: Any) -> Any:
        client = sts(*args)
        used.append(client)
        return client

    sessions.sts = recording_sts  # type: ignore[method-assign]
    targets = [
        TargetSource(i, TargetSettings(role_arn=role_arn(account)), NO_RETRIES, sessions=sessions)
        for i, account in enumerate((FIRST, SECOND))
    ]
    default_chain = TargetSource(2, TargetSettings(), NO_RETRIES, sessions=sessions)

    assert [ids(t.describe(REGION)[0]) for t in targets] == [
        sorted(first_images),
        sorted(second_images),
    ]
    assert default_chain.account_id() == ACCOUNT
    # Three targets, one STS client: two roles assumed through it, one identity asked.
    assert len(used) == 3
    assert len({id(client) for client in used}) == 1
    assert (assume_role_calls(FIRST), assume_role_calls(SECOND)) == (1, 1)


def test_the_role_is_assumed_once_and_reused_across_describes_and_regions(
    clock: ManualClock,
) -> None:
    simulator_for(FIRST, REGION).seed(2)
    target = source(TargetSettings(regions=(REGION, "eu-west-1"), role_arn=role_arn(FIRST)))

    for _ in range(3):
        for region in target.regions:
            target.describe(region)
    permitted = target.check(REGION).permitted

    assert permitted
    assert assume_role_calls(FIRST) == 1


def test_the_role_is_assumed_with_the_monitors_session_name_and_the_external_id(
    clock: ManualClock,
) -> None:
    target = source(TargetSettings(role_arn=role_arn(FIRST), external_id="shared-secret-id"))

    target.describe(REGION)

    from moto.sts.models import sts_backends

    (assumed,) = sts_backends[FIRST]["aws"].assumed_roles
    assert assumed.role_arn == role_arn(FIRST)
    assert assumed.session_name == ROLE_SESSION_NAME
    assert assumed.external_id == "shared-secret-id"


def test_the_role_is_assumed_again_only_when_its_credentials_near_expiry(
    clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # moto's STS dates the credentials (one hour by default) by this clock too, so the
    # adapter and AWS agree on the time.
    monkeypatch.setattr("moto.sts.models.utcnow", lambda: clock.now().replace(tzinfo=None))
    target = TargetSource(0, TargetSettings(role_arn=role_arn(FIRST)), NO_RETRIES, clock=clock.now)

    target.describe(REGION)
    clock.advance(timedelta(minutes=40).total_seconds())
    target.describe(REGION)
    still_fresh = assume_role_calls(FIRST)
    clock.advance(timedelta(minutes=16).total_seconds())
    target.describe(REGION)
    target.describe(REGION)
    renewed = assume_role_calls(FIRST)
    clock.advance(timedelta(hours=2).total_seconds())
    target.describe(REGION)

    assert still_fresh == 1
    assert renewed == 2
    assert assume_role_calls(FIRST) == 3


def test_a_throttled_describe_is_retried_until_it_succeeds(
    sim: FastLaunchSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.seed(2)
    sim.throttle(2)
    backoffs: list[float] = []
    # botocore backs off up to a second or two between attempts; record it instead of waiting.
    monkeypatch.setattr("botocore.endpoint.time.sleep", backoffs.append)

    items, pages = source(aws=AwsSettings(max_attempts=3)).describe(REGION)

    assert len(items) == 2
    assert pages == 1
    assert sim.calls == 3
    assert len(backoffs) == 2


def test_throttling_past_max_attempts_fails_with_request_limit_exceeded(
    sim: FastLaunchSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.seed(2)
    sim.throttle(3)
    monkeypatch.setattr("botocore.endpoint.time.sleep", lambda seconds: None)

    with pytest.raises(SourceError) as failed:
        source(aws=AwsSettings(max_attempts=3)).describe(REGION)

    assert failed.value.code == "RequestLimitExceeded"
    # max_attempts counts the first attempt, as AWS's own config file does.
    assert sim.calls == 3


def test_an_unparseable_response_is_an_invalid_response_error(sim: FastLaunchSimulator) -> None:
    sim.seed(2)
    sim.garbage(1)

    with pytest.raises(SourceError) as failed:
        source().describe(REGION)

    assert failed.value.code == "InvalidResponse"


def test_a_denied_describe_fails_with_unauthorized_operation(sim: FastLaunchSimulator) -> None:
    sim.deny()

    with pytest.raises(SourceError) as failed:
        source().describe(REGION)

    assert failed.value.code == "UnauthorizedOperation"


def test_a_looping_next_token_is_an_error_and_does_not_hang(sim: FastLaunchSimulator) -> None:
    sim.seed(450)
    sim.loop_next_token()
    target = source()

    error = raised_within(lambda: target.describe(REGION), 10, "describe is still paging")

    assert isinstance(error, SourceError)
    assert error.code == "RepeatedNextToken"
    assert sim.calls == 2


def test_check_is_permitted_when_the_dry_run_would_have_succeeded(
    sim: FastLaunchSimulator,
) -> None:
    outcome = source().check(REGION)

    assert outcome.permitted
    assert outcome.detail == "permitted"
    assert sim.images() == ()


def test_check_is_denied_when_the_caller_may_not_describe(sim: FastLaunchSimulator) -> None:
    sim.deny()

    outcome = source().check(REGION)

    assert not outcome.permitted
    assert outcome.detail.startswith("denied")


def test_a_named_profile_gives_the_target_its_credentials_and_region(
    clock: ManualClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "aws-config").write_text("[profile ops]\nregion = eu-west-1\n")
    (tmp_path / "aws-credentials").write_text(
        "[ops]\naws_access_key_id = opskey\naws_secret_access_key = opssecret\n"
    )
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(variable)
    irish = simulator_for(ACCOUNT, "eu-west-1").seed(1)

    target = source(TargetSettings(profile="ops"))

    assert target.regions == ("eu-west-1",)
    assert ids(target.describe("eu-west-1")[0]) == irish


def test_an_unknown_profile_is_a_config_error_naming_the_key(clock: ManualClock) -> None:
    with pytest.raises(ConfigError) as failed:
        source(TargetSettings(profile="nope"), index=2)

    assert failed.value.key == "targets[2].profile"


def test_a_target_without_any_region_is_a_config_error(
    clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")

    with pytest.raises(ConfigError) as failed:
        source()

    assert failed.value.key == "targets[0].regions"


@pytest.mark.slow
def test_the_endpoint_can_be_set_in_the_config_or_by_botocores_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_aws_environment(monkeypatch, tmp_path)
    with start_server() as server:
        server.reset()
        seeded = simulator_for(ACCOUNT, REGION).seed(2)
        configured = source(aws=AwsSettings(max_attempts=1, endpoint_url=server.endpoint_url))
        from_configuration = configured.describe(REGION)[0]
        monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", server.endpoint_url)
        from_variable = source().describe(REGION)[0]
        server.reset()

    assert ids(from_configuration) == ids(from_variable) == sorted(seeded)


def test_the_fast_timestamp_parser_agrees_with_botocores():
    from botocore.utils import parse_timestamp as botocore_parse

    from monitor.aws.sessions import parse_timestamp

    for text in (
        "2026-11-26T10:00:00.123Z",
        "2026-11-26T10:00:00Z",
        "2026-11-26T11:00:00.5+01:00",
        "2026-11-26T10:00:00",
        "Thu, 26 Nov 2026 10:00:00 GMT",
        1795687200,
    ):
        assert parse_timestamp(text) == botocore_parse(text), text


def still_limits(sleeps: list[float] | None = None, *, burst: int = 100) -> RateLimits:
    """EC2's buckets on a clock that stands still: a token taken is never given back."""
    slept = [] if sleeps is None else sleeps
    return RateLimits(20, burst, clock=lambda: 0.0, sleep=slept.append)


def test_a_poll_of_450_images_takes_one_token_per_page_and_sts_takes_none(
    sim: FastLaunchSimulator,
) -> None:
    sim.seed(450)
    limits = still_limits()
    target = TargetSource(0, TargetSettings(), NO_RETRIES, rate_limits=limits)
    target.account_id()

    _, pages = target.describe(REGION)

    assert pages == 3
    assert limits.bucket(ACCOUNT, REGION).available() == 97


def test_a_throttled_then_retried_request_takes_one_token_per_attempt(
    sim: FastLaunchSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.seed(2)
    sim.throttle(2)
    monkeypatch.setattr("botocore.endpoint.time.sleep", lambda seconds: None)
    limits = still_limits()
    target = TargetSource(
        0,
        TargetSettings(role_arn=role_arn(ACCOUNT)),
        AwsSettings(max_attempts=3),
        rate_limits=limits,
    )

    items, pages = target.describe(REGION)

    assert (len(items), pages, sim.calls) == (2, 1, 3)
    assert limits.bucket(ACCOUNT, REGION).available() == 97


def test_a_request_waits_for_its_token_when_the_bucket_is_empty(
    sim: FastLaunchSimulator,
) -> None:
    sim.seed(450)
    sleeps: list[float] = []
    target = TargetSource(
        0,
        TargetSettings(role_arn=role_arn(ACCOUNT)),
        NO_RETRIES,
        rate_limits=still_limits(sleeps, burst=2),
    )

    items, pages = target.describe(REGION)

    assert (len(items), pages) == (450, 3)
    # Two pages from the burst; the third waited for the next token, 1/20 s on.
    assert sleeps == [pytest.approx(0.05)]


def test_two_targets_on_one_account_and_region_draw_on_one_bucket(clock: ManualClock) -> None:
    simulator_for(FIRST, REGION).seed(1)
    limits = still_limits()
    first = TargetSource(
        0,
        TargetSettings(name="first", regions=(REGION, "eu-west-1"), role_arn=role_arn(FIRST)),
        NO_RETRIES,
        rate_limits=limits,
    )
    again = TargetSettings(name="again", role_arn=f"arn:aws:iam::{FIRST}:role/Other")
    second = TargetSource(1, again, NO_RETRIES, rate_limits=limits)
    elsewhere = TargetSource(
        2, TargetSettings(name="other", role_arn=role_arn(SECOND)), NO_RETRIES, rate_limits=limits
    )

    first.describe(REGION)
    second.describe(REGION)
    second.check(REGION)
    first.describe("eu-west-1")
    elsewhere.describe(REGION)

    assert first.rate_limit(REGION) is second.rate_limit(REGION)
    assert limits.bucket(FIRST, REGION).available() == 97
    assert limits.bucket(FIRST, "eu-west-1").available() == 99
    assert limits.bucket(SECOND, REGION).available() == 99


def test_until_its_account_is_known_a_target_draws_on_a_bucket_of_its_own(
    sim: FastLaunchSimulator,
) -> None:
    limits = still_limits()
    target = TargetSource(0, TargetSettings(), NO_RETRIES, rate_limits=limits)

    target.check(REGION)
    own = target.rate_limit(REGION)
    target.account_id()
    target.describe(REGION)

    assert own.available() == 99
    assert target.rate_limit(REGION) is limits.bucket(ACCOUNT, REGION)
    assert limits.bucket(ACCOUNT, REGION).available() == 99


def test_by_default_every_target_draws_on_the_process_wide_buckets(
    sim: FastLaunchSimulator,
) -> None:
    from monitor.aws.sessions import PROCESS_RATE_LIMITS

    first = source(TargetSettings(name="first", role_arn=role_arn(FIRST)), index=0)
    second = source(TargetSettings(name="second", role_arn=role_arn(FIRST)), index=1)

    assert first.rate_limit(REGION) is second.rate_limit(REGION)
    assert first.rate_limit(REGION) is PROCESS_RATE_LIMITS.bucket(FIRST, REGION)


def test_a_200_page_that_is_not_ec2s_answer_is_an_invalid_response(
    sim: FastLaunchSimulator,
) -> None:
    # A proxy's login page or a captive portal: well-formed, successful, and no images.
    sim.seed(2)
    sim.foreign_page(1)

    with pytest.raises(SourceError) as failed:
        source().describe(REGION)

    assert failed.value.code == "InvalidResponse"
    assert "html" in failed.value.message
    assert not failed.value.permanent


def test_distinct_next_tokens_for_ever_stop_at_max_pages(sim: FastLaunchSimulator) -> None:
    sim.endless_pages()
    limits = PollLimits(deadline=time.monotonic() + 60, max_pages=25, timeout=60)

    error = raised_within(lambda: source().describe(REGION, limits), 20, "still paging")

    assert isinstance(error, SourceError)
    assert error.code == "PollDeadlineExceeded"
    assert "max_pages (25)" in error.message
    assert sim.calls == 25


def test_paging_stops_at_the_poll_deadline(sim: FastLaunchSimulator) -> None:
    sim.endless_pages()
    sim.latency(0.05)
    limits = PollLimits(deadline=time.monotonic() + 0.5, max_pages=1000, timeout=0.5)
    started = time.monotonic()

    error = raised_within(lambda: source().describe(REGION, limits), 20, "still paging")

    assert isinstance(error, SourceError)
    assert error.code == "PollDeadlineExceeded"
    assert "poll_timeout (0.5 s)" in error.message
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize(
    ("code", "permanent"),
    [
        ("UnauthorizedOperation", True),
        ("AuthFailure", True),
        ("InvalidClientTokenId", True),
        ("AccessDenied", True),
        ("OptInRequired", True),
        ("RequestLimitExceeded", False),
        ("Throttling", False),
        ("InternalError", False),
        ("Unavailable", False),
    ],
)
def test_errors_that_need_a_person_are_permanent_and_others_pass_by_themselves(
    code: str, permanent: bool
) -> None:
    error = ClientError({"Error": {"Code": code, "Message": "m"}}, "DescribeFastLaunchImages")

    assert translate(error).permanent is permanent


def test_network_and_parsing_failures_pass_by_themselves() -> None:
    assert not translate(ConnectTimeoutError(endpoint_url="https://ec2")).permanent
    assert not translate(ResponseParserError("bad")).permanent
    assert translate(NoCredentialsError()).permanent


def expired_token() -> ClientError:
    return ClientError(
        {"Error": {"Code": "ExpiredToken", "Message": "expired"}}, "DescribeFastLaunchImages"
    )


def test_expired_static_credentials_need_a_person(clock: ManualClock) -> None:
    # The test's credentials come from the environment: static keys that never refresh.
    assert source()._translate(expired_token()).permanent


def test_expired_credentials_that_refresh_themselves_pass_by_themselves(
    clock: ManualClock,
) -> None:
    target = source(TargetSettings(role_arn=role_arn(FIRST)))

    assert not target._translate(expired_token()).permanent


class EndlessBody(BaseHTTPRequestHandler):
    """Answers 200 and then sends bytes for ever: an endpoint that never stops talking."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"<item>" + b"x" * 65536 + b"</item>"
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        with contextlib.suppress(OSError):
            while True:
                self.wfile.write(frame)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_an_answer_longer_than_64_mib_fails_the_describe_without_reading_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_aws_environment(monkeypatch, tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), EndlessBody)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    target = source(aws=AwsSettings(max_attempts=1, endpoint_url=endpoint, read_timeout=5))
    try:
        error = raised_within(lambda: target.describe(REGION), 30, "still reading")
    finally:
        server.shutdown()
        server.server_close()

    assert isinstance(error, SourceError)
    assert error.code == "ResponseTooLarge"
    assert "64 MiB" in error.message
