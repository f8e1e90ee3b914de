"""The configuration: one frozen, validated `Settings` built from the TOML file and the environment.

`parse_settings` is pure apart from reading the `*_file` secrets it names; every problem is a
`ConfigError` naming the file, the dotted key (`targets[1].regions[0]`) and the fix. Unknown keys
are errors so a typo is never silently ignored. Secret values (URLs, keys, passwords, headers)
never appear in messages or reprs.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import json
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from monitor.config.proxies import (
    environment_proxies,
    environment_proxy_for,
    from_environment,
    proxy_problem,
)
from monitor.core.durations import parse_duration
from monitor.core.errors import ConfigError
from monitor.core.logs import LEVELS
from monitor.core.model import FAILED_STATES, KNOWN_STATES

CONFIG_ENV: Final = "FASTLAUNCH_MONITOR_CONFIG"
DATABASE_URL_ENV: Final = "FASTLAUNCH_MONITOR_DATABASE_URL"
DEFAULT_CONFIG_PATH: Final = Path("/etc/fastlaunch-monitor/config.toml")
BUILT_IN_SOURCE: Final = "built-in defaults"

RETRY_MODES: Final = ("legacy", "standard", "adaptive")
WEBHOOK_FORMATS: Final = ("json", "alertmanager", "slack", "pagerduty")
FILTER_NAMES: Final = ("state", "owner-id", "resource-type")

_WEBHOOK_FORMAT: Final = "json"
_WEBHOOK_TIMEOUT: Final = 10.0

# Longer durations are surely typos, and would overflow `timedelta` further down.
_MAX_DURATION: Final = 365 * 86400.0
# Retention is measured in years by some; ten is still a typo.
_MAX_RETENTION: Final = 10 * 365 * 86400.0

_ROOT_KEYS = ("monitor", "database", "http", "aws", "targets", "alerts")
_MONITOR_KEYS = (
    "interval",
    "jitter",
    "max_concurrency",
    "poll_processes",
    "poll_timeout",
    "max_pages",
    "stuck_after",
    "log_level",
)
_DATABASE_KEYS = ("url", "url_file", "poll_retention", "alert_retention", "history_retention")
_HTTP_KEYS = ("listen", "tls_cert_file", "tls_key_file", "tls_client_ca_file")
_AWS_KEYS = ("retry_mode", "max_attempts", "connect_timeout", "read_timeout", "endpoint_url")
_TARGET_KEYS = ("name", "regions", "role_arn", "external_id", "profile", "image_ids", "filters")
_ALERTS_KEYS = ("webhooks",)
_WEBHOOK_KEYS = (
    "name",
    "url",
    "urls",
    "url_file",
    "format",
    "secret_file",
    "headers",
    "states",
    "send_resolved",
    "ca_file",
    "timeout",
    "proxy",
)

_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+")
_IMAGE_ID = re.compile(r"ami-[0-9a-f]{8}(?:[0-9a-f]{9})?")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOML_POSITION = re.compile(
    r"(?P<message>.*) \(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)"
)

_SQLITE_DRIVERS = ("sqlite", "sqlite+pysqlite")
_POSTGRES_DRIVER = "postgresql+psycopg"
_POSTGRES_ALIASES = ("postgresql", "postgres")
_DATABASE_URL_HINT = 'use "sqlite:///PATH" or "postgresql+psycopg://USER@HOST/DATABASE"'


@dataclass(frozen=True, slots=True)
class MonitorSettings:
    """`[monitor]`: durations in seconds; `stuck_after == 0` disables stuck alerts.

    `log_level` (upper case) applies unless `--log-level` is given; `None`: INFO.
    `poll_processes`: how many processes make the AWS requests (`monitor.poll_processes`);
    0, the default, makes them in the daemon's own. A poll that takes longer than
    `poll_timeout` (`None`: the interval) or more than `max_pages` pages fails.
    """

    interval: float = 300.0
    jitter: float = 10.0
    max_concurrency: int = 16
    poll_processes: int = 0
    poll_timeout: float | None = None
    max_pages: int = 1000
    stuck_after: float = 7200.0
    log_level: str | None = None

    @property
    def poll_deadline(self) -> float:
        """The seconds one poll may take: `poll_timeout`, else the interval."""
        return self.interval if self.poll_timeout is None else self.poll_timeout


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """`[database]`: a SQLAlchemy URL whose driver is `sqlite` or `postgresql+psycopg`.

    `origin` is where the URL came from, the file (or variable) and the key, for the errors
    found when it is used (`error`).
    """

    url: str = field(repr=False)
    origin: tuple[str, str | None] = field(default=(BUILT_IN_SOURCE, "database.url"), compare=False)
    #: How long poll rows, ended alerts and transitions are kept, in seconds (0: for ever).
    poll_retention: float = 30 * 86400.0
    alert_retention: float = 90 * 86400.0
    history_retention: float = 0.0

    def error(self, message: str) -> ConfigError:
        """A `ConfigError` about the URL, naming where it came from."""
        return ConfigError(*self.origin, message)

    @property
    def safe_url(self) -> str:
        """The URL with its password (also a `password=` query parameter) masked, for logs."""
        from sqlalchemy.engine import make_url  # imported here: see _database_url

        url = make_url(self.url)
        if "password" in url.query:
            url = url.update_query_dict({"password": "***"})
        return url.render_as_string(hide_password=True)


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """`[http]`: where `/metrics`, `/healthz` and `/readyz` listen; TLS when a cert is given."""

    host: str = "127.0.0.1"
    port: int = 9877
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class AwsSettings:
    """`[aws]`: the botocore client configuration; timeouts in seconds."""

    retry_mode: str = "standard"
    max_attempts: int = 5
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    endpoint_url: str | None = None


@dataclass(frozen=True, slots=True)
class TargetSettings:
    """One `[[targets]]` entry: whose images to poll, and where.

    `name` `None` means "label it with the account id"; empty `regions` means the session's
    default region. `filters` are (filter name, values) pairs as `DescribeFastLaunchImages`
    takes them.
    """

    name: str | None = None
    regions: tuple[str, ...] = ()
    role_arn: str | None = None
    external_id: str | None = field(default=None, repr=False)
    profile: str | None = None
    image_ids: tuple[str, ...] = ()
    filters: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """One `[[alerts.webhooks]]` entry; `urls` has several entries only for `alertmanager`.

    `secret` is the stripped content of `secret_file`: the HMAC key for `json`, the routing key
    for `pagerduty`. `proxies[i]` is the HTTP proxy `urls[i]` goes through (an `http://` URL,
    perhaps with credentials), `None` when it goes direct; all go direct when it is empty.
    """

    name: str
    urls: tuple[str, ...] = field(repr=False)
    format: str = _WEBHOOK_FORMAT
    secret: str | None = field(default=None, repr=False)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    states: frozenset[str] = FAILED_STATES
    send_resolved: bool = True
    ca_file: Path | None = None
    timeout: float = _WEBHOOK_TIMEOUT
    proxies: tuple[str | None, ...] = field(default=(), repr=False)


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole validated configuration; `source` is the config file, or "built-in defaults".

    `secret_files` are the files read for secrets (and the TLS key), each with its dotted key.
    """

    source: str
    monitor: MonitorSettings
    database: DatabaseSettings
    http: HttpSettings
    aws: AwsSettings
    targets: tuple[TargetSettings, ...]
    webhooks: tuple[WebhookSettings, ...]
    secret_files: tuple[tuple[str, Path], ...] = ()


