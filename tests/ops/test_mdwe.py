"""The whole daemon under Memory-Deny-Write-Execute, as the unit's `MemoryDenyWriteExecute=yes`
runs it: a poll, a scrape of /metrics, and an alert delivered over HTTPS.

The daemon starts from a tiny launcher that first calls `prctl(PR_SET_MDWE,
PR_MDWE_REFUSE_EXEC_GAIN)` — the kernel's own form of the setting (Linux 6.3+): from then on no
mapping of the process may be writable and executable, or become executable. Anything in the
daemon or its native libraries (CPython, OpenSSL, SQLite) that needed such memory, a JIT or a
libffi callback trampoline, would fail here as it would under systemd. The launcher reports what
the kernel made of it, and proves the rule bites by asking for a W+X mapping that must be
refused. Kernels without MDWE answer EINVAL: the test skips there.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.demo.simulator import FastLaunchSimulator, SimulatorServer
from tests.alerts.receivers import CertificateAuthority, Receiver
from tests.e2e import conftest as e2e
from tests.e2e.conftest import (
    ACCOUNT,
    REGION,
    TARGET,
    DaemonProcess,
    aws_env,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow

# The e2e fixtures, found by pytest as attributes of this module.
simulator_server = e2e.simulator_server
sim = e2e.sim

#: The launcher's exit code when the kernel has no MDWE (EINVAL).
MDWE_UNSUPPORTED = 77

LAUNCHER = f"""\
import ctypes, errno, mmap, sys

PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    code = ctypes.get_errno()
    print("mdwe: prctl(PR_SET_MDWE) failed:", errno.errorcode.get(code, code), file=sys.stderr)
    sys.exit({MDWE_UNSUPPORTED} if code == errno.EINVAL else 1)
try:
    mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    wx = "allowed"
except PermissionError:
    wx = "refused"
print(f"mdwe: flags={{libc.prctl(PR_GET_MDWE, 0, 0, 0, 0)}} wx-mapping={{wx}}", file=sys.stderr)
from monitor.cli import main
sys.exit(main(sys.argv[1:]))
"""

REASON = "Server.InsufficientInstanceCapacity: not enough capacity to launch"


def start_under_mdwe(
    tmp_path: Path, endpoint_url: str, receiver: Receiver, ca_file: Path
) -> DaemonProcess:
    """`fastlaunch-monitor run` through the launcher; skips the test if the kernel lacks MDWE."""
    key = tmp_path / "webhook.key"
    key.write_text("mdwe-test-hmac-key")
    webhook = f"""
[[alerts.webhooks]]
name = "ops"
url = "{receiver.url_for("/hook")}"
format = "json"
secret_file = "{key}"
ca_file = "{ca_file}"
"""
    database_url = f"sqlite:///{tmp_path / 'history.sqlite3'}"
    config = write_config(tmp_path, endpoint_url, database_url, webhook)
    env = aws_env(endpoint_url)
    log = tmp_path / "daemon.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, "--config", str(config), "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    daemon = DaemonProcess(process, log, config, env)

    def listening() -> str | None:
        if process.poll() == MDWE_UNSUPPORTED:
            pytest.skip(f"the kernel has no MDWE: {daemon.stderr().strip()}")
        if process.returncode is not None:
            raise AssertionError(f"the daemon exited early:\n{daemon.stderr()}")
        found = re.search(r"metrics at (http://\S+)/metrics", daemon.stderr())
        return found.group(1) if found else None

    daemon.url = wait_for(listening, what="the daemon to listen")
    return daemon


def test_the_daemon_polls_serves_metrics_and_alerts_with_write_execute_memory_denied(
    sim: FastLaunchSimulator, simulator_server: SimulatorServer, tmp_path: Path
) -> None:
    (image_id,) = sim.seed(1)
    authority = CertificateAuthority(tmp_path / "ca")
    with Receiver(tls=authority.server_context()) as receiver:
        daemon = start_under_mdwe(
            tmp_path, simulator_server.endpoint_url, receiver, authority.ca_file
        )
        try:
            assert "mdwe: flags=1 wx-mapping=refused" in daemon.stderr()
            scope = {"target": TARGET, "account_id": ACCOUNT, "region": REGION}
            state = "fastlaunch_image_state"
            wait_for(
                lambda: daemon.value(state, **scope, image_id=image_id, state="enabled") == 1,
                what="the first poll's image on /metrics",
            )

            sim.force_state(image_id, "enabled-failed", REASON)
            (request,) = receiver.wait_for_requests(1, timeout=20)
            alert = request.json()
            assert (alert["image_id"], alert["state"], alert["status"]) == (
                image_id,
                "enabled-failed",
                "firing",
            )
            assert (request.header("webhook-signature") or "").startswith("v1,")
            wait_for(
                lambda: daemon.value(state, **scope, image_id=image_id, state="enabled-failed"),
                what="the failed state on /metrics",
            )
            assert daemon.terminate() == 0
        finally:
            if daemon.process.poll() is None:
                daemon.process.kill()
                daemon.process.wait()
    assert "Traceback" not in daemon.stderr()
