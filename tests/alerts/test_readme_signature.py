"""The README's signature-verification examples, run as written against real deliveries.

Every Python block of the README's "Verifying the signature" paragraph is executed unchanged;
each function it defines is called as `f(secret, headers, body)` with the headers and body a
loopback receiver got from the monitor's dispatcher, for a `whsec_` secret and a plain one.
"""

from __future__ import annotations

import base64
import inspect
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from monitor.alerts.dispatcher import Dispatcher
from monitor.alerts.outbox import Outbox, alert_writer
from monitor.alerts.rules import Receiver as AlertReceiver
from monitor.alerts.rules import alert_policy
from monitor.config.settings import WebhookSettings
from monitor.core.model import FAILED_STATES, PollResult, Scope
from monitor.exposition.current import CurrentState
from monitor.exposition.metrics import build_registry
from monitor.store import Store, create_engine_for, upgrade
from tests.alerts.receivers import Received, Receiver
from tests.builders import an_image

README = Path(__file__).resolve().parents[2] / "README.md"
SCOPE = Scope("prod", "222222222222", "us-east-1")

SECRETS = {
    "whsec": "whsec_" + base64.b64encode(b"a key of thirty-two bytes, truly").decode(),
    # Not base64: read as base64 it would decode to some other key.
    "plain": "my plain webhook secret, ключ",
}


def readme_python_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("**Verifying the signature.**", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"^```python\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)


def readme_verifiers() -> dict[str, Callable[..., Any]]:
    """Each function the README's blocks define, by name, from the code as written."""
    verifiers: dict[str, Callable[..., Any]] = {}
    for number, block in enumerate(readme_python_blocks()):
        namespace: dict[str, Any] = {"__name__": f"readme_block_{number}"}
        exec(compile(block, f"README.md (python block {number})", "exec"), namespace)
        verifiers.update(
            {
                name: value
                for name, value in namespace.items()
                if inspect.isfunction(value) and value.__module__ == namespace["__name__"]
            }
        )
    return verifiers


def verifies(verify: Callable[..., Any], secret: str, headers: Message, body: bytes) -> bool:
    """Whether `verify` accepts the delivery: a truthy answer; a falsy one or an error refuses."""
    try:
        return bool(verify(secret, headers, body))
    except Exception:
        return False


@pytest.fixture
def deliver(tmp_path: Path, receiver: Receiver) -> Iterator[Callable[[str], Received]]:
    """Deliver one firing alert, signed with the given secret, through the real dispatcher."""
    engine = create_engine_for(f"sqlite:///{tmp_path / 'alerts.sqlite3'}")
    upgrade(engine)
    _, metrics = build_registry(CurrentState())
    dispatchers: list[Dispatcher] = []

    def send(secret: str) -> Received:
        receiver_name = f"ops-{len(dispatchers)}"
        store = Store(
            engine, alert_writer(alert_policy([AlertReceiver(receiver_name, FAILED_STATES)], 0))
        )
        now = datetime.now(UTC)
        image = an_image("enabling-failed", now, image_id=f"ami-{len(dispatchers)}")
        store.apply_poll(PollResult(SCOPE, now, 0.1, 1, (image,)), now)
        hook = WebhookSettings(
            name=receiver_name, urls=(receiver.url_for("/hook"),), secret=secret, timeout=5.0
        )
        dispatcher = Dispatcher(Outbox(engine), [hook], metrics)
        dispatchers.append(dispatcher)
        assert dispatcher.dispatch_due() == 1
        return receiver.wait_for_requests(len(dispatchers))[-1]

    yield send
    for dispatcher in dispatchers:
        dispatcher.close()
    engine.dispose()


def as_received(request: Received) -> Message:
    """The headers as a receiver's HTTP framework hands them over: looked up in any case."""
    headers = Message()
    for name, value in request.headers:
        headers[name] = value
    return headers


def test_the_readme_shows_the_standard_webhooks_library_and_a_verifier_by_hand():
    blocks = readme_python_blocks()
    assert any("from standardwebhooks import Webhook" in block for block in blocks), blocks
    assert len(readme_verifiers()) >= 2, blocks


@pytest.mark.parametrize("kind", SECRETS)
def test_every_readme_verifier_accepts_a_real_delivery_as_written(deliver, kind):
    secret = SECRETS[kind]
    request = deliver(secret)
    headers = as_received(request)
    assert headers["webhook-signature"].startswith("v1,")

    for name, verify in readme_verifiers().items():
        assert verifies(verify, secret, headers, request.body), f"README's {name} ({kind})"


@pytest.mark.parametrize("kind", SECRETS)
def test_every_readme_verifier_refuses_a_forged_body_or_another_secret(deliver, kind):
    secret = SECRETS[kind]
    request = deliver(secret)
    headers = as_received(request)
    forged = request.body.replace(b"enabling-failed", b"enabled", 1)
    assert forged != request.body
    other_secret = {"whsec": SECRETS["plain"], "plain": SECRETS["whsec"]}[kind]

    for name, verify in readme_verifiers().items():
        assert not verifies(verify, secret, headers, forged), f"README's {name} ({kind})"
        assert not verifies(verify, other_secret, headers, request.body), f"{name} ({kind})"
