from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from monitor.config.settings import (
    BUILT_IN_SOURCE,
    AwsSettings,
    HttpSettings,
    MonitorSettings,
    Settings,
    TargetSettings,
    config_path,
    load_settings,
    parse_settings,
)
from monitor.core.errors import ConfigError
from monitor.core.model import FAILED_STATES

FILE = "/etc/fastlaunch-monitor/config.toml"
SECRET_URL = "https://hooks.slack.com/services/T000/B000/s3cr3tT0ken"


def parse(
    text: str | None, env: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> Settings:
    return parse_settings(
        text, source=FILE, env=env or {}, base_dir=base_dir or Path("/etc/fastlaunch-monitor")
    )


def error_of(
    text: str | None, env: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> str:
    """The one line the CLI would print for `text`."""
    with pytest.raises(ConfigError) as caught:
        parse(text, env, base_dir)
    line = str(caught.value)
    assert "\n" not in line
    return line


def write(folder: Path, name: str, content: str) -> Path:
    path = folder / name
    path.write_text(content, encoding="utf-8")
    return path


# --- defaults -------------------------------------------------------------------------------


def test_no_file_gives_the_documented_defaults(tmp_path: Path) -> None:
    settings = parse(None, env={"STATE_DIRECTORY": str(tmp_path)})

    assert settings.source == FILE
    assert settings.monitor == MonitorSettings(
        interval=300.0, jitter=10.0, max_concurrency=16, poll_processes=0, stuck_after=7200.0
    )
    assert settings.http == HttpSettings(host="127.0.0.1", port=9877)
    assert settings.aws == AwsSettings(
        retry_mode="standard",
        max_attempts=5,
        connect_timeout=5.0,
        read_timeout=20.0,
        endpoint_url=None,
    )
    assert settings.webhooks == ()


def test_a_file_without_targets_polls_the_default_chain_in_the_default_region() -> None:
    settings = parse("[monitor]\ninterval = '1m'\n")

    assert settings.targets == (TargetSettings(name=None, regions=()),)


def test_the_default_database_is_sqlite_in_the_first_state_directory() -> None:
    settings = parse(None, env={"STATE_DIRECTORY": "/var/lib/flm:/var/lib/other"})

    assert settings.database.url == "sqlite:////var/lib/flm/history.sqlite3"


def test_without_a_state_directory_the_database_is_in_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    settings = parse(None)

    assert settings.database.url == f"sqlite:///{tmp_path}/history.sqlite3"


# --- the whole file -------------------------------------------------------------------------


def test_every_key_of_the_documented_example_is_read(tmp_path: Path) -> None:
    write(tmp_path, "webhook.key", "hmac-key\n")
    text = """
[monitor]
interval = "1m30s"
jitter = 5
max_concurrency = 4
poll_processes = 2
stuck_after = "0"

[database]
url = "postgresql+psycopg://monitor@db.internal/fastlaunch"

[http]
listen = "0.0.0.0:9100"

[aws]
retry_mode = "adaptive"
max_attempts = 8
connect_timeout = "2s"
read_timeout = "1m"
endpoint_url = "http://127.0.0.1:5000"

[[targets]]
name = "prod"
regions = ["us-east-1", "eu-west-1"]
role_arn = "arn:aws:iam::222222222222:role/FastLaunchMonitor"
external_id = "ext"
profile = "ops"
image_ids = ["ami-0123456789abcdef0"]
filters = { state = ["enabled", "enabling-failed"], "owner-id" = ["123456789012"] }

[[targets]]
regions = ["us-gov-west-1"]

[[alerts.webhooks]]
name = "ops"
url = "https://hooks.example.com/fastlaunch"
format = "json"
secret_file = "webhook.key"
headers = { "X-Team" = "windows-images" }
states = ["enabling-failed"]
send_resolved = false
timeout = "3s"
"""
    settings = parse(text, base_dir=tmp_path)

    assert settings.monitor == MonitorSettings(
        interval=90.0, jitter=5.0, max_concurrency=4, poll_processes=2, stuck_after=0.0
    )
    assert settings.database.url == "postgresql+psycopg://monitor@db.internal/fastlaunch"
    assert (settings.http.host, settings.http.port) == ("0.0.0.0", 9100)
    assert settings.aws == AwsSettings("adaptive", 8, 2.0, 60.0, "http://127.0.0.1:5000")
    prod, unnamed = settings.targets
    assert prod == TargetSettings(
        name="prod",
        regions=("us-east-1", "eu-west-1"),
        role_arn="arn:aws:iam::222222222222:role/FastLaunchMonitor",
        external_id="ext",
        profile="ops",
        image_ids=("ami-0123456789abcdef0",),
        filters=(("state", ("enabled", "enabling-failed")), ("owner-id", ("123456789012",))),
    )
    assert unnamed == TargetSettings(regions=("us-gov-west-1",))
    (webhook,) = settings.webhooks
    assert webhook.name == "ops"
    assert webhook.urls == ("https://hooks.example.com/fastlaunch",)
    assert webhook.format == "json"
    assert webhook.secret == "hmac-key"
    assert webhook.headers == (("X-Team", "windows-images"),)
    assert webhook.states == frozenset({"enabling-failed"})
    assert webhook.send_resolved is False
    assert webhook.timeout == 3.0


# --- syntax, unknown keys and types ---------------------------------------------------------


def test_a_toml_syntax_error_names_its_line_and_column() -> None:
    assert error_of("[monitor]\ninterval = 5m\n") == (
        f"{FILE}: invalid TOML at line 2, column 13: "
        "expected newline or end of document after a statement"
    )


def test_a_toml_file_cut_short_says_so() -> None:
    assert error_of("regions = [") == f"{FILE}: invalid TOML at the end of the file: invalid value"


def test_an_unknown_key_suggests_the_closest_known_one() -> None:
    assert error_of("[monitor]\nintervall = '5m'\n") == (
        f'{FILE}: monitor.intervall: unknown key "intervall"; did you mean "interval"?'
    )


def test_an_unknown_key_far_from_any_lists_the_known_ones() -> None:
    assert error_of("[aws]\nregion = 'us-east-1'\n") == (
        f'{FILE}: aws.region: unknown key "region"; expected one of: '
        "retry_mode, max_attempts, connect_timeout, read_timeout, endpoint_url"
    )


def test_an_unknown_section_is_refused() -> None:
    assert error_of("[monitr]\n") == (
        f'{FILE}: monitr: unknown key "monitr"; did you mean "monitor"?'
    )


def test_an_unknown_key_in_a_webhook_is_reported_before_the_missing_url() -> None:
    assert error_of("[[alerts.webhooks]]\nulr = 'https://a.example'\n") == (
        f'{FILE}: alerts.webhooks[0].ulr: unknown key "ulr"; did you mean "url"?'
    )


def test_a_wrong_type_is_named() -> None:
    assert error_of("[monitor]\nmax_concurrency = '16'\n") == (
        f"{FILE}: monitor.max_concurrency: expected an integer, got a string"
    )


def test_a_boolean_is_not_taken_for_an_integer() -> None:
    assert error_of("[aws]\nmax_attempts = true\n") == (
        f"{FILE}: aws.max_attempts: expected an integer, got a boolean"
    )


def test_a_section_that_is_not_a_table_is_refused() -> None:
    assert error_of("monitor = 3\n") == f"{FILE}: monitor: expected a table, got an integer"


def test_targets_written_as_a_single_table_ask_for_double_brackets() -> None:
    assert error_of("[targets]\nname = 'x'\n") == (
        f"{FILE}: targets: expected an array of tables ([[targets]]), got a table"
    )


def test_a_list_item_of_the_wrong_type_is_named_by_its_index() -> None:
    assert error_of("[[targets]]\nregions = ['us-east-1', 2]\n") == (
        f"{FILE}: targets[0].regions[1]: expected a string, got an integer"
    )


def test_an_empty_list_is_refused() -> None:
    assert error_of("[[targets]]\nregions = []\n") == (
        f"{FILE}: targets[0].regions: must not be empty; list at least one or leave the key out"
    )


def test_an_empty_string_is_refused() -> None:
    assert error_of("[[targets]]\nprofile = ''\n") == (
        f"{FILE}: targets[0].profile: must not be empty; give a value or leave the key out"
    )


def test_a_repeated_list_item_is_refused() -> None:
    assert error_of("[[targets]]\nregions = ['us-east-1', 'us-east-1']\n") == (
        f'{FILE}: targets[0].regions[1]: "us-east-1" is listed twice; remove the repeat'
    )


# --- [monitor] and durations ----------------------------------------------------------------


def test_a_bad_duration_shows_examples() -> None:
    assert error_of("[monitor]\ninterval = '5 minutes'\n") == (
        f'{FILE}: monitor.interval: expected a duration like "90s", "5m" or "1h30m", '
        'got "5 minutes"'
    )


def test_a_float_is_not_a_duration() -> None:
    assert error_of("[monitor]\njitter = 1.5\n") == (
        f'{FILE}: monitor.jitter: expected a duration like "90s", "5m" or "1h30m", got a float'
    )


def test_a_zero_interval_is_refused() -> None:
    assert error_of("[monitor]\ninterval = 0\n") == (
        f'{FILE}: monitor.interval: must be longer than zero, e.g. "5m"'
    )


def test_a_negative_jitter_is_refused() -> None:
    assert error_of("[monitor]\njitter = -1\n") == (
        f"{FILE}: monitor.jitter: expected a duration of zero or more seconds, got -1"
    )


def test_a_duration_of_more_than_a_year_is_refused() -> None:
    assert error_of("[monitor]\nstuck_after = '400d'\n") == (
        f'{FILE}: monitor.stuck_after: must be at most 365 days ("365d")'
    )


def test_zero_concurrency_is_refused() -> None:
    assert error_of("[monitor]\nmax_concurrency = 0\n") == (
        f"{FILE}: monitor.max_concurrency: must be 1 or more, got 0"
    )


def test_a_negative_number_of_poll_processes_is_refused() -> None:
    assert error_of("[monitor]\npoll_processes = -1\n") == (
        f"{FILE}: monitor.poll_processes: must be 0 or more, got -1"
    )


def test_stuck_after_zero_disables_stuck_alerts() -> None:
    assert parse("[monitor]\nstuck_after = '0'\n").monitor.stuck_after == 0.0


# --- [database] -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("sqlite:///relative.db", "sqlite:///relative.db"),
        ("sqlite+pysqlite:////var/lib/x.db", "sqlite+pysqlite:////var/lib/x.db"),
        ("postgresql+psycopg://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        (
            "postgresql://u:p@h:5433/db?sslmode=require",
            "postgresql+psycopg://u:p@h:5433/db?sslmode=require",
        ),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
    ],
)
def test_supported_database_urls_get_the_psycopg_3_driver(given: str, kept: str) -> None:
    assert parse(f"[database]\nurl = '{given}'\n").database.url == kept


