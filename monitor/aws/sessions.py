"""The one place that talks to AWS: sessions, assumed roles, clients, paged describes.

One session per target (the default credential chain, a named profile, or a role assumed from
either, with botocore's own refreshable credentials so the role is assumed once and renewed
before it expires, not once per poll), one EC2 client per region, reused across cycles. Every
EC2 request, each retry of botocore's included, first takes a token from its account and
region's bucket (`monitor.aws.ratelimit`). Every botocore error is translated here into a
`SourceError` that keeps the AWS error code.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast
from xml.etree import ElementTree

from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.credentials import (
    CredentialProvider,
    CredentialResolver,
    DeferredRefreshableCredentials,
    RefreshableCredentials,
)
from botocore.exceptions import ClientError, ProfileNotFound
from botocore.loaders import Loader
from botocore.parsers import ResponseParserError
from botocore.session import Session as BotocoreSession
from botocore.utils import parse_timestamp as botocore_parse_timestamp

from monitor.aws.ratelimit import RateLimits, TokenBucket
from monitor.aws.service_model import TrimmedModelLoader
from monitor.config.settings import AwsSettings, TargetSettings
from monitor.core.errors import ConfigError, SourceError
from monitor.core.model import Scope
from monitor.core.redact import redact_url_credentials

#: AWS's largest page for DescribeFastLaunchImages: fewest round trips per poll.
PAGE_SIZE = 200

ROLE_SESSION_NAME = "fastlaunch-monitor"

RawImage = dict[str, Any]

#: What time it is, as an aware datetime; assumed-role credentials are renewed by it.
Clock = Callable[[], datetime]

#: EC2 meters an account's requests per region whoever makes them, so by default every target
#: of the process (also those a reload makes) draws on the same buckets.
PROCESS_RATE_LIMITS = RateLimits()

#: The event botocore emits before each HTTP attempt of an EC2 operation, retries included
#: (`before-call` comes once per operation, whatever its retries).
_BEFORE_EACH_ATTEMPT = "before-send.ec2"


def _utc_now() -> datetime:
    return datetime.now(UTC)


#: Errors whose cause does not pass by itself: a permission, the credentials themselves, an
#: account or region not set up. Polling such a scope every cycle would change nothing until a
#: person acts, so it backs off (`monitor.poll.cycle.Backoff`).
NEEDS_A_PERSON: frozenset[str] = frozenset(
    {
        "UnauthorizedOperation",
        "AuthFailure",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "AccessDeniedException",
        "OptInRequired",
        "Blocked",
        "NoCredentialsError",
        "PartialCredentialsError",
        "UnauthorizedSSOTokenError",
        "SSOTokenLoadError",
        "DuplicateScope",
    }
)

#: Expired session credentials: they pass by themselves only if the credentials refresh.
EXPIRED_CREDENTIALS: frozenset[str] = frozenset({"ExpiredToken", "ExpiredTokenException"})

#: The largest answer read from AWS. A page of 200 images is some 200 kB; an endpoint that sends
#: more than this is broken or hostile, and reading on would only cost memory.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


def translate(exc: Exception) -> SourceError:
    """Turn a botocore exception into a `SourceError` named by the AWS error code or class.

    Credentials in a URL the message quotes are masked (`redact_url_credentials`).
    """
    if isinstance(exc, SourceError):
        return exc
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "ClientError")
        message = str(error.get("Message") or code)
    elif isinstance(exc, ResponseParserError):
        code, message = "InvalidResponse", "the response could not be parsed"
    else:
        # botocore's messages name endpoints (a URL may carry credentials) and profiles.
        code, message = type(exc).__name__, str(exc)
    return SourceError(code, redact_url_credentials(message), permanent=code in NEEDS_A_PERSON)


class _AssumedRoleProvider(CredentialProvider):  # type: ignore[misc]
    """Hands botocore credentials that assume the role on first use and renew before expiry."""

    METHOD = "custom-fastlaunch-assume-role"
    CANONICAL_NAME = "custom-fastlaunch-assume-role"

    def __init__(self, refresh: Callable[[], dict[str, str]], clock: Clock) -> None:
        super().__init__()
        self._refresh = refresh
        self._clock = clock

    def load(self) -> DeferredRefreshableCredentials:
        return DeferredRefreshableCredentials(
            refresh_using=self._refresh, method=self.METHOD, time_fetcher=self._clock
        )


def _role_account(role_arn: str) -> str:
    # arn:aws:iam::222222222222:role/Name: the account is the fifth field.
    return role_arn.split(":")[4]


@functools.cache
def _loader() -> Loader:
    # botocore parses a service's model once per loader: one loader shared by every target's
    # session makes each session after the first cheap. It serves EC2's model cut down to the
    # operation the monitor calls, which makes each of the many EC2 clients cheap too.
    return TrimmedModelLoader()


def parse_timestamp(value: str | float) -> datetime:
    """botocore's timestamp parser, with a fast path for the ISO 8601 that EC2 sends.

    botocore parses every timestamp with dateutil, which costs more than the rest of a poll;
    `datetime.fromisoformat` reads EC2's `2026-11-26T10:00:00.123Z` directly. Anything it
    cannot read, or that carries no time zone, goes to botocore's own parser.
    """
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    fallback: datetime = botocore_parse_timestamp(value)
    return fallback


def _new_session(profile: str | None) -> BotocoreSession:
    session = BotocoreSession(profile=profile)
    session.register_component("data_loader", _loader())
    # A documented hook: every parser the session's clients make uses this timestamp parser.
    session.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=parse_timestamp
    )
    return session


def _base_session(target: TargetSettings, key: str) -> tuple[BotocoreSession, str | None]:
    """The target's own session (default chain or `profile`) and its default region."""
    session = _new_session(target.profile)
    try:
        # Reading the profile now makes a missing one a config error at start, not a failed
        # poll; the region itself may come from the environment, which botocore prefers.
        session.get_scoped_config()
        region = session.get_config_variable("region")
    except ProfileNotFound as exc:
        raise ConfigError(
            "AWS config", f"{key}.profile", f"{exc}; define it in ~/.aws/config or remove the key"
        ) from exc
    return session, region or None