def config_path(
    cli_path: str | None, env: Mapping[str, str], *, default: Path = DEFAULT_CONFIG_PATH
) -> Path | None:
    """The config file to read: `--config`, else `$FASTLAUNCH_MONITOR_CONFIG`, else `default`
    if it exists, else `None` (built-in defaults)."""
    if cli_path:
        return Path(cli_path)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return default if default.exists() else None


def load_settings(path: Path | None, env: Mapping[str, str]) -> Settings:
    """Read and validate the config file at `path` (built-in defaults when `None`).

    Raises `ConfigError` naming the file when it cannot be read or is invalid.
    """
    if path is None:
        return parse_settings(None, source=BUILT_IN_SOURCE, env=env, base_dir=Path.cwd())
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(str(path), None, f"cannot read the config file: {reason}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), None, "the config file is not UTF-8 text") from None
    return parse_settings(text, source=str(path), env=env, base_dir=path.absolute().parent)


def parse_settings(
    text: str | None, *, source: str, env: Mapping[str, str], base_dir: Path
) -> Settings:
    """Build the validated `Settings` from the TOML `text` (`None`: no file) and `env`.

    `source` names the file in errors; relative `*_file` paths resolve against
    `$CREDENTIALS_DIRECTORY` when set, else `base_dir` (the config file's folder).
    `$FASTLAUNCH_MONITOR_DATABASE_URL`, when set and not empty, overrides `[database]`.
    """
    try:
        document = tomllib.loads(text or "")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, None, _toml_message(exc)) from None
    context = _Context(source, env, base_dir)
    root = _Table(context, document, "", _ROOT_KEYS)
    alerts = root.table("alerts", _ALERTS_KEYS)
    return Settings(
        source=source,
        monitor=_monitor(root.table("monitor", _MONITOR_KEYS)),
        database=_database(root.table("database", _DATABASE_KEYS)),
        http=_http(root.table("http", _HTTP_KEYS)),
        aws=_aws(root.table("aws", _AWS_KEYS)),
        targets=_targets(root),
        webhooks=_webhooks(alerts),
        secret_files=tuple(context.secret_files),
    )