def test_an_unsupported_database_scheme_says_what_to_use() -> None:
    assert error_of("[database]\nurl = 'mysql://u:hunter2@h/db'\n") == (
        f'{FILE}: database.url: unsupported database scheme "mysql"; '
        'use "sqlite:///PATH" or "postgresql+psycopg://USER@HOST/DATABASE"'
    )


def test_the_psycopg2_driver_is_refused_with_the_psycopg_3_spelling() -> None:
    assert error_of("[database]\nurl = 'postgresql+psycopg2://u:hunter2@h/db'\n") == (
        f'{FILE}: database.url: unsupported driver "postgresql+psycopg2"; '
        'the monitor uses psycopg 3: "postgresql+psycopg://..."'
    )


def test_a_database_url_that_does_not_parse_is_refused_without_showing_it() -> None:
    line = error_of("[database]\nurl = 'hunter2 is not a url'\n")

    assert line == (
        f"{FILE}: database.url: not a database URL; "
        'use "sqlite:///PATH" or "postgresql+psycopg://USER@HOST/DATABASE"'
    )


def test_a_sqlite_url_with_a_host_is_refused() -> None:
    assert error_of("[database]\nurl = 'sqlite://host/x.db'\n") == (
        f'{FILE}: database.url: a SQLite URL has no host; write "sqlite:///relative.db" '
        'or "sqlite:////abs.db"'
    )


