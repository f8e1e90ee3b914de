"""`check` refuses exactly what `run` refuses: the files the daemon opens at start (TLS
certificate, key and CAs, a webhook's CA bundle, the SQLite folder), each as one config-error
line and exit 2 from both commands, and a certificate file holding its key works in both."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import REGION, TARGET, aws_env, cli, wait_for, write_config
from tests.pki import Pki, make_pki

pytestmark = pytest.mark.slow

NOWHERE = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def config_with(tmp_path: Path, extra: str = "", *, database: Path | None = None) -> Path:
    """A config whose `[http]` (or other tables) are completed by `extra`."""
    url = f"sqlite:///{database or tmp_path / 'history.sqlite3'}"
    config = write_config(tmp_path, NOWHERE, url)
    # `[http]` is written by write_config; TLS keys go into it, webhooks after the target.
    text = config.read_text()
    http, _, webhooks = extra.partition("[[alerts.webhooks]]")
    text = text.replace('listen = "127.0.0.1:0"\n', f'listen = "127.0.0.1:0"\n{http}')
    if webhooks:
        text += f"\n[[alerts.webhooks]]{webhooks}"
    config.write_text(text)
    return config


def refused_alike(config: Path, tmp_path: Path) -> str:
    """Run `check` and `run` on `config`; both must exit 2 with the same single line."""
    env = aws_env(NOWHERE)
    checked = cli(config, "check", env=env)
    ran = cli(config, "run", env=env)

    assert (checked.returncode, ran.returncode) == (2, 2), checked.stderr + ran.stderr
    (line,) = checked.stderr.splitlines()
    assert ran.stderr.splitlines() == [line]
    assert checked.stdout == ""
    assert line.startswith("fastlaunch-monitor: config error: ")
    assert not (tmp_path / "history.sqlite3").exists(), "nothing is opened before the check"
    return line


def test_a_certificate_and_a_key_that_do_not_belong_together_are_refused_by_both(
    tmp_path: Path, pki: Pki
):
    config = config_with(
        tmp_path, f'tls_cert_file = "{pki.server_cert}"\ntls_key_file = "{pki.client_key}"\n'
    )

    line = refused_alike(config, tmp_path)

    assert f"{config}: http.tls_key_file: the key in {pki.client_key} is not the key" in line


def test_a_certificate_file_without_a_key_is_refused_by_both(tmp_path: Path, pki: Pki):
    config = config_with(tmp_path, f'tls_cert_file = "{pki.server_cert}"\n')

    line = refused_alike(config, tmp_path)

    assert f"{config}: http.tls_cert_file: {pki.server_cert} holds no private key" in line


def test_a_client_ca_that_is_not_pem_is_refused_by_both(tmp_path: Path, pki: Pki):
    not_pem = tmp_path / "client-ca.pem"
    not_pem.write_text("these are not the certificates you are looking for\n")
    config = config_with(
        tmp_path,
        f'tls_cert_file = "{pki.server_cert}"\ntls_key_file = "{pki.server_key}"\n'
        f'tls_client_ca_file = "{not_pem}"\n',
    )

    line = refused_alike(config, tmp_path)

    assert f"{config}: http.tls_client_ca_file: {not_pem} is not a PEM bundle" in line


def test_a_webhook_ca_file_that_is_not_pem_is_refused_by_both(tmp_path: Path):
    not_pem = tmp_path / "private-ca.pem"
    not_pem.write_text("-----BEGIN NOTHING-----\n")
    config = config_with(
        tmp_path,
        f'[[alerts.webhooks]]\nname = "ops"\nurl = "https://hooks.example.com/x"\n'
        f'ca_file = "{not_pem}"\n',
    )

    line = refused_alike(config, tmp_path)

    assert str(not_pem) in line
    assert 'webhook "ops": ca_file is not a PEM bundle' in line


def test_a_sqlite_database_in_a_missing_folder_is_refused_by_both(tmp_path: Path):
    missing = tmp_path / "no-such-folder"
    config = config_with(tmp_path, database=missing / "history.sqlite3")

    line = refused_alike(config, tmp_path)

    assert line == (
        f"fastlaunch-monitor: config error: {config}: database.url: the folder of the SQLite "
        f"database, {missing}, does not exist; create it or fix the path"
    )
    assert not missing.exists()


def test_a_certificate_file_holding_its_key_passes_check_and_serves_https(
    tmp_path: Path, pki: Pki, sim, simulator_server
):
    combined = tmp_path / "server-with-key.pem"
    combined.write_bytes(pki.server_cert.read_bytes() + pki.server_key.read_bytes())
    combined.chmod(0o600)
    config = write_config(
        tmp_path,
        simulator_server.endpoint_url,
        f"sqlite:///{tmp_path / 'history.sqlite3'}",
    )
    config.write_text(
        config.read_text().replace(
            'listen = "127.0.0.1:0"\n', f'listen = "127.0.0.1:0"\ntls_cert_file = "{combined}"\n'
        )
    )
    env = aws_env(simulator_server.endpoint_url)

    checked = cli(config, "check", env=env)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"target {TARGET}" in checked.stdout
    assert f"{REGION} permitted" in checked.stdout

    log = tmp_path / "run.log"
    with log.open("wb") as stderr:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "monitor", "--config", str(config), "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:

        def listening() -> str | None:
            assert daemon.poll() is None, log.read_text()
            found = re.search(r"metrics at (https://\S+)/metrics", log.read_text())
            return found.group(1) if found else None

        url = wait_for(listening, what="the daemon to serve HTTPS")
        context = ssl.create_default_context(cafile=pki.ca)
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        with opener.open(f"{url}/healthz", timeout=10) as response:
            body = response.read()
    finally:
        daemon.terminate()
        daemon.wait(15)

    assert body == b"ok\n"