@dataclass(frozen=True, slots=True)
class _Context:
    """What every table reader needs: the file to name in errors, the environment, the folder."""

    file: str
    env: Mapping[str, str]
    base_dir: Path
    # Filled as the secrets are read: (dotted key, path).
    secret_files: list[tuple[str, Path]] = field(default_factory=list)

    def resolve(self, name: str) -> Path:
        path = Path(name)
        if path.is_absolute():
            return path
        # systemd's LoadCredential= puts secrets there and tells us where in this variable.
        credentials = self.env.get("CREDENTIALS_DIRECTORY")
        return (Path(credentials) if credentials else self.base_dir) / path


class _Table:
    """One TOML table being read: knows its dotted path and refuses keys it does not know.

    `keys=None` allows any key (tables of free names such as `headers`). Accessors return `None`
    or the given default for a missing key, and raise `ConfigError` on a wrong type or value.
    """

    __slots__ = ("_ctx", "_data", "path")

    def __init__(
        self,
        ctx: _Context,
        data: Mapping[str, object],
        path: str,
        keys: tuple[str, ...] | None,
        *,
        noun: str = "key",
    ) -> None:
        self._ctx = ctx
        self._data = data
        self.path = path
        if keys is not None:
            for key in data:
                if key not in keys:
                    raise self.error(key, _unknown(noun, key, keys))

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def key(self, key: str) -> str:
        """The dotted path of `key` in this table, as errors name it."""
        part = key if _BARE_KEY.fullmatch(key) else json.dumps(key)
        return f"{self.path}.{part}" if self.path else part

    def error(self, key: str | None, message: str) -> ConfigError:
        """A `ConfigError` about `key` of this table (the table itself when `None`)."""
        return ConfigError(self._ctx.file, self.key(key) if key else self.path or None, message)

    def resolve(self, name: str) -> Path:
        return self._ctx.resolve(name)

    @property
    def file(self) -> str:
        """The config file (as errors name it)."""
        return self._ctx.file

    @property
    def env(self) -> Mapping[str, str]:
        return self._ctx.env

    def _get(self, key: str, expected: tuple[type, ...], noun: str) -> object | None:
        value = self._data.get(key)
        # bool is an int in Python but never in TOML, so it must not pass for one.
        if value is None or (isinstance(value, expected) and not _wrong_bool(value, expected)):
            return value
        raise self.error(key, f"expected {noun}, got {_type_name(value)}")

    def string(
        self,
        key: str,
        *,
        check: Callable[[str], str | None] | None = None,
        allow_empty: bool = False,
    ) -> str | None:
        """A string; `check` returns an error message for a bad value, or `None`."""
        value = self._get(key, (str,), "a string")
        if value is None:
            return None
        assert isinstance(value, str)
        if not value and not allow_empty:
            raise self.error(key, "must not be empty; give a value or leave the key out")
        problem = check(value) if check else None
        if problem:
            raise self.error(key, problem)
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        """A string that must be one of `choices`."""
        value = self.string(key)
        if value is None:
            return default
        if value not in choices:
            raise self.error(key, _unknown(key, value, choices))
        return value

    def integer(self, key: str, default: int, *, minimum: int) -> int:
        """An integer of at least `minimum`."""
        value = self._get(key, (int,), "an integer")
        if value is None:
            return default
        assert isinstance(value, int)
        if value < minimum:
            raise self.error(key, f"must be {minimum} or more, got {value}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        """`true` or `false`."""
        value = self._get(key, (bool,), "true or false")
        return default if value is None else bool(value)

    def duration(
        self, key: str, default: float, *, allow_zero: bool = True, maximum: float | None = None
    ) -> float:
        """A duration in seconds, from `"1h30m"`-like strings or integer seconds."""
        noun = 'a duration like "90s", "5m" or "1h30m"'
        value = self._get(key, (str, int), noun)
        if value is None:
            return default
        assert isinstance(value, str | int)
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None
        if seconds == 0 and not allow_zero:
            raise self.error(key, 'must be longer than zero, e.g. "5m"')
        if seconds > (maximum or _MAX_DURATION):
            days = int((maximum or _MAX_DURATION) // 86400)
            raise self.error(key, f'must be at most {days} days ("{days}d")')
        return seconds

    def strings(
        self,
        key: str,
        *,
        check: Callable[[str], str | None] | None = None,
        secret: bool = False,
    ) -> tuple[str, ...] | None:
        """A non-empty array of distinct non-empty strings; `check` as for `string`."""
        value = self._get(key, (list,), "an array of strings")
        if value is None:
            return None
        assert isinstance(value, list)
        if not value:
            raise self.error(key, "must not be empty; list at least one or leave the key out")
        items: list[str] = []
        for index, item in enumerate(value):
            problem = None
            if not isinstance(item, str):
                problem = f"expected a string, got {_type_name(item)}"
            elif not item:
                problem = "must not be empty"
            elif check:
                problem = check(item)
            if problem is None and item in items:
                shown = "this value" if secret else json.dumps(item)
                problem = f"{shown} is listed twice; remove the repeat"
            if problem:
                raise ConfigError(self._ctx.file, f"{self.key(key)}[{index}]", problem)
            assert isinstance(item, str)
            items.append(item)
        return tuple(items)

    def table(self, key: str, keys: tuple[str, ...] | None, *, noun: str = "key") -> _Table:
        """A sub-table (an empty one when missing)."""
        value = self._get(key, (dict,), "a table")
        data: Mapping[str, object] = value if isinstance(value, dict) else {}
        return _Table(self._ctx, data, self.key(key), keys, noun=noun)

    def tables(self, key: str, keys: tuple[str, ...]) -> list[_Table] | None:
        """An array of tables (`[[key]]`), `None` when missing."""
        value = self._get(key, (list,), f"an array of tables ([[{self.key(key)}]])")
        if value is None:
            return None
        assert isinstance(value, list)
        if not value:
            raise self.error(key, "must not be empty; add an entry or leave the key out")
        tables: list[_Table] = []
        for index, item in enumerate(value):
            item_key = f"{self.key(key)}[{index}]"
            if not isinstance(item, dict):
                message = f"expected a table, got {_type_name(item)}"
                raise ConfigError(self._ctx.file, item_key, message)
            tables.append(_Table(self._ctx, item, item_key, keys))
        return tables

    def existing_file(self, key: str, *, secret: bool = False) -> Path | None:
        """The resolved path of an existing file the monitor hands on (certificates, CAs).

        `secret`: the file holds a secret (a private key); it is listed in `secret_files`.
        """
        name = self.string(key)
        if name is None:
            return None
        path = self.resolve(name)
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            raise self.error(key, f"{path} {what}; fix the path")
        if secret:
            self.note_secret_file(key, path)
        return path

    def note_secret_file(self, key: str, path: Path) -> None:
        """List `path`, named by `key`, in the settings' `secret_files`."""
        self._ctx.secret_files.append((self.key(key), path))

    def secret(self, key: str) -> str | None:
        """The stripped content of the file named by `key`; the content is never shown."""
        name = self.string(key)
        if name is None:
            return None
        path = self.resolve(name)
        self.note_secret_file(key, path)
        try:
            content = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise self.error(key, f"cannot read {path}: {reason}") from None
        except UnicodeDecodeError:
            raise self.error(key, f"{path} is not UTF-8 text") from None
        if not content:
            raise self.error(key, f"{path} is empty; put the secret in it")
        return content


def _monitor(table: _Table) -> MonitorSettings:
    default = MonitorSettings()
    return MonitorSettings(
        interval=table.duration("interval", default.interval, allow_zero=False),
        jitter=table.duration("jitter", default.jitter),
        max_concurrency=table.integer("max_concurrency", default.max_concurrency, minimum=1),
        poll_processes=table.integer("poll_processes", default.poll_processes, minimum=0),
        poll_timeout=_optional_duration(table, "poll_timeout"),
        max_pages=table.integer("max_pages", default.max_pages, minimum=1),
        stuck_after=table.duration("stuck_after", default.stuck_after),
        log_level=_log_level(table),
    )


def _optional_duration(table: _Table, key: str) -> float | None:
    """A duration longer than zero, or `None` when the key is left out."""
    seconds = table.duration(key, -1.0, allow_zero=False)
    return None if seconds < 0 else seconds


def _log_level(table: _Table) -> str | None:
    """`log_level`, in any case, as the upper-case name `logging` knows."""
    level = table.string("log_level")
    if level is None:
        return None
    known = tuple(name.lower() for name in LEVELS)
    if level.lower() not in known:
        raise table.error("log_level", _unknown("log level", level, known))
    return level.upper()


def _database(table: _Table) -> DatabaseSettings:
    default = DatabaseSettings("")
    url, origin = _database_location(table)
    return DatabaseSettings(
        url,
        origin,
        poll_retention=_retention(table, "poll_retention", default.poll_retention),
        alert_retention=_retention(table, "alert_retention", default.alert_retention),
        history_retention=_retention(table, "history_retention", default.history_retention),
    )


def _retention(table: _Table, key: str, default: float) -> float:
    """A retention in seconds; `"0"` keeps for ever."""
    return table.duration(key, default, maximum=_MAX_RETENTION)


def _database_location(table: _Table) -> tuple[str, tuple[str, str | None]]:
    """The database URL and where it came from."""
    url = table.string("url")
    url_file = table.string("url_file")
    if url is not None and url_file is not None:
        raise table.error("url_file", '"url" and "url_file" are exclusive; keep one of them')
    from_env = table.env.get(DATABASE_URL_ENV)
    if from_env:
        return _database_url(from_env, _env_error), (f"${DATABASE_URL_ENV}", None)
    if url is not None:
        return (
            _database_url(url, lambda message: table.error("url", message)),
            (table.file, table.key("url")),
        )
    secret = table.secret("url_file")
    if secret is not None:
        return (
            _database_url(secret, lambda message: table.error("url_file", message)),
            (table.file, table.key("url_file")),
        )
    return _default_database_url(table.env), (table.file, table.key("url"))


def _env_error(message: str) -> ConfigError:
    return ConfigError(f"${DATABASE_URL_ENV}", None, message)


def _database_url(raw: str, error: Callable[[str], ConfigError]) -> str:
    """Check a database URL and give it the psycopg 3 driver; the URL itself is never shown."""
    # Imported here: a poll process reads these settings, but has no database, and SQLAlchemy
    # would cost it 14 MB.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    raw = raw.strip()
    try:
        parsed = make_url(raw)
    except (ArgumentError, ValueError):
        raise error(f"not a database URL; {_DATABASE_URL_HINT}") from None
    driver = parsed.drivername
    if driver in _POSTGRES_ALIASES:
        return _POSTGRES_DRIVER + raw[raw.index("://") :]
    if driver == _POSTGRES_DRIVER:
        return raw
    if driver in _SQLITE_DRIVERS:
        if parsed.host:
            raise error(
                'a SQLite URL has no host; write "sqlite:///relative.db" or "sqlite:////abs.db"'
            )
        return raw
    if driver.startswith(("postgresql+", "postgres+")):
        raise error(
            f'unsupported driver "{driver}"; the monitor uses psycopg 3: "{_POSTGRES_DRIVER}://..."'
        )
    raise error(f'unsupported database scheme "{driver}"; {_DATABASE_URL_HINT}')


def _default_database_url(env: Mapping[str, str]) -> str:
    # systemd may give several state directories, separated by ":"; ours is the first.
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    folder = Path(state).absolute() if state else Path.cwd()
    return f"sqlite:///{folder / 'history.sqlite3'}"


def _http(table: _Table) -> HttpSettings:
    default = HttpSettings()
    listen = table.string("listen")
    try:
        host, port = _parse_listen(listen) if listen is not None else (default.host, default.port)
    except ValueError as exc:
        raise table.error("listen", str(exc)) from None
    cert = table.existing_file("tls_cert_file")
    key = table.existing_file("tls_key_file", secret=True)
    if cert is not None and key is None:
        # Without a key file, the certificate's file holds the key too.
        table.note_secret_file("tls_cert_file", cert)
    client_ca = table.existing_file("tls_client_ca_file")
    if key is not None and cert is None:
        raise table.error("tls_key_file", 'needs "tls_cert_file" too; HTTPS takes both')
    if client_ca is not None and cert is None:
        message = 'needs "tls_cert_file"; client certificates are only checked over HTTPS'
        raise table.error("tls_client_ca_file", message)
    return HttpSettings(host, port, cert, key, client_ca)


def _parse_listen(listen: str) -> tuple[str, int]:
    """`"host:port"` or `"[v6 address]:port"` → (host without brackets, port)."""
    host, colon, port = listen.rpartition(":")
    if not colon or not port.isascii() or not port.isdecimal():
        example = '"127.0.0.1:9877" or "[::1]:9877"'
        raise ValueError(f'expected "HOST:PORT", e.g. {example}, got {json.dumps(listen)}')
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"the port must be from 0 to 65535, got {port}")
    if not host:
        raise ValueError(f'the host is missing; e.g. "0.0.0.0:{port}" listens on every interface')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{json.dumps(host)} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f'put an IPv6 address in brackets, e.g. "[::1]:{port}"')
    elif any(c.isspace() or c in "[]/" for c in host):
        raise ValueError(f"{json.dumps(host)} is not a host name or address")
    return host, int(port)