def test_the_database_url_can_come_from_a_file(tmp_path: Path) -> None:
    write(tmp_path, "db-url", "postgres://monitor:hunter2@db/fl\n")

    settings = parse("[database]\nurl_file = 'db-url'\n", base_dir=tmp_path)

    assert settings.database.url == "postgresql+psycopg://monitor:hunter2@db/fl"


def test_url_and_url_file_are_exclusive() -> None:
    assert error_of("[database]\nurl = 'sqlite://'\nurl_file = 'db-url'\n") == (
        f'{FILE}: database.url_file: "url" and "url_file" are exclusive; keep one of them'
    )


def test_the_environment_overrides_the_database_url() -> None:
    env = {"FASTLAUNCH_MONITOR_DATABASE_URL": "postgresql://u:hunter2@h/db"}

    settings = parse("[database]\nurl = 'sqlite:///x.db'\n", env=env)

    assert settings.database.url == "postgresql+psycopg://u:hunter2@h/db"


def test_an_empty_database_url_variable_is_ignored() -> None:
    settings = parse(
        "[database]\nurl = 'sqlite:///x.db'\n", env={"FASTLAUNCH_MONITOR_DATABASE_URL": ""}
    )

    assert settings.database.url == "sqlite:///x.db"


def test_retention_defaults_to_30_days_of_polls_90_of_ended_alerts_and_all_history() -> None:
    database = parse(None).database

    assert (database.poll_retention, database.alert_retention, database.history_retention) == (
        30 * 86400.0,
        90 * 86400.0,
        0.0,
    )


