"""What the benchmarks share about their AWS endpoint: a child process run over stdin/stdout,
and the environment that points botocore at it.

The child prints `ready <url>` once it serves, then obeys one command a line, answering `ok`;
`quit` stops it. Benchmarks import this as a sibling module (`python bench/<name>.py` puts
`bench/` on the path).
"""

from __future__ import annotations

import os
import subprocess


class EndpointChild:
    """An endpoint in a child process started with `command`; its URL is `url`."""

    def __init__(self, command: list[str]) -> None:
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        ready = self._read()
        if not ready.startswith("ready "):
            self._process.kill()
            raise RuntimeError(f"the endpoint did not start: {ready!r}")
        self.url = ready.split()[1]

    def _read(self) -> str:
        assert self._process.stdout is not None
        return self._process.stdout.readline().strip()

    def _send(self, command: str) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()

    def ask(self, command: str) -> None:
        """Send `command` and return once the child has done it."""
        self._send(command)
        answer = self._read()
        if answer != "ok":
            raise RuntimeError(f"the endpoint answered {answer!r}")

    def close(self, timeout: float = 60) -> None:
        """Stop the child and wait for it."""
        self._send("quit")
        self._process.wait(timeout=timeout)


def endpoint_env(url: str, region: str) -> dict[str, str]:
    """The environment that sends every AWS call (STS and EC2) to `url`, with fake base
    credentials and none of this machine's AWS configuration."""
    return {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": region,
        "AWS_ENDPOINT_URL": url,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def use_endpoint(url: str, region: str) -> None:
    """Send every AWS call of this process to `url` (`endpoint_env`)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "FASTLAUNCH_MONITOR_DATABASE_URL"):
        os.environ.pop(name, None)
    os.environ.update(endpoint_env(url, region))