def _aws(table: _Table) -> AwsSettings:
    default = AwsSettings()
    return AwsSettings(
        retry_mode=table.choice("retry_mode", RETRY_MODES, default.retry_mode),
        max_attempts=table.integer("max_attempts", default.max_attempts, minimum=1),
        connect_timeout=table.duration(
            "connect_timeout", default.connect_timeout, allow_zero=False
        ),
        read_timeout=table.duration("read_timeout", default.read_timeout, allow_zero=False),
        endpoint_url=table.string("endpoint_url", check=_check_http_url),
    )


def _targets(root: _Table) -> tuple[TargetSettings, ...]:
    tables = root.tables("targets", _TARGET_KEYS)
    if tables is None:
        return (TargetSettings(),)
    targets: list[TargetSettings] = []
    named: dict[str, str] = {}
    for table in tables:
        target = _target(table)
        if target.name is not None:
            if target.name in named:
                message = (
                    f"{json.dumps(target.name)} is already the name of {named[target.name]}; "
                    "give each target its own name"
                )
                raise table.error("name", message)
            named[target.name] = table.path
        targets.append(target)
    return tuple(targets)


def _target(table: _Table) -> TargetSettings:
    role_arn = table.string("role_arn", check=_check_role_arn)
    external_id = table.string("external_id")
    if external_id is not None and role_arn is None:
        raise table.error("external_id", 'only applies with "role_arn"; add role_arn or remove it')
    return TargetSettings(
        name=table.string("name"),
        regions=table.strings("regions", check=_check_region) or (),
        role_arn=role_arn,
        external_id=external_id,
        profile=table.string("profile"),
        image_ids=table.strings("image_ids", check=_check_image_id) or (),
        filters=_filters(table.table("filters", FILTER_NAMES, noun="filter")),
    )