def test_retention_is_a_duration_and_zero_keeps_for_ever() -> None:
    database = parse(
        "[database]\npoll_retention = '7d'\nalert_retention = '0'\nhistory_retention = '730d'\n"
    ).database

    assert (database.poll_retention, database.alert_retention, database.history_retention) == (
        7 * 86400.0,
        0.0,
        730 * 86400.0,
    )


def test_a_retention_without_a_unit_names_the_key_and_the_fix() -> None:
    assert error_of("[database]\npoll_retention = '30'\n") == (
        f'{FILE}: database.poll_retention: expected a duration like "90s", "5m" or "1h30m", '
        'got "30" (a number needs a unit, e.g. "30s")'
    )


def test_a_retention_with_the_environments_database_url_is_still_read() -> None:
    database = parse(
        "[database]\nhistory_retention = '365d'\n",
        env={"FASTLAUNCH_MONITOR_DATABASE_URL": "sqlite:////tmp/x.sqlite3"},
    ).database

    assert database.history_retention == 365 * 86400.0


def test_a_bad_database_url_in_the_environment_names_the_variable() -> None:
    env = {"FASTLAUNCH_MONITOR_DATABASE_URL": "oracle://u:hunter2@h/db"}

    assert error_of(None, env=env) == (
        '$FASTLAUNCH_MONITOR_DATABASE_URL: unsupported database scheme "oracle"; '
        'use "sqlite:///PATH" or "postgresql+psycopg://USER@HOST/DATABASE"'
    )


def test_the_safe_url_masks_the_password() -> None:
    settings = parse("[database]\nurl = 'postgresql://u:hunter2@h/db?password=hunter3'\n")

    assert "hunter" not in settings.database.safe_url
    assert settings.database.safe_url.startswith("postgresql+psycopg://u:***@h/db")


# --- [http] ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("0.0.0.0:9877", "0.0.0.0", 9877),
        ("localhost:0", "localhost", 0),
        ("[::1]:9877", "::1", 9877),
        ("[::]:65535", "::", 65535),
    ],
)
def test_listen_is_split_into_host_and_port(listen: str, host: str, port: int) -> None:
    http = parse(f"[http]\nlisten = '{listen}'\n").http

    assert (http.host, http.port) == (host, port)


def test_a_listen_address_without_a_port_is_refused() -> None:
    assert error_of("[http]\nlisten = '127.0.0.1'\n") == (
        f'{FILE}: http.listen: expected "HOST:PORT", e.g. "127.0.0.1:9877" or "[::1]:9877", '
        'got "127.0.0.1"'
    )


def test_a_port_out_of_range_is_refused() -> None:
    assert error_of("[http]\nlisten = '127.0.0.1:70000'\n") == (
        f"{FILE}: http.listen: the port must be from 0 to 65535, got 70000"
    )


def test_an_ipv6_address_without_brackets_is_refused() -> None:
    assert error_of("[http]\nlisten = '::1:9877'\n") == (
        f'{FILE}: http.listen: put an IPv6 address in brackets, e.g. "[::1]:9877"'
    )


def test_a_listen_address_without_a_host_is_refused() -> None:
    assert error_of("[http]\nlisten = ':9877'\n") == (
        f'{FILE}: http.listen: the host is missing; e.g. "0.0.0.0:9877" listens on every interface'
    )


def test_tls_files_resolve_against_the_config_folder(tmp_path: Path) -> None:
    write(tmp_path, "cert.pem", "cert")
    write(tmp_path, "key.pem", "key")

    http = parse(
        "[http]\ntls_cert_file = 'cert.pem'\ntls_key_file = 'key.pem'\n", base_dir=tmp_path
    ).http

    assert (http.tls_cert_file, http.tls_key_file) == (tmp_path / "cert.pem", tmp_path / "key.pem")


def test_a_missing_tls_file_is_named(tmp_path: Path) -> None:
    assert error_of("[http]\ntls_cert_file = 'cert.pem'\n", base_dir=tmp_path) == (
        f"{FILE}: http.tls_cert_file: {tmp_path}/cert.pem does not exist; fix the path"
    )


def test_a_tls_key_needs_a_certificate(tmp_path: Path) -> None:
    write(tmp_path, "key.pem", "key")

    assert error_of("[http]\ntls_key_file = 'key.pem'\n", base_dir=tmp_path) == (
        f'{FILE}: http.tls_key_file: needs "tls_cert_file" too; HTTPS takes both'
    )