class BaseSessions:
    """The sessions targets start from, one per profile, and their STS clients, one per
    (profile, region): shared by the targets of one config.

    A hundred targets assuming roles from the default chain make one session and one STS
    client instead of a hundred of each (each STS client is about 0.15 MB and 15 ms). The STS
    clients are made on first use, so a target whose source credentials are missing fails
    at its poll (and is recorded as such), not when the monitor starts; they use the botocore
    config of the first target that asks, which all targets of one config share. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str | None, tuple[BotocoreSession, str | None]] = {}
        self._sts: dict[tuple[str | None, str], Any] = {}

    def session(self, target: TargetSettings, key: str) -> tuple[BotocoreSession, str | None]:
        """The session of the target's profile (or of the default chain) and its region."""
        with self._lock:
            found = self._sessions.get(target.profile)
            if found is None:
                found = self._sessions[target.profile] = _base_session(target, key)
            return found

    def sts(self, profile: str | None, region: str, config: Config) -> Any:
        """The STS client of `profile`'s session in `region`; after `session()` for it."""
        with self._lock:
            client = self._sts.get((profile, region))
            if client is None:
                session, _ = self._sessions[profile]
                client = session.create_client("sts", region_name=region, config=config)
                self._sts[(profile, region)] = client
            return client


class _AssumeRole:
    """Refreshes the role's credentials: one AssumeRole with the base session's identity.

    botocore calls it under the credentials' refresh lock, one caller at a time.
    """

    def __init__(self, sts: Callable[[], Any], role_arn: str, external_id: str | None) -> None:
        self._sts = sts
        self._request = {"RoleArn": role_arn, "RoleSessionName": ROLE_SESSION_NAME}
        if external_id is not None:
            self._request["ExternalId"] = external_id

    def __call__(self) -> dict[str, str]:
        credentials = self._sts().assume_role(**self._request)["Credentials"]
        return {
            "access_key": credentials["AccessKeyId"],
            "secret_key": credentials["SecretAccessKey"],
            "token": credentials["SessionToken"],
            "expiry_time": credentials["Expiration"].isoformat(),
        }