def _filters(table: _Table) -> tuple[tuple[str, tuple[str, ...]], ...]:
    filters: list[tuple[str, tuple[str, ...]]] = []
    for name in table:
        values = table.strings(name, check=_check_state if name == "state" else None)
        assert values is not None
        filters.append((name, values))
    return tuple(filters)


def _webhooks(alerts: _Table) -> tuple[WebhookSettings, ...]:
    webhooks: list[WebhookSettings] = []
    named: dict[str, str] = {}
    for table in alerts.tables("webhooks", _WEBHOOK_KEYS) or ():
        webhook = _webhook(table)
        if webhook.name in named:
            message = (
                f"{json.dumps(webhook.name)} is already the name of {named[webhook.name]}; "
                'give each webhook its own "name"'
            )
            raise table.error("name", message)
        named[webhook.name] = table.path
        webhooks.append(webhook)
    return tuple(webhooks)


def _webhook(table: _Table) -> WebhookSettings:
    format_ = table.choice("format", WEBHOOK_FORMATS, _WEBHOOK_FORMAT)
    urls_key, urls = _webhook_urls(table)
    if len(urls) > 1 and format_ != "alertmanager":
        message = 'several URLs are for format "alertmanager" only; give one "url"'
        raise table.error(urls_key, message)
    secret = table.secret("secret_file")
    if format_ == "pagerduty" and secret is None:
        message = 'missing; format "pagerduty" needs secret_file holding the routing key'
        raise table.error("secret_file", message)
    if format_ in ("alertmanager", "slack") and secret is not None:
        raise table.error("secret_file", f'format "{format_}" uses no secret; remove secret_file')
    if format_ == "json" and secret is not None and not _valid_whsec(secret):
        message = 'the secret starts with "whsec_" but the rest is not base64; fix the file'
        raise table.error("secret_file", message)
    states = table.strings("states", check=_check_state)
    return WebhookSettings(
        name=table.string("name") or urlsplit(urls[0]).hostname or "webhook",
        urls=urls,
        format=format_,
        secret=secret,
        headers=_headers(table.table("headers", None)),
        states=frozenset(states) if states is not None else FAILED_STATES,
        send_resolved=table.boolean("send_resolved", True),
        ca_file=table.existing_file("ca_file"),
        timeout=table.duration("timeout", _WEBHOOK_TIMEOUT, allow_zero=False),
        proxies=_webhook_proxies(table, urls),
    )