def test_a_client_ca_needs_a_certificate(tmp_path: Path) -> None:
    write(tmp_path, "ca.pem", "ca")

    assert error_of("[http]\ntls_client_ca_file = 'ca.pem'\n", base_dir=tmp_path) == (
        f'{FILE}: http.tls_client_ca_file: needs "tls_cert_file"; '
        "client certificates are only checked over HTTPS"
    )


def test_the_files_holding_secrets_are_listed_by_key(tmp_path: Path) -> None:
    for name in ("db-url", "cert.pem", "key.pem", "ca.pem", "hook.key", "slack-url"):
        write(tmp_path, name, "sqlite:///x.db" if name == "db-url" else SECRET_URL)

    settings = parse(
        "[database]\nurl_file = 'db-url'\n"
        "[http]\ntls_cert_file = 'cert.pem'\ntls_key_file = 'key.pem'\n"
        "tls_client_ca_file = 'ca.pem'\n"
        "[[alerts.webhooks]]\nurl = 'https://a.example.com/'\nsecret_file = 'hook.key'\n"
        "[[alerts.webhooks]]\nname = 'slack'\nformat = 'slack'\nurl_file = 'slack-url'\n",
        base_dir=tmp_path,
    )

    assert sorted(settings.secret_files) == [
        ("alerts.webhooks[0].secret_file", tmp_path / "hook.key"),
        ("alerts.webhooks[1].url_file", tmp_path / "slack-url"),
        ("database.url_file", tmp_path / "db-url"),
        ("http.tls_key_file", tmp_path / "key.pem"),
    ]


def test_a_certificate_file_without_a_key_file_is_listed_as_holding_the_key(
    tmp_path: Path,
) -> None:
    write(tmp_path, "cert.pem", "cert and key")

    settings = parse("[http]\ntls_cert_file = 'cert.pem'\n", base_dir=tmp_path)

    assert settings.secret_files == (("http.tls_cert_file", tmp_path / "cert.pem"),)


# --- [aws] ----------------------------------------------------------------------------------


def test_an_unknown_retry_mode_suggests_the_closest() -> None:
    assert error_of("[aws]\nretry_mode = 'standrd'\n") == (
        f'{FILE}: aws.retry_mode: unknown retry_mode "standrd"; did you mean "standard"?'
    )


def test_max_attempts_must_be_at_least_one() -> None:
    assert error_of("[aws]\nmax_attempts = 0\n") == (
        f"{FILE}: aws.max_attempts: must be 1 or more, got 0"
    )


def test_an_endpoint_url_must_be_http() -> None:
    assert error_of("[aws]\nendpoint_url = 'localhost:5000'\n") == (
        f"{FILE}: aws.endpoint_url: expected an http:// or https:// URL"
    )


# --- [[targets]] ----------------------------------------------------------------------------


def test_a_region_that_does_not_look_like_one_is_refused() -> None:
    assert error_of("[[targets]]\nregions = ['us-east-1', 'us-east1']\n") == (
        f'{FILE}: targets[0].regions[1]: "us-east1" is not an AWS region name like "us-east-1"'
    )


def test_target_names_must_be_unique() -> None:
    text = "[[targets]]\nname = 'prod'\n[[targets]]\n[[targets]]\nname = 'prod'\n"

    assert error_of(text) == (
        f'{FILE}: targets[2].name: "prod" is already the name of targets[0]; '
        "give each target its own name"
    )


def test_a_role_arn_must_look_like_an_iam_role() -> None:
    assert error_of("[[targets]]\nrole_arn = 'arn:aws:iam::2222:user/me'\n") == (
        f'{FILE}: targets[0].role_arn: "arn:aws:iam::2222:user/me" is not an IAM role ARN '
        'like "arn:aws:iam::123456789012:role/NAME"'
    )


def test_a_role_arn_in_another_partition_is_accepted() -> None:
    arn = "arn:aws-us-gov:iam::123456789012:role/path/Monitor"

    assert parse(f"[[targets]]\nrole_arn = '{arn}'\n").targets[0].role_arn == arn


def test_an_external_id_needs_a_role() -> None:
    assert error_of("[[targets]]\nexternal_id = 'shared-s3cret'\n") == (
        f'{FILE}: targets[0].external_id: only applies with "role_arn"; add role_arn or remove it'
    )


def test_a_profile_and_a_role_combine() -> None:
    text = "[[targets]]\nprofile = 'ops'\nrole_arn = 'arn:aws:iam::123456789012:role/M'\n"

    target = parse(text).targets[0]

    assert (target.profile, target.role_arn) == ("ops", "arn:aws:iam::123456789012:role/M")


