"""The shipped examples: the config the service runs with, and the IAM policies it needs.

The example config is read as the service reads it: from `/etc/fastlaunch-monitor`, with
`$STATE_DIRECTORY` and a `$CREDENTIALS_DIRECTORY` holding every credential the unit loads.
The IAM documents go through moto's IAM, which refuses malformed policies (a missing vendor
prefix, a bad version or effect; not every mistake IAM itself would catch).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from monitor.config.settings import Settings, parse_settings

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "config.toml"
IAM = ROOT / "examples" / "iam"
UNIT = ROOT / "systemd" / "fastlaunch-monitor.service"

_LOAD_CREDENTIAL = re.compile(r"^LoadCredential=([^:\s]+):", re.MULTILINE)
# A `*_file` key with a relative path, commented out or not: it names a credential.
_CREDENTIAL_KEY = re.compile(r'^[#\s]*\w+_file = "([^/"]+)"', re.MULTILINE)


def unit_credentials() -> set[str]:
    return set(_LOAD_CREDENTIAL.findall(UNIT.read_text()))


def read_example(credentials: Path) -> Settings:
    credentials.mkdir()
    for name in unit_credentials():
        (credentials / name).write_text(f"secret of {name}\n")
    env = {
        "STATE_DIRECTORY": "/var/lib/fastlaunch-monitor",
        "CREDENTIALS_DIRECTORY": str(credentials),
    }
    return parse_settings(
        CONFIG.read_text(),
        source=str(CONFIG),
        env=env,
        base_dir=Path("/etc/fastlaunch-monitor"),
    )


def policy(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((IAM / name).read_text())
    return document


def test_the_example_config_is_valid_as_the_service_reads_it(tmp_path: Path) -> None:
    settings = read_example(tmp_path / "credentials")

    assert settings.database.url == "sqlite:////var/lib/fastlaunch-monitor/history.sqlite3"
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 9877)
    assert [t.name for t in settings.targets] == ["tooling", "prod"]
    (webhook,) = settings.webhooks
    assert webhook.secret == "secret of webhook.key"


def test_every_credential_the_example_config_names_is_one_the_unit_loads() -> None:
    named = set(_CREDENTIAL_KEY.findall(CONFIG.read_text()))

    assert {"db-url", "webhook.key", "slack-url", "pagerduty.key", "tls.key"} <= named
    assert named <= unit_credentials()


def test_the_monitor_policy_allows_describing_fast_launch_images_and_nothing_else() -> None:
    (statement,) = policy("monitor-policy.json")["Statement"]

    assert statement["Effect"] == "Allow"
    assert statement["Action"] == "ec2:DescribeFastLaunchImages"
    # DescribeFastLaunchImages supports no resource-level permissions: "*" is the only form.
    assert statement["Resource"] == "*"


def test_the_monitor_may_assume_only_the_watched_roles(tmp_path: Path) -> None:
    (statement,) = policy("assume-watched-roles-policy.json")["Statement"]
    example = read_example(tmp_path / "credentials")

    assert statement["Action"] == "sts:AssumeRole"
    assert "*" not in json.dumps(statement["Resource"])
    assert {t.role_arn for t in example.targets if t.role_arn} <= set(statement["Resource"])


def test_a_watched_role_trusts_the_monitor_only_with_the_external_id(tmp_path: Path) -> None:
    (statement,) = policy("watched-role-trust-policy.json")["Statement"]
    (target,) = [t for t in read_example(tmp_path / "credentials").targets if t.role_arn]

    assert statement["Action"] == "sts:AssumeRole"
    assert statement["Principal"]["AWS"].startswith("arn:aws:iam::")
    assert statement["Condition"] == {"StringEquals": {"sts:ExternalId": target.external_id}}


@pytest.fixture
def iam(monkeypatch: pytest.MonkeyPatch) -> Any:
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(variable, "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    with mock_aws():
        yield boto3.client("iam", region_name="us-east-1")


def test_iam_accepts_every_shipped_policy_document(iam: Any) -> None:
    for name in ("monitor-policy.json", "assume-watched-roles-policy.json"):
        document = (IAM / name).read_text()
        iam.create_policy(PolicyName=name.removesuffix(".json"), PolicyDocument=document)
    iam.create_role(
        RoleName="FastLaunchMonitor",
        AssumeRolePolicyDocument=(IAM / "watched-role-trust-policy.json").read_text(),
    )

    names = {p["PolicyName"] for p in iam.list_policies(Scope="Local")["Policies"]}
    assert names == {"monitor-policy", "assume-watched-roles-policy"}
