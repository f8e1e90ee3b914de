"""A simulated Windows fast launch for moto's EC2: the tests', the demo's and the benchmark's AWS.

moto 5 has no `DescribeFastLaunchImages`, `EnableFastLaunch` or `DisableFastLaunch`; `install()`
adds them, backed by one `FastLaunchSimulator` per account and region (`simulator_for`), whose
state machine runs on a clock the caller controls (`use_clock`). Needs the `demo` extra (moto).
"""

from __future__ import annotations

from monitor.demo.simulator.clock import (
    ManualClock,
    RealTimeClock,
    SimulatorClock,
    shared_clock,
    use_clock,
)
from monitor.demo.simulator.demo import DemoImage, seed_demo
from monitor.demo.simulator.extension import install, simulator_for
from monitor.demo.simulator.server import SimulatorServer, start_server
from monitor.demo.simulator.simulator import FastLaunchSimulator, Timings
from monitor.demo.simulator.table import LaunchTemplateRef, SimulatedImage
from monitor.demo.simulator.wire import Ec2Error

__all__ = [
    "DemoImage",
    "Ec2Error",
    "FastLaunchSimulator",
    "LaunchTemplateRef",
    "ManualClock",
    "RealTimeClock",
    "SimulatedImage",
    "SimulatorClock",
    "SimulatorServer",
    "Timings",
    "install",
    "seed_demo",
    "shared_clock",
    "simulator_for",
    "start_server",
    "use_clock",
]