def test_an_image_id_must_look_like_one() -> None:
    assert error_of("[[targets]]\nimage_ids = ['ami-12']\n") == (
        f'{FILE}: targets[0].image_ids[0]: "ami-12" is not an image id like "ami-0123456789abcdef0"'
    )


def test_an_unknown_filter_suggests_the_closest() -> None:
    assert error_of("[[targets]]\nfilters = { owner = ['123456789012'] }\n") == (
        f'{FILE}: targets[0].filters.owner: unknown filter "owner"; did you mean "owner-id"?'
    )


def test_a_state_filter_takes_only_known_states() -> None:
    assert error_of("[[targets]]\nfilters = { state = ['enabld'] }\n") == (
        f'{FILE}: targets[0].filters.state[0]: unknown fast launch state "enabld"; '
        'did you mean "enabled"?'
    )


def test_filters_keep_every_allowed_name() -> None:
    text = "[[targets]]\nfilters = { resource-type = ['snapshot'], owner-id = ['1'] }\n"

    assert parse(text).targets[0].filters == (
        ("resource-type", ("snapshot",)),
        ("owner-id", ("1",)),
    )


# --- [[alerts.webhooks]] --------------------------------------------------------------------


def test_a_webhook_needs_a_url() -> None:
    assert error_of("[[alerts.webhooks]]\nname = 'ops'\n") == (
        f'{FILE}: alerts.webhooks[0].url: missing; every webhook needs "url" '
        '(or "urls", or "url_file" for a secret URL)'
    )


def test_a_webhook_is_named_after_the_host_of_its_url() -> None:
    (webhook,) = parse(f"[[alerts.webhooks]]\nurl = '{SECRET_URL}'\nformat = 'slack'\n").webhooks

    assert webhook.name == "hooks.slack.com"
    assert webhook.states == FAILED_STATES
    assert webhook.send_resolved is True
    assert webhook.timeout == 10.0


def test_a_webhook_url_must_be_http_and_is_not_shown() -> None:
    line = error_of("[[alerts.webhooks]]\nurl = 'ftp://user:s3cr3tT0ken@example.com/x'\n")

    assert line == f"{FILE}: alerts.webhooks[0].url: expected an http:// or https:// URL"


def test_url_and_urls_are_exclusive() -> None:
    text = "[[alerts.webhooks]]\nurl = 'https://a.example'\nurls = ['https://b.example']\n"

    assert error_of(text) == (
        f'{FILE}: alerts.webhooks[0].urls: "url" and "urls" are exclusive; keep one'
    )


def test_alertmanager_takes_several_urls() -> None:
    text = """
[[alerts.webhooks]]
format = "alertmanager"
urls = ["http://am-0:9093", "http://am-1:9093"]
"""
    (webhook,) = parse(text).webhooks

    assert webhook.urls == ("http://am-0:9093", "http://am-1:9093")
    assert webhook.name == "am-0"


def test_only_alertmanager_takes_several_urls() -> None:
    text = "[[alerts.webhooks]]\nurls = ['https://a.example', 'https://b.example']\n"

    assert error_of(text) == (
        f'{FILE}: alerts.webhooks[0].urls: several URLs are for format "alertmanager" only; '
        'give one "url"'
    )


def test_a_repeated_secret_url_is_refused_without_showing_it() -> None:
    text = (
        f"[[alerts.webhooks]]\nformat = 'alertmanager'\nurls = ['{SECRET_URL}', '{SECRET_URL}']\n"
    )

    assert error_of(text) == (
        f"{FILE}: alerts.webhooks[0].urls[1]: this value is listed twice; remove the repeat"
    )


def test_an_unknown_format_suggests_the_closest() -> None:
    assert error_of("[[alerts.webhooks]]\nurl = 'https://a.example'\nformat = 'jsn'\n") == (
        f'{FILE}: alerts.webhooks[0].format: unknown format "jsn"; did you mean "json"?'
    )


def test_webhook_names_must_be_unique_even_when_taken_from_the_url() -> None:
    text = (
        "[[alerts.webhooks]]\nurl = 'https://hooks.example.com/a'\n"
        "[[alerts.webhooks]]\nurl = 'https://hooks.example.com/b'\n"
    )

    assert error_of(text) == (
        f'{FILE}: alerts.webhooks[1].name: "hooks.example.com" is already the name of '
        'alerts.webhooks[0]; give each webhook its own "name"'
    )


def test_pagerduty_needs_a_routing_key() -> None:
    text = "[[alerts.webhooks]]\nurl = 'https://events.pagerduty.com/v2/enqueue'\n"

    assert error_of(text + "format = 'pagerduty'\n") == (
        f'{FILE}: alerts.webhooks[0].secret_file: missing; format "pagerduty" needs '
        "secret_file holding the routing key"
    )


