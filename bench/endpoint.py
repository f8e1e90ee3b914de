"""The benchmarks' EC2 endpoint: the simulator server in a process of its own.

Run by `poll_cycle.py`, not by hand. Serving in another process keeps the endpoint's CPU out
of the figures measured in the benchmark's process. It seeds `--images` enabled images in one
account and region, prints `ready <endpoint url>`, then answers one command a line on stdin:

    transition N   force N images (the next N, in turn) into a new state; answers `ok`
    quit           stop serving and exit
"""

from __future__ import annotations

import argparse
import os
import sys

ACCOUNT = "123456789012"
REGION = "us-east-1"

# Each transition flips an image between these two states, so every one of them is a change.
_FLIP = {"enabled": "enabled-failed", "enabled-failed": "enabled"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, required=True)
    args = parser.parse_args()
    # moto would otherwise build ~1300 public AMIs per region first: slow and not ours.
    os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"

    from monitor.demo.simulator import simulator_for, start_server

    server = start_server()
    simulator = simulator_for(ACCOUNT, REGION)
    image_ids = simulator.seed(args.images, states="enabled")
    states = dict.fromkeys(image_ids, "enabled")
    turn = 0
    print(f"ready {server.endpoint_url}", flush=True)
    try:
        for line in sys.stdin:
            command, *rest = line.split()
            if command == "quit":
                break
            if command == "transition" and len(rest) == 1 and rest[0].isdigit():
                for _ in range(int(rest[0])):
                    image_id = image_ids[turn % len(image_ids)]
                    turn += 1
                    states[image_id] = _FLIP[states[image_id]]
                    simulator.force_state(image_id, states[image_id])
                print("ok", flush=True)
            else:
                print(f"error: unknown command {line.strip()!r}", flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
