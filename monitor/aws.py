"""The one place that talks to AWS: sessions, assumed roles, clients, paged describes.

One session per target (the default credential chain, a named profile, or a role assumed from
either, with botocore's own refreshable credentials so the role is assumed once and renewed
before it expires, not once per poll), one EC2 client per region, reused across cycles. Every
botocore error is translated here into a `SourceError` that keeps the AWS error code.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.credentials import (
    AssumeRoleCredentialFetcher,
    CredentialProvider,
    CredentialResolver,
    DeferredRefreshableCredentials,
)
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    PaginationError,
    ProfileNotFound,
)
from botocore.parsers import ResponseParserError
from botocore.session import get_session

from monitor.errors import ConfigError, SourceError
from monitor.model import Scope
from monitor.settings import AwsSettings, TargetSettings

#: AWS's largest page for DescribeFastLaunchImages: fewest round trips per poll.
PAGE_SIZE = 200

ROLE_SESSION_NAME = "fastlaunch-monitor"

RawImage = dict[str, Any]


def translate(exc: Exception) -> SourceError:
    """Turn a botocore exception into a `SourceError` named by the AWS error code or class."""
    if isinstance(exc, SourceError):
        return exc
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "ClientError")
        return SourceError(code, str(error.get("Message") or code))
    if isinstance(exc, PaginationError):
        return SourceError("RepeatedNextToken", "AWS returned the same NextToken twice")
    if isinstance(exc, ResponseParserError):
        return SourceError("InvalidResponse", "the response could not be parsed")
    if isinstance(exc, BotoCoreError):
        # botocore's messages name endpoints and profiles, never credentials.
        return SourceError(type(exc).__name__, str(exc))
    return SourceError(type(exc).__name__, str(exc))


class _AssumedRoleProvider(CredentialProvider):  # type: ignore[misc]
    """Hands botocore credentials that assume the role on first use and renew before expiry."""

    METHOD = "custom-fastlaunch-assume-role"
    CANONICAL_NAME = "custom-fastlaunch-assume-role"

    def __init__(self, fetcher: AssumeRoleCredentialFetcher) -> None:
        super().__init__()
        self._fetcher = fetcher

    def load(self) -> DeferredRefreshableCredentials:
        return DeferredRefreshableCredentials(
            refresh_using=self._fetcher.fetch_credentials, method=self.METHOD
        )


def _role_account(role_arn: str) -> str:
    # arn:aws:iam::222222222222:role/Name: the account is the fifth field.
    return role_arn.split(":")[4]


def _session_for(target: TargetSettings, key: str) -> boto3.Session:
    try:
        base = boto3.Session(profile_name=target.profile)
    except ProfileNotFound as exc:
        raise ConfigError(
            "AWS config", f"{key}.profile", f"{exc}; define it in ~/.aws/config or remove the key"
        ) from exc
    if target.role_arn is None:
        return base
    extra: dict[str, str] = {"RoleSessionName": ROLE_SESSION_NAME}
    if target.external_id is not None:
        extra["ExternalId"] = target.external_id
    fetcher = AssumeRoleCredentialFetcher(
        client_creator=base.client,
        source_credentials=base.get_credentials(),
        role_arn=target.role_arn,
        extra_args=extra,
    )
    botocore_session = get_session()
    botocore_session.register_component(
        "credential_provider", CredentialResolver([_AssumedRoleProvider(fetcher)])
    )
    return boto3.Session(botocore_session=botocore_session, region_name=base.region_name)


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """The answer to a DryRun DescribeFastLaunchImages: permitted, denied, or unreachable."""

    permitted: bool
    detail: str


class TargetSource:
    """One configured target: its session, account id and one EC2 client per region.

    Safe to use from several threads: clients are created under a lock and botocore clients
    are thread-safe once made.
    """

    def __init__(
        self,
        index: int,
        target: TargetSettings,
        aws: AwsSettings,
        *,
        session_factory: Callable[[TargetSettings, str], boto3.Session] = _session_for,
    ) -> None:
        self.key = target.name or f"targets[{index}]"
        self.settings = target
        self._config_key = f"targets[{index}]"
        self._aws = aws
        self._session = session_factory(target, self._config_key)
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self._account_id: str | None = (
            _role_account(target.role_arn) if target.role_arn is not None else None
        )
        regions = target.regions or (
            (self._session.region_name,) if self._session.region_name else ()
        )
        if not regions:
            raise ConfigError(
                "AWS config",
                f"{self._config_key}.regions",
                "no region: list regions for the target or set AWS_DEFAULT_REGION",
            )
        self.regions: tuple[str, ...] = tuple(regions)
        self._botocore_config = Config(
            retries={"mode": aws.retry_mode, "max_attempts": aws.max_attempts},
            connect_timeout=aws.connect_timeout,
            read_timeout=aws.read_timeout,
            user_agent_extra="fastlaunch-monitor",
        )

    def _client(self, service: str, region: str) -> Any:
        name = f"{service}/{region}"
        with self._lock:
            client = self._clients.get(name)
            if client is None:
                endpoint = self._aws.endpoint_url if service == "ec2" else None
                client = self._session.client(
                    service,
                    region_name=region,
                    config=self._botocore_config,
                    endpoint_url=endpoint,
                )
                self._clients[name] = client
            return client

    def account_id(self) -> str:
        """The target's account id: from the role ARN, else asked of STS once and kept."""
        if self._account_id is None:
            try:
                identity = self._client("sts", self.regions[0]).get_caller_identity()
            except Exception as exc:
                raise translate(exc) from exc
            self._account_id = str(identity["Account"])
        return self._account_id

    @property
    def known_account_id(self) -> str:
        """The account id if known yet, else an empty string (for labels of failed polls)."""
        return self._account_id or ""

    def scope(self, region: str) -> Scope:
        """The (target, account, region) scope; the target's name defaults to its account id."""
        account = self.known_account_id
        return Scope(target=self.settings.name or account, account_id=account, region=region)

    def _request(self) -> dict[str, Any]:
        request: dict[str, Any] = {}
        if self.settings.image_ids:
            request["ImageIds"] = list(self.settings.image_ids)
        if self.settings.filters:
            request["Filters"] = [
                {"Name": name, "Values": list(values)} for name, values in self.settings.filters
            ]
        return request

    def describe(self, region: str) -> tuple[list[RawImage], int]:
        """Page DescribeFastLaunchImages to the end; returns the raw items and the page count.

        A repeated NextToken is an error (botocore's paginator detects it), not an endless loop.
        """
        client = self._client("ec2", region)
        paginator = client.get_paginator("describe_fast_launch_images")
        items: list[RawImage] = []
        pages = 0
        try:
            for page in paginator.paginate(
                **self._request(), PaginationConfig={"PageSize": PAGE_SIZE}
            ):
                pages += 1
                items.extend(page.get("FastLaunchImages", ()))
        except Exception as exc:
            raise translate(exc) from exc
        return items, pages

    def check(self, region: str) -> CheckOutcome:
        """DryRun DescribeFastLaunchImages: `DryRunOperation` means the caller is permitted."""
        try:
            self._client("ec2", region).describe_fast_launch_images(DryRun=True)
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