def test_a_secret_is_refused_where_the_format_has_no_use_for_it(tmp_path: Path) -> None:
    write(tmp_path, "key", "k")
    text = f"[[alerts.webhooks]]\nurl = '{SECRET_URL}'\nformat = 'slack'\nsecret_file = 'key'\n"

    assert error_of(text, base_dir=tmp_path) == (
        f'{FILE}: alerts.webhooks[0].secret_file: format "slack" uses no secret; remove secret_file'
    )


def test_a_standard_webhooks_secret_must_be_base64(tmp_path: Path) -> None:
    write(tmp_path, "key", "whsec_not base64!")
    text = "[[alerts.webhooks]]\nurl = 'https://a.example'\nsecret_file = 'key'\n"

    assert error_of(text, base_dir=tmp_path) == (
        f'{FILE}: alerts.webhooks[0].secret_file: the secret starts with "whsec_" but the rest '
        "is not base64; fix the file"
    )


def test_alert_states_must_be_known() -> None:
    text = "[[alerts.webhooks]]\nurl = 'https://a.example'\nstates = ['removed']\n"

    assert error_of(text) == (
        f'{FILE}: alerts.webhooks[0].states[0]: unknown fast launch state "removed"; '
        "expected one of: enabling, enabling-failed, enabled, enabled-failed, disabling, "
        "disabling-failed"
    )


def test_a_header_name_must_be_a_token() -> None:
    text = "[[alerts.webhooks]]\nurl = 'https://a.example'\nheaders = { 'X Team' = 'a' }\n"

    assert error_of(text) == (
        f'{FILE}: alerts.webhooks[0].headers."X Team": "X Team" is not a valid HTTP header name'
    )


def test_a_header_value_cannot_break_the_line_and_is_not_shown() -> None:
    text = (
        "[[alerts.webhooks]]\nurl = 'https://a.example'\n"
        'headers = { Authorization = "Bearer s3cr3t\\r\\nX-Evil: 1" }\n'
    )

    assert error_of(text) == (
        f"{FILE}: alerts.webhooks[0].headers.Authorization: "
        "a header value must not contain line breaks"
    )


# --- *_file secrets -------------------------------------------------------------------------


def test_a_secret_file_is_read_and_stripped(tmp_path: Path) -> None:
    write(tmp_path, "routing.key", "  R0UT1NG  \n")
    text = (
        "[[alerts.webhooks]]\nurl = 'https://events.pagerduty.com/v2/enqueue'\n"
        "format = 'pagerduty'\nsecret_file = 'routing.key'\n"
    )

    assert parse(text, base_dir=tmp_path).webhooks[0].secret == "R0UT1NG"


def test_relative_secret_files_resolve_against_the_credentials_directory(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    write(credentials, "webhook-url", SECRET_URL + "\n")
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    text = "[[alerts.webhooks]]\nurl_file = 'webhook-url'\nformat = 'slack'\n"

    (webhook,) = parse(text, env=env, base_dir=tmp_path / "elsewhere").webhooks

    assert webhook.urls == (SECRET_URL,)
    assert webhook.name == "hooks.slack.com"


def test_an_absolute_secret_file_ignores_the_credentials_directory(tmp_path: Path) -> None:
    key = write(tmp_path, "key", "k")
    text = f"[[alerts.webhooks]]\nurl = 'https://a.example'\nsecret_file = '{key}'\n"

    webhook = parse(text, env={"CREDENTIALS_DIRECTORY": "/nonexistent"}).webhooks[0]

    assert webhook.secret == "k"


def test_a_missing_secret_file_is_named(tmp_path: Path) -> None:
    text = "[[alerts.webhooks]]\nurl = 'https://a.example'\nsecret_file = 'nope.key'\n"

    assert error_of(text, base_dir=tmp_path) == (
        f"{FILE}: alerts.webhooks[0].secret_file: cannot read {tmp_path}/nope.key: "
        "No such file or directory"
    )


def test_an_unreadable_secret_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    text = "[[alerts.webhooks]]\nurl = 'https://a.example'\nsecret_file = 'folder'\n"

    assert error_of(text, base_dir=tmp_path) == (
        f"{FILE}: alerts.webhooks[0].secret_file: cannot read {tmp_path}/folder: Is a directory"
    )


def test_an_empty_secret_file_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "db-url", " \n")

    assert error_of("[database]\nurl_file = 'db-url'\n", base_dir=tmp_path) == (
        f"{FILE}: database.url_file: {tmp_path}/db-url is empty; put the secret in it"
    )