def _role_session(
    sts: Callable[[], Any], role_arn: str, target: TargetSettings, *, clock: Clock
) -> BotocoreSession:
    # A session of its own whose only credential provider is the role, with the target's
    # profile so the rest of that profile's settings still apply.
    session = _new_session(target.profile)
    refresh = _AssumeRole(sts, role_arn, target.external_id)
    provider = _AssumedRoleProvider(refresh, clock)
    session.register_component("credential_provider", CredentialResolver([provider]))
    return session


#: The event botocore emits with each answer's body before parsing it.
_BEFORE_PARSING_DESCRIBE = "before-parse.ec2.DescribeFastLaunchImages"
_DESCRIBE_RESPONSE = "DescribeFastLaunchImagesResponse"

#: How much of a body is read to find its root element (an XML declaration and comments may
#: come first); a document whose root starts later is not EC2's.
_ROOT_SEARCH_BYTES = 64 * 1024


def _refuse_foreign_answers(response_dict: dict[str, Any], **_event: Any) -> None:
    """Refuse a successful answer whose root element is not `DescribeFastLaunchImagesResponse`.

    botocore reads any well-formed XML as a page, and a page of nothing: a proxy's login page
    or a captive portal answering 200 would look like an account without images, and every
    image would be recorded as removed.
    """
    if response_dict.get("status_code", 0) >= 300:
        return
    body = response_dict.get("body")
    root = _root_element(body) if isinstance(body, bytes) else None
    if root != _DESCRIBE_RESPONSE:
        seen = "no XML element" if root is None else f"<{root[:40]!r}>"
        raise SourceError(
            "InvalidResponse",
            f"the answer is not EC2's {_DESCRIBE_RESPONSE} (its root is {seen})",
        )


def _root_element(body: bytes) -> str | None:
    """The local name of the root element of an XML document, or `None` if there is none."""
    parser: ElementTree.XMLPullParser[ElementTree.Element] = ElementTree.XMLPullParser(
        events=("start",)
    )
    # A piece at a time, so nothing past the root's start tag is parsed.
    for start in range(0, min(len(body), _ROOT_SEARCH_BYTES), 4096):
        try:
            parser.feed(body[start : start + 4096])
            for _, element in cast(Iterator[tuple[str, Any]], parser.read_events()):
                return str(element.tag).rpartition("}")[2]
        except ElementTree.ParseError:
            return None
    return None


class _ReadBody:
    """A body already read, in the shape botocore reads bodies from (`stream()`)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_kwargs: Any) -> Iterator[bytes]:
        yield self._data


def _cap_response_bodies(client: Any, limit: int = MAX_RESPONSE_BYTES) -> None:
    """Make `client` stop reading an answer at `limit` bytes and fail as `ResponseTooLarge`.

    botocore reads each answer whole before anything can look at it, so an endpoint sending
    without end would take all memory. There is no event between the arrival of an answer and
    the reading of its body: the client's HTTP session sends through this wrapper instead,
    which asks for the body unread and reads it itself, counting.
    """
    # Not a documented hook: the tests of the cap fail if a botocore release renames these.
    session = client._endpoint.http_session
    send = session.send

    def send_capped(request: Any) -> AWSResponse:
        request.stream_output = True
        response = send(request)
        chunks: list[bytes] = []
        size = 0
        for chunk in response.raw.stream(1024 * 1024, decode_content=False):
            size += len(chunk)
            if size > limit:
                response.raw.close()
                raise SourceError(
                    "ResponseTooLarge",
                    f"the answer was longer than {limit // (1024 * 1024)} MiB; stopped reading",
                )
            chunks.append(chunk)
        return AWSResponse(
            response.url, response.status_code, response.headers, _ReadBody(b"".join(chunks))
        )

    session.send = send_capped


def target_scope(target: TargetSettings, account: str, region: str) -> Scope:
    """A target's (target, account, region) scope; the target's name defaults to its account."""
    return Scope(target=target.name or account, account_id=account, region=region)


@dataclass(frozen=True, slots=True)
class PollLimits:
    """How far one describe may go: until `deadline` (on `time.monotonic()`, which is the
    same clock in a poll process) and at most `max_pages` pages. `timeout` is the seconds the
    deadline allowed, for the message."""

    deadline: float
    max_pages: int
    timeout: float

    def check(self, pages: int) -> None:
        """Raise `PollDeadlineExceeded` before page `pages + 1` if the poll went too far."""
        if pages >= self.max_pages:
            raise SourceError(
                "PollDeadlineExceeded",
                f"stopped after {pages} pages: more than max_pages ({self.max_pages})",
            )
        if time.monotonic() >= self.deadline:
            raise SourceError(
                "PollDeadlineExceeded",
                f"stopped after {pages} pages: the poll took longer than poll_timeout "
                f"({self.timeout:g} s)",
            )


class Source(Protocol):
    """What a poll cycle needs of a target: a `TargetSource`, or one that polls elsewhere
    (`monitor.poll_processes`)."""

    @property
    def key(self) -> str:
        """The target's name in logs and config (`targets[i]` without a name)."""

    @property
    def regions(self) -> tuple[str, ...]: ...

    @property
    def known_account_id(self) -> str:
        """The account id if known yet, else an empty string."""

    def account_id(self) -> str:
        """The account id, asked of AWS if not known yet; raises `SourceError`."""

    def scope(self, region: str) -> Scope: ...

    def describe(self, region: str, limits: PollLimits | None = None) -> tuple[list[RawImage], int]:
        """Every fast launch image of `region` and the pages it took, within `limits`;
        raises `SourceError`."""


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """The answer to a DryRun DescribeFastLaunchImages: permitted, denied, or unreachable."""

    permitted: bool
    detail: str


