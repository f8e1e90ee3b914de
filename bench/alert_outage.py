"""How long after a receiver's outage ends does its alert arrive? (issue 3)

An alert is enqueued when the receiver goes down; the receiver answers 503 for `--outage`
seconds, then 200. The monitor's real dispatcher and SQLite outbox run on a simulated clock,
ticking once a second as the daemon does, with its real backoff (exponential, full jitter,
1 s to 5 min). The figure is the delay from the end of the outage to the delivery, over many
runs (each with its own random seed): median, 90th percentile and worst.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import statistics
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from monitor.alerts.dispatcher import Dispatcher
from monitor.alerts.outbox import Outbox, alert_writer
from monitor.alerts.records import DeliveryOutcome, WebhookRequest
from monitor.alerts.rules import Receiver, alert_policy
from monitor.config.settings import WebhookSettings
from monitor.core.model import FAILED_STATES, FastLaunchImage, PollResult, Scope
from monitor.exposition.current import CurrentState
from monitor.exposition.metrics import build_registry
from monitor.store import Store, create_engine_for, upgrade

T0 = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
HOOK = WebhookSettings(name="ops", urls=("http://127.0.0.1:9/hook",))
FAILED = FastLaunchImage(
    "ami-1",
    "enabled-failed",
    "Server.InsufficientInstanceCapacity",
    T0,
    "snapshot",
    5,
    6,
    "111111111111",
    None,
    "win",
    "1",
)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class OutageSender:
    """Answers 503 until the outage ends, then 200; remembers when it delivered."""

    def __init__(self, clock: Clock, outage_ends: datetime) -> None:
        self.clock = clock
        self.outage_ends = outage_ends
        self.delivered_at: datetime | None = None

    def send(self, request: WebhookRequest) -> DeliveryOutcome:
        if self.clock.now < self.outage_ends:
            return DeliveryOutcome(503, None, 0.01)
        self.delivered_at = self.clock.now
        return DeliveryOutcome(200, None, 0.01)

    def close(self) -> None:
        """Nothing to release."""


def one_run(folder: Path, outage: float, seed: int) -> float:
    engine = create_engine_for(f"sqlite:///{folder / f'run{seed}.sqlite3'}")
    upgrade(engine)
    clock = Clock()
    outage_ends = T0 + timedelta(seconds=outage)
    sender = OutageSender(clock, outage_ends)
    Store(engine, alert_writer(alert_policy([Receiver("ops", FAILED_STATES)], 0))).apply_poll(
        PollResult(Scope("prod", "111111111111", "us-east-1"), T0, 0.1, 1, (FAILED,)), T0
    )
    outbox = Outbox(engine)
    dispatcher = Dispatcher(
        outbox,
        [HOOK],
        build_registry(CurrentState())[1],
        clock=clock,
        rng=random.Random(seed),
        sender_factory=lambda _hook: sender,  # type: ignore[arg-type,return-value]
    )
    while sender.delivered_at is None:
        due = outbox.next_due(clock.now, receivers=["ops"])
        assert due is not None
        # The daemon looks once a second: the first tick at or after the due time.
        ticks = max(0.0, math.ceil((due - T0).total_seconds()))
        clock.now = max(clock.now, T0 + timedelta(seconds=ticks))
        dispatcher.dispatch_due()
    dispatcher.close()
    engine.dispose()
    return (sender.delivered_at - outage_ends).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--outage", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    # Every failed attempt is a WARNING line in the daemon; here they are only noise.
    logging.getLogger("monitor").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as folder:
        delays = sorted(one_run(Path(folder), args.outage, seed) for seed in range(args.runs))
    p90 = delays[int(0.9 * (len(delays) - 1))]
    print(f"outage {args.outage:.0f} s, {args.runs} runs: delivery after the outage ends")
    print(f"  median {statistics.median(delays):6.1f} s")
    print(f"  p90    {p90:6.1f} s")
    print(f"  worst  {delays[-1]:6.1f} s")


if __name__ == "__main__":
    main()