def _webhook_urls(table: _Table) -> tuple[str, tuple[str, ...]]:
    """The webhook's URLs and the key they came from: exactly one of url, urls, url_file."""
    url = table.string("url", check=_check_http_url)
    urls = table.strings("urls", check=_check_http_url, secret=True)
    has_file = table.string("url_file") is not None
    given = [key for key, value in (("url", url), ("urls", urls), ("url_file", has_file)) if value]
    if not given:
        message = 'missing; every webhook needs "url" (or "urls", or "url_file" for a secret URL)'
        raise table.error("url", message)
    if len(given) > 1:
        raise table.error(given[1], f'"{given[0]}" and "{given[1]}" are exclusive; keep one')
    if url is not None:
        return "url", (url,)
    if urls is not None:
        return "urls", urls
    content = table.secret("url_file")
    assert content is not None
    lines = tuple(line.strip() for line in content.splitlines() if line.strip())
    for number, line in enumerate(lines, start=1):
        problem = _check_http_url(line)
        if problem:
            raise table.error("url_file", f"line {number} of the file: {problem}")
    return "url_file", lines


def _webhook_proxies(table: _Table, urls: tuple[str, ...]) -> tuple[str | None, ...]:
    """The proxy of each URL: the `proxy` key for all ("" for none), else the environment's."""
    proxy = table.string("proxy", allow_empty=True)
    if proxy == "":
        return tuple(None for _ in urls)
    if proxy is not None:
        problem = proxy_problem(proxy)
        if problem:
            raise table.error("proxy", problem)
        return tuple(proxy for _ in urls)
    environment = environment_proxies(table.env)
    proxies: list[str | None] = []
    for url in urls:
        chosen = environment_proxy_for(url, environment)
        if chosen is None:
            proxies.append(None)
            continue
        value = from_environment(chosen.value)
        problem = proxy_problem(value)
        if problem:
            fix = f'fix it, or set "proxy" in {table.path} ("" to go direct)'
            raise ConfigError(f"${chosen.variable}", None, f"{problem}; {fix}")
        proxies.append(value)
    return tuple(proxies)