class TargetSource:
    """One configured target: its session, account id and one EC2 client per region.

    Safe to use from several threads: clients are created under a lock and botocore clients
    are thread-safe once made. `clock` is what assumed-role credentials are checked for
    expiry against (tests move it). `rate_limits` holds the buckets its EC2 requests draw on:
    one per account and region, shared with every other target reaching that account there.
    `sessions`: the base sessions it shares with the other targets of its config (default:
    its own).
    """

    def __init__(
        self,
        index: int,
        target: TargetSettings,
        aws: AwsSettings,
        *,
        clock: Clock = _utc_now,
        rate_limits: RateLimits = PROCESS_RATE_LIMITS,
        sessions: BaseSessions | None = None,
    ) -> None:
        self.key = target.name or f"targets[{index}]"
        self._rate_limits = rate_limits
        self.settings = target
        self._config_key = f"targets[{index}]"
        self._aws = aws
        self._sessions = sessions or BaseSessions()
        base, default_region = self._sessions.session(target, self._config_key)
        regions = target.regions or ((default_region,) if default_region else ())
        if not regions:
            raise ConfigError(
                "AWS config",
                f"{self._config_key}.regions",
                "no region: list regions for the target or set AWS_DEFAULT_REGION",
            )
        self.regions: tuple[str, ...] = tuple(regions)
        self._botocore_config = Config(
            # `max_attempts` counts the first attempt too, as in the AWS config file.
            retries={"mode": aws.retry_mode, "total_max_attempts": aws.max_attempts},
            connect_timeout=aws.connect_timeout,
            read_timeout=aws.read_timeout,
            user_agent_extra="fastlaunch-monitor",
        )
        self._session = (
            base
            if target.role_arn is None
            else _role_session(self._sts, target.role_arn, target, clock=clock)
        )
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self._account_id: str | None = (
            _role_account(target.role_arn) if target.role_arn is not None else None
        )

    def _ec2(self, region: str) -> Any:
        """The target's EC2 client in `region`, made on first use and kept."""
        with self._lock:
            client = self._clients.get(region)
            if client is None:
                client = self._session.create_client(
                    "ec2",
                    region_name=region,
                    config=self._botocore_config,
                    endpoint_url=self._aws.endpoint_url,
                )
                # First, so the token is taken before any other handler sends or answers.
                client.meta.events.register_first(_BEFORE_EACH_ATTEMPT, self._token_taker(region))
                client.meta.events.register(_BEFORE_PARSING_DESCRIBE, _refuse_foreign_answers)
                _cap_response_bodies(client)
                self._clients[region] = client
            return client

    def _token_taker(self, region: str) -> Callable[..., None]:
        def take_token(**_event: Any) -> None:
            # Returns None: a value would be taken by botocore as the response.
            self.rate_limit(region).acquire()

        return take_token

    def rate_limit(self, region: str) -> TokenBucket:
        """The bucket this target's EC2 requests in `region` draw on now.

        Its account's once the account id is known (from the role ARN, or after STS); until
        then one of the target's own.
        """
        owner = self._account_id or f"target {self.key}"
        return self._rate_limits.bucket(owner, region)

    def _sts(self) -> Any:
        """The STS client of the target's base session (its profile or the default chain)."""
        return self._sessions.sts(self.settings.profile, self.regions[0], self._botocore_config)

    def account_id(self) -> str:
        """The target's account id: from the role ARN, else asked of STS once and kept."""
        if self._account_id is None:
            try:
                identity = self._sts().get_caller_identity()
            except Exception as exc:
                raise self._translate(exc) from exc
            self._account_id = str(identity["Account"])
        return self._account_id

    def _translate(self, exc: Exception) -> SourceError:
        """`translate`, knowing the target's credentials: expired ones that refresh themselves
        (an assumed role, an instance role) pass by themselves; static ones need a person."""
        error = translate(exc)
        if error.code in EXPIRED_CREDENTIALS and not self._credentials_refresh():
            return SourceError(error.code, error.message, permanent=True)
        return error

    def _credentials_refresh(self) -> bool:
        if self.settings.role_arn is not None:
            return True
        try:
            credentials = self._session.get_credentials()
        except Exception:
            return False
        return isinstance(credentials, RefreshableCredentials)

    @property
    def known_account_id(self) -> str:
        """The account id if known yet, else an empty string (for labels of failed polls)."""
        return self._account_id or ""

    def scope(self, region: str) -> Scope:
        """The (target, account, region) scope; the target's name defaults to its account id."""
        return target_scope(self.settings, self.known_account_id, region)

    def _request(self) -> dict[str, Any]:
        request: dict[str, Any] = {"MaxResults": PAGE_SIZE}
        if self.settings.image_ids:
            request["ImageIds"] = list(self.settings.image_ids)
        if self.settings.filters:
            request["Filters"] = [
                {"Name": name, "Values": list(values)} for name, values in self.settings.filters
            ]
        return request

    def describe(self, region: str, limits: PollLimits | None = None) -> tuple[list[RawImage], int]:
        """Page DescribeFastLaunchImages to the end; returns the raw items and the page count.

        A `NextToken` seen before, on any earlier page of this describe, is a `SourceError`
        (`RepeatedNextToken`) rather than an endless loop; with `limits`, so are more pages or
        more time than they allow (`PollDeadlineExceeded`), however the tokens differ. An
        answer that is not EC2's (another document, no request id) is `InvalidResponse`.
        """
        client = self._ec2(region)
        request = self._request()
        items: list[RawImage] = []
        seen: set[str] = set()
        pages = 0
        try:
            while True:
                if limits is not None:
                    limits.check(pages)
                page = client.describe_fast_launch_images(**request)
                pages += 1
                if not page.get("ResponseMetadata", {}).get("RequestId"):
                    # EC2 names every answer; a page without a request id is not EC2's.
                    raise SourceError(
                        "InvalidResponse",
                        f"page {pages} carries no request id: not an answer of EC2",
                    )
                items.extend(page.get("FastLaunchImages", ()))
                token = page.get("NextToken")
                if not token:
                    return items, pages
                if token in seen:
                    raise SourceError(
                        "RepeatedNextToken",
                        f"page {pages} repeated an earlier NextToken; stopped paging",
                    )
                seen.add(token)
                request["NextToken"] = token
        except Exception as exc:
            raise self._translate(exc) from exc

    def check(self, region: str) -> CheckOutcome:
        """DryRun DescribeFastLaunchImages: `DryRunOperation` means the caller is permitted."""
        try:
            self._ec2(region).describe_fast_launch_images(DryRun=True)
        except ClientError as exc:
            error = translate(exc)
            if error.code == "DryRunOperation":
                return CheckOutcome(True, "permitted")
            if error.code == "UnauthorizedOperation":
                return CheckOutcome(False, "denied: ec2:DescribeFastLaunchImages not allowed")
            return CheckOutcome(False, f"error: {error}")
        except Exception as exc:
            return CheckOutcome(False, f"unreachable: {translate(exc)}")
        # A DryRun that succeeds outright means the endpoint ignored DryRun; still permitted.
        return CheckOutcome(True, "permitted")
