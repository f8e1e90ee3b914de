"""`fastlaunch-monitor demo`: the whole daemon against the built-in simulator, on loopback.

No AWS account is needed or touched: the demo's process talks only to a moto server with the
fast launch extension (`monitor.demo.simulator`), on 127.0.0.1, with throwaway credentials, and
keeps its SQLite database in a temporary folder that is deleted when it stops.
"""

from __future__ import annotations

import base64
import os
import secrets
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from monitor.core.errors import ConfigError

if TYPE_CHECKING:
    from monitor.demo.simulator import DemoImage

DEMO_ACCOUNT = "123456789012"
DEMO_REGION = "us-east-1"
DEMO_INTERVAL = 10.0
PREFERRED_PORT = 9877


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def invoked_as(
    argv0: str, executable: str, which: Callable[[str], str | None] = shutil.which
) -> str:
    """The command that started this process, as a shell can run it again from the same
    folder: the console script as it was given (`.venv/bin/fastlaunch-monitor`; its bare name
    when that is what the PATH finds), else `<python> -m monitor`.

    A console script run through its `#!` line sees the path it was found at in `argv0`;
    `python -m monitor` sees the path of `monitor/__main__.py`, and `python -c` sees `-c`.
    """
    if argv0 and argv0 not in ("-c", "-m") and not argv0.endswith(".py"):
        name = os.path.basename(argv0)
        found = which(name)
        if found is not None and os.path.abspath(found) == os.path.abspath(argv0):
            return name
        return shlex.quote(argv0)
    # The venv's python is a symlink to the system's: compared unresolved, or a bare
    # `python` would leave the venv (and the monitor installed in it) behind.
    python = os.path.basename(executable)
    found = which(python)
    if found is None or os.path.abspath(found) != os.path.abspath(executable):
        python = shlex.quote(executable)
    return f"{python} -m monitor"


def demo_config(
    workdir: Path, endpoint_url: str, port: int, receiver_url: str, interval: float
) -> str:
    """The demo's config file: the simulator's endpoint, SQLite in `workdir`, the receiver."""
    return f"""\
[monitor]
interval = "{interval * 1000:.0f}ms"
jitter = "0"

[database]
url = "sqlite:///{workdir / "history.sqlite3"}"

[http]
listen = "127.0.0.1:{port}"

[aws]
endpoint_url = "{endpoint_url}"
max_attempts = 2

[[targets]]
name = "demo"
regions = ["{DEMO_REGION}"]

[[alerts.webhooks]]
name = "demo-receiver"
url = "{receiver_url}"
format = "json"
secret_file = "webhook.key"
"""


def _isolate_from_real_aws(endpoint_url: str) -> None:
    # Throwaway credentials for this process only: the simulator accepts any, and nothing of
    # the user's own AWS configuration may be picked up or sent anywhere.
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN"):
        os.environ.pop(name, None)
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "demo",
            "AWS_SECRET_ACCESS_KEY": "demo",
            "AWS_DEFAULT_REGION": DEMO_REGION,
            "AWS_ENDPOINT_URL_STS": endpoint_url,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )


def run_demo(duration: float | None, *, speed: float = 1.0) -> int:
    """Run simulator and daemon until Ctrl-C, SIGTERM or `duration` seconds; returns 0.

    `speed` plays the scenario (and the polls) that many times faster, for tests.
    """
    try:
        from monitor.demo.simulator import (
            RealTimeClock,
            seed_demo,
            simulator_for,
            start_server,
            use_clock,
        )
    except ImportError as exc:
        raise ConfigError(
            "demo",
            None,
            f"the demo needs the simulator: pip install 'fastlaunch-monitor[demo]' ({exc})",
        ) from exc
    from monitor.config.settings import parse_settings
    from monitor.demo.receiver import DemoReceiver
    from monitor.service.daemon import Daemon, open_runtime, run_until_signalled

    use_clock(RealTimeClock(speed))
    server = start_server()
    _isolate_from_real_aws(server.endpoint_url)
    story = seed_demo(simulator_for(DEMO_ACCOUNT, DEMO_REGION))
    with tempfile.TemporaryDirectory(prefix="fastlaunch-demo-") as folder:
        workdir = Path(folder)
        port = PREFERRED_PORT if _free(PREFERRED_PORT) else 0
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        (workdir / "webhook.key").write_text(secret)
        receiver = DemoReceiver(secret, show=lambda line: print(line, flush=True))
        config = workdir / "config.toml"
        config.write_text(
            demo_config(workdir, server.endpoint_url, port, receiver.url, DEMO_INTERVAL / speed)
        )
        settings = parse_settings(config.read_text(), source=str(config), env={}, base_dir=workdir)
        daemon = Daemon(open_runtime(settings))
        daemon.start()
        command = invoked_as(sys.argv[0], sys.executable)
        print(_banner(daemon.http_url, config, story, command), flush=True)
        deadline = None if duration is None else time.monotonic() + duration
        try:
            run_until_signalled(daemon, threading.Event(), deadline)
        finally:
            receiver.stop()
            server.stop()
    print("demo stopped", flush=True)
    return 0


def _banner(http_url: str, config: Path, story: Sequence[DemoImage], command: str) -> str:
    # The commands as this demo was started, so they run as printed even where the
    # console script is not on the PATH (the Quickstart's `.venv/bin/fastlaunch-monitor`).
    run = f"{command} --config {shlex.quote(str(config))}"
    lines = [
        "",
        "fastlaunch-monitor demo: the daemon is polling a simulated EC2 on loopback",
        f"  metrics:  {http_url}/metrics   (also /healthz, /readyz)",
        f"  try:      {run} status",
        f"            {run} history",
        f"            {run} alerts",
        f"            curl -s {http_url}/metrics | grep fastlaunch_image_state",
        "  alerts go to a local webhook receiver, which prints them here as they arrive",
        "  images:",
    ]
    lines += [f"    {image.image_id}  {image.story}" for image in story]
    lines += ["  Ctrl-C stops the demo.", ""]
    return "\n".join(lines)
