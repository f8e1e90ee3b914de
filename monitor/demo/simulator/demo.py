"""The demo's scenario: a handful of images whose fast launch walks through its states.

Everything is planned on the simulator's clock when the scenario is seeded and happens
lazily as the clock passes each step, so a faster clock plays it faster.
"""

from __future__ import annotations

from dataclasses import dataclass

from monitor.demo.simulator import reasons
from monitor.demo.simulator.simulator import FastLaunchSimulator
from monitor.demo.simulator.table import LaunchTemplateRef

#: Simulated seconds from the seeding to the last step of the scenario.
DEMO_SECONDS = 150.0


@dataclass(frozen=True, slots=True)
class DemoImage:
    """One image of the scenario and, in a sentence, what will happen to it."""

    image_id: str
    story: str


def seed_demo(sim: FastLaunchSimulator) -> tuple[DemoImage, ...]:
    """Seed the demo images into `sim` and plan their transitions; returns what they will do."""
    template = sim.create_launch_template("fastlaunch-demo-windows-2022")
    missing = LaunchTemplateRef(launch_template_name="fastlaunch-demo-deleted", version="1")
    story: list[DemoImage] = []

    (quick,) = sim.seed(1, states="enabling", launch_template=template)
    sim.schedule(quick, 30, "enabled")
    story.append(DemoImage(quick, "enabling, enabled after 30 s"))

    (slow,) = sim.seed(1, states="enabling", launch_template=template, target_resource_count=10)
    sim.schedule(slow, 90, "enabled")
    story.append(DemoImage(slow, "enabling, enabled after 90 s"))

    (broken,) = sim.seed(1, states="enabling", launch_template=missing)
    sim.schedule(
        broken, 45, "enabling-failed", reasons.missing_template_name("fastlaunch-demo-deleted")
    )
    story.append(DemoImage(broken, "enabling, fails after 45 s: its launch template is missing"))

    (flaky,) = sim.seed(1, states="enabled", launch_template=template)
    sim.schedule(flaky, 60, "enabled-failed", reasons.CAPACITY)
    sim.schedule(flaky, DEMO_SECONDS, "enabled", reasons.RECOVERED)
    story.append(
        DemoImage(flaky, f"enabled, fails after 60 s, recovers after {DEMO_SECONDS:.0f} s")
    )

    (retired,) = sim.seed(1, states="enabled", launch_template=template)
    sim.schedule(retired, 75, "disabling", reasons.USER_INITIATED)
    sim.schedule(retired, 120, None)
    story.append(DemoImage(retired, "enabled, disabling after 75 s, gone after 120 s"))

    (steady,) = sim.seed(1, states="enabled", max_parallel_launches=10, target_resource_count=20)
    story.append(DemoImage(steady, "enabled throughout"))

    (shared,) = sim.seed(1, states="enabled", shared=True)
    story.append(DemoImage(shared, "enabled throughout, shared from another account"))
    return tuple(story)