def _headers(table: _Table) -> tuple[tuple[str, str], ...]:
    headers: list[tuple[str, str]] = []
    for name in table:
        if not _HEADER_NAME.fullmatch(name):
            raise table.error(name, f"{json.dumps(name)} is not a valid HTTP header name")
        value = table.string(name, allow_empty=True)
        assert value is not None
        if any(c in value for c in "\r\n\0"):
            raise table.error(name, "a header value must not contain line breaks")
        headers.append((name, value))
    return tuple(headers)


def _valid_whsec(secret: str) -> bool:
    if not secret.startswith("whsec_"):
        return True
    try:
        base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        return False
    return True


def _check_http_url(url: str) -> str | None:
    # Webhook URLs are often secrets (Slack's are), so the problem is described, never the URL.
    if any(c.isspace() or not c.isprintable() for c in url):
        return "the URL contains a space or a control character"
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number from 0 to 65535
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "expected an http:// or https:// URL"
    if not parts.hostname:
        return "the URL has no host"
    return None


def _check_region(region: str) -> str | None:
    if _REGION.fullmatch(region):
        return None
    return f'{json.dumps(region)} is not an AWS region name like "us-east-1"'


def _check_role_arn(arn: str) -> str | None:
    if _ROLE_ARN.fullmatch(arn):
        return None
    example = "arn:aws:iam::123456789012:role/NAME"
    return f'{json.dumps(arn)} is not an IAM role ARN like "{example}"'