def test_a_bad_url_in_a_url_file_is_refused_without_showing_it(tmp_path: Path) -> None:
    write(tmp_path, "webhook-url", "hooks.slack.com/services/s3cr3tT0ken\n")
    text = "[[alerts.webhooks]]\nurl_file = 'webhook-url'\n"

    assert error_of(text, base_dir=tmp_path) == (
        f"{FILE}: alerts.webhooks[0].url_file: line 1 of the file: "
        "expected an http:// or https:// URL"
    )


def test_a_bad_database_url_in_a_file_is_refused_without_showing_it(tmp_path: Path) -> None:
    write(tmp_path, "db-url", "mysql://u:hunter2@h/db")

    line = error_of("[database]\nurl_file = 'db-url'\n", base_dir=tmp_path)

    assert line.startswith(f'{FILE}: database.url_file: unsupported database scheme "mysql"')
    assert "hunter2" not in line


# --- secrets never shown --------------------------------------------------------------------


def test_secrets_stay_out_of_the_settings_repr(tmp_path: Path) -> None:
    write(tmp_path, "key", "whsec_c2VjcmV0LWtleQ==")
    text = f"""
[database]
url = "postgresql://monitor:hunter2@db/fl"

[[targets]]
role_arn = "arn:aws:iam::123456789012:role/M"
external_id = "ext-s3cr3t"

[[alerts.webhooks]]
url = "{SECRET_URL}"
secret_file = "key"
headers = {{ Authorization = "Bearer t0ken" }}
"""
    shown = repr(parse(text, base_dir=tmp_path))

    for secret in ("hunter2", "ext-s3cr3t", "s3cr3tT0ken", "c2VjcmV0LWtleQ", "t0ken"):
        assert secret not in shown


def test_a_misspelt_secret_key_does_not_show_its_value() -> None:
    line = error_of("[database]\nulr = 'postgresql://u:hunter2@h/db'\n")

    assert line == f'{FILE}: database.ulr: unknown key "ulr"; did you mean "url"?'


def test_a_wrong_type_for_a_secret_does_not_show_it() -> None:
    line = error_of("[[alerts.webhooks]]\nurls = 'https://x.example/s3cr3tT0ken'\n")

    assert line == f"{FILE}: alerts.webhooks[0].urls: expected an array of strings, got a string"


# --- finding and reading the file -----------------------------------------------------------


def test_the_command_line_config_wins(tmp_path: Path) -> None:
    env = {"FASTLAUNCH_MONITOR_CONFIG": "/from/env.toml"}

    assert config_path("/from/cli.toml", env, default=tmp_path) == Path("/from/cli.toml")


def test_the_environment_names_the_config_when_the_command_line_does_not(tmp_path: Path) -> None:
    env = {"FASTLAUNCH_MONITOR_CONFIG": "/from/env.toml"}

    assert config_path(None, env, default=tmp_path) == Path("/from/env.toml")


def test_the_default_config_is_used_when_it_exists(tmp_path: Path) -> None:
    default = write(tmp_path, "config.toml", "")

    assert config_path(None, {}, default=default) == default


def test_without_any_config_the_built_in_defaults_apply(tmp_path: Path) -> None:
    assert config_path(None, {}, default=tmp_path / "config.toml") is None


def test_loading_no_file_gives_the_built_in_defaults(tmp_path: Path) -> None:
    settings = load_settings(None, {"STATE_DIRECTORY": str(tmp_path)})

    assert settings.source == BUILT_IN_SOURCE
    assert settings.database.url == f"sqlite:///{tmp_path}/history.sqlite3"


def test_a_loaded_file_resolves_secrets_next_to_it(tmp_path: Path) -> None:
    write(tmp_path, "webhook.key", "k")
    config = write(
        tmp_path,
        "config.toml",
        "[[alerts.webhooks]]\nurl = 'https://a.example'\nsecret_file = 'webhook.key'\n",
    )

    settings = load_settings(config, {})

    assert settings.source == str(config)
    assert settings.webhooks[0].secret == "k"


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "config.toml"

    with pytest.raises(ConfigError) as caught:
        load_settings(missing, {})

    assert str(caught.value) == f"{missing}: cannot read the config file: No such file or directory"


def test_a_config_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes(b"[monitor]\ninterval = '\xff'\n")

    with pytest.raises(ConfigError) as caught:
        load_settings(config, {})

    assert str(caught.value) == f"{config}: the config file is not UTF-8 text"


def test_errors_carry_file_and_key_apart() -> None:
    with pytest.raises(ConfigError) as caught:
        parse("[monitor]\ninterval = 'soon'\n")

    assert (caught.value.file, caught.value.key) == (FILE, "monitor.interval")