def _check_image_id(image_id: str) -> str | None:
    if _IMAGE_ID.fullmatch(image_id):
        return None
    return f'{json.dumps(image_id)} is not an image id like "ami-0123456789abcdef0"'


def _check_state(state: str) -> str | None:
    return None if state in KNOWN_STATES else _unknown("fast launch state", state, KNOWN_STATES)


def _unknown(noun: str, value: str, known: tuple[str, ...]) -> str:
    """`unknown key "intervall"; did you mean "interval"?`, or the list of what is known."""
    close = difflib.get_close_matches(value, known, n=1)
    if close:
        return f"unknown {noun} {json.dumps(value)}; did you mean {json.dumps(close[0])}?"
    return f"unknown {noun} {json.dumps(value)}; expected one of: {', '.join(known)}"


def _wrong_bool(value: object, expected: tuple[type, ...]) -> bool:
    return isinstance(value, bool) and bool not in expected


def _type_name(value: object) -> str:
    names: tuple[tuple[type, str], ...] = (
        (bool, "a boolean"),
        (str, "a string"),
        (int, "an integer"),
        (float, "a float"),
        (dict, "a table"),
        (list, "an array"),
    )
    for kind, name in names:
        if isinstance(value, kind):
            return name
    return "a date or time"


def _toml_message(exc: tomllib.TOMLDecodeError) -> str:
    match = _TOML_POSITION.fullmatch(str(exc))
    if match is None:
        return f"invalid TOML: {exc}"
    message = match["message"]
    message = message[:1].lower() + message[1:]
    where = (
        f"line {match['line']}, column {match['column']}"
        if match["line"]
        else "the end of the file"
    )
    return f"invalid TOML at {where}: {message}"
