"""Fast launch of one account and region: EC2's behaviour, a control API, fault injection.

The `handle_*` methods answer the three EC2 actions (the moto extension calls them); the
other public methods are for tests, the demo and benchmarks. State changes planned by
`EnableFastLaunch` and `DisableFastLaunch` happen when the shared clock passes their time,
computed at the next call (nothing runs in the background).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from monitor.demo.simulator import reasons
from monitor.demo.simulator.actions import (
    DEFAULT_TARGET_RESOURCE_COUNT,
    MIN_PARALLEL_LAUNCHES,
    RESOURCE_TYPE,
    DescribeRequest,
    DisableRequest,
    EnableRequest,
    check_describe,
    check_image_id,
    dry_run_error,
    enable_settings,
    invalid,
    matcher,
)
from monitor.demo.simulator.backend import MotoEc2
from monitor.demo.simulator.clock import SimulatorClock, shared_clock
from monitor.demo.simulator.paging import decode_token, encode_token, query_fingerprint
from monitor.demo.simulator.table import (
    FastLaunchTable,
    LaunchTemplateRef,
    SimulatedImage,
    to_millis,
)
from monitor.demo.simulator.wire import (
    Ec2Error,
    Reply,
    describe_reply,
    error_reply,
    foreign_reply,
    garbage_reply,
    image_reply,
)

#: The owner of AMIs `seed(shared=True)` creates: another account that shares them.
SHARING_ACCOUNT = "111122223333"


@dataclass(frozen=True, slots=True)
class Timings:
    """How long, in simulated seconds, enabling and disabling take."""

    enabling_seconds: float = 60.0
    disabling_seconds: float = 30.0


class FastLaunchSimulator:
    """Fast launch in one (account, region) of moto's EC2. Thread-safe.

    Get one with `simulator_for(account_id, region)`; it lives on moto's backend, so a
    `mock_aws` reset forgets it. `timings` may be replaced at any time.
    """

    def __init__(self, ec2: MotoEc2, clock: Callable[[], SimulatorClock] = shared_clock) -> None:
        self.account_id = ec2.account_id
        self.region = ec2.region
        self.timings = Timings()
        self._ec2 = ec2
        self._clock = clock
        self._table = FastLaunchTable()
        self._lock = threading.RLock()
        self._cleanup_failures: dict[str, str] = {}
        self._calls = 0
        self._throttled = 0
        self._garbled = 0
        self._foreign = 0
        self._looping = False
        self._endless = False
        self._denied = False
        self._latency = 0.0
        self._pages_served = 0

    # -- the EC2 actions --------------------------------------------------------------------

    def handle_describe(self, request: DescribeRequest) -> Reply:
        """Answer `DescribeFastLaunchImages`, faults included."""
        latency = self._latency
        if latency > 0:
            time.sleep(latency)
        with self._lock:
            self._calls += 1
            if self._throttled > 0:
                self._throttled -= 1
                return error_reply(Ec2Error("RequestLimitExceeded", "Request limit exceeded.", 503))
            if self._garbled > 0:
                self._garbled -= 1
                return garbage_reply("DescribeFastLaunchImages")
            if self._foreign > 0:
                self._foreign -= 1
                return foreign_reply()
            try:
                if self._denied:
                    raise Ec2Error(
                        "UnauthorizedOperation",
                        "You are not authorized to perform: ec2:DescribeFastLaunchImages "
                        "because no identity-based policy allows the "
                        "ec2:DescribeFastLaunchImages action.",
                        status=403,
                    )
                if request.dry_run:
                    raise dry_run_error()
                images, next_token = self._describe(request)
            except Ec2Error as error:
                return error_reply(error)
            return describe_reply(images, next_token)

    def handle_enable(self, request: EnableRequest) -> Reply:
        """Answer `EnableFastLaunch`."""
        try:
            if request.dry_run:
                raise dry_run_error()
            image = self.enable(
                request.image_id,
                resource_type=request.resource_type,
                target_resource_count=request.target_resource_count,
                max_parallel_launches=request.max_parallel_launches,
                launch_template=request.launch_template,
            )
        except Ec2Error as error:
            return error_reply(error)
        return image_reply("EnableFastLaunch", image)

    def handle_disable(self, request: DisableRequest) -> Reply:
        """Answer `DisableFastLaunch`."""
        try:
            if request.dry_run:
                raise dry_run_error()
            image = self.disable(request.image_id, force=request.force)
        except Ec2Error as error:
            return error_reply(error)
        return image_reply("DisableFastLaunch", image)

    # -- behaviour shared by the actions and the control API ---------------------------------

    def enable(
        self,
        image_id: str,
        *,
        resource_type: str | None = None,
        target_resource_count: int | None = None,
        max_parallel_launches: int | None = None,
        launch_template: LaunchTemplateRef | None = None,
    ) -> SimulatedImage:
        """Turn fast launch on for `image_id`, as `EnableFastLaunch` does; returns the entry.

        The image goes to `enabling`, then after `timings.enabling_seconds` to `enabled`, or
        to `enabling-failed` when the launch template does not exist. Without a launch
        template EC2 creates one, and so does the simulator. Raises `Ec2Error` for what EC2
        rejects: an unknown AMI, fewer than 6 parallel launches, a resource type other than
        `snapshot`, an image still being disabled.
        """
        settings = enable_settings(
            resource_type, target_resource_count, max_parallel_launches, launch_template
        )
        with self._lock:
            now = self._settle()
            owner = self._ami_owner(image_id)
            current = self._table.get(image_id)
            if current is not None and current.state.startswith("disabling"):
                raise Ec2Error(
                    "IncorrectState",
                    f"Windows fast launch for image {image_id} is being disabled "
                    f"({current.state}); it can be enabled again once that is done.",
                )
            failure: str | None = None
            if settings.launch_template is not None:
                template, failure = self._ec2.resolve_launch_template(settings.launch_template)
            elif current is not None and current.launch_template is not None:
                template = current.launch_template
            else:
                template = self._ec2.create_default_launch_template()
            shared = owner != self.account_id
            image = SimulatedImage(
                image_id=image_id,
                state="enabling",
                state_transition_reason=reasons.USER_INITIATED,
                state_transition_time=now,
                owner_id="" if shared else owner,
                resource_type=settings.resource_type,
                target_resource_count=None if shared else settings.target_resource_count,
                max_parallel_launches=settings.max_parallel_launches,
                launch_template=template,
            )
            self._table.put(image)
            done = now + timedelta(seconds=self.timings.enabling_seconds)
            if failure is None:
                self._table.plan(image_id, done, "enabled", reasons.LIFECYCLE)
            else:
                self._table.plan(image_id, done, "enabling-failed", failure)
            return image

    def disable(self, image_id: str, *, force: bool = False) -> SimulatedImage:
        """Turn fast launch off for `image_id`, as `DisableFastLaunch` does; returns the entry.

        The image goes to `disabling`, then after `timings.disabling_seconds` leaves the
        list, or goes to `disabling-failed` if `fail_cleanup` was called for it and `force`
        is not set (`force` overrides cleanup errors, as in EC2).
        """
        with self._lock:
            now = self._settle()
            self._ami_owner(image_id)
            current = self._table.get(image_id)
            if current is None:
                raise invalid(f"Windows fast launch is not enabled for image {image_id}.")
            if current.state == "disabling" and not force:
                return current
            image = current
            if current.state != "disabling":
                image = replace(
                    current,
                    state="disabling",
                    state_transition_reason=reasons.USER_INITIATED,
                    state_transition_time=now,
                )
            self._table.put(image)
            if force:
                self._cleanup_failures.pop(image_id, None)
            failure = None if force else self._cleanup_failures.get(image_id)
            done = image.state_transition_time + timedelta(seconds=self.timings.disabling_seconds)
            if failure is None:
                self._table.plan(image_id, done, None, "")
            else:
                self._table.plan(image_id, done, "disabling-failed", failure)
            return image

    # -- control API --------------------------------------------------------------------------

    @property
    def clock(self) -> SimulatorClock:
        """The clock this simulator reads."""
        return self._clock()

    @property
    def calls(self) -> int:
        """How many `DescribeFastLaunchImages` requests arrived, faulty answers included."""
        with self._lock:
            return self._calls

    def register_images(self, count: int, *, owner_id: str | None = None) -> list[str]:
        """Create `count` Windows AMIs in moto without fast launch; returns their ids."""
        with self._lock:
            return self._ec2.register_images(count, owner_id=owner_id or self.account_id)

    def create_launch_template(self, name: str) -> LaunchTemplateRef:
        """Create a launch template in moto, for `enable(launch_template=...)`."""
        with self._lock:
            return self._ec2.create_launch_template(name)

    def seed(
        self,
        count: int,
        *,
        states: str | Sequence[str] = "enabled",
        owner_id: str | None = None,
        shared: bool = False,
        target_resource_count: int = DEFAULT_TARGET_RESOURCE_COUNT,
        max_parallel_launches: int = MIN_PARALLEL_LAUNCHES,
        launch_template: LaunchTemplateRef | None = None,
        reason: str | None = None,
    ) -> list[str]:
        """Create `count` AMIs whose fast launch is already in a state; returns their ids.

        `states` is one state, or several given to the images in turn. Seeded images stay in
        their state until told otherwise (`force_state`, `schedule`, `enable`, `disable`).
        `shared=True` makes AMIs of another account (`owner_id`, default
        `SHARING_ACCOUNT`), reported as AWS does: empty `OwnerId` and `SnapshotConfiguration`.
        """
        cycle = (states,) if isinstance(states, str) else tuple(states)
        if not cycle:
            raise ValueError("seed needs at least one state")
        owner = owner_id or (SHARING_ACCOUNT if shared else self.account_id)
        with self._lock:
            now = self._settle()
            image_ids = self._ec2.register_images(count, owner_id=owner)
            for index, image_id in enumerate(image_ids):
                state = cycle[index % len(cycle)]
                self._table.put(
                    SimulatedImage(
                        image_id=image_id,
                        state=state,
                        state_transition_reason=(
                            reasons.default_reason(state) if reason is None else reason
                        ),
                        state_transition_time=now,
                        owner_id="" if shared else owner,
                        resource_type=RESOURCE_TYPE,
                        target_resource_count=None if shared else target_resource_count,
                        max_parallel_launches=max_parallel_launches,
                        launch_template=launch_template,
                    )
                )
            return image_ids

    def force_state(self, image_id: str, state: str, reason: str | None = None) -> SimulatedImage:
        """Put `image_id` into `state` now, with `reason` (default: a typical one for it).

        Any text is accepted as a state, so unknown future states can be simulated. Whatever
        was planned for the image is cancelled. An AMI without fast launch gets an entry
        with default settings.
        """
        with self._lock:
            now = self._settle()
            current = self._table.get(image_id)
            if current is None:
                owner = self._ami_owner(image_id)
                shared = owner != self.account_id
                current = SimulatedImage(
                    image_id=image_id,
                    state=state,
                    state_transition_reason="",
                    state_transition_time=now,
                    owner_id="" if shared else owner,
                    resource_type=RESOURCE_TYPE,
                    target_resource_count=None if shared else DEFAULT_TARGET_RESOURCE_COUNT,
                    max_parallel_launches=MIN_PARALLEL_LAUNCHES,
                    launch_template=None,
                )
            image = replace(
                current,
                state=state,
                state_transition_reason=reasons.default_reason(state) if reason is None else reason,
                state_transition_time=now,
            )
            self._table.put(image)
            return image

    def schedule(
        self, image_id: str, after_seconds: float, state: str | None, reason: str | None = None
    ) -> None:
        """Plan `image_id` to move to `state` `after_seconds` from now (`None`: leave the list).

        Steps add up to a plan, cancelled by the next `enable`, `disable`, `force_state` or
        `remove` of the image. Raises `KeyError` if the image has no fast launch entry.
        """
        with self._lock:
            now = self._settle()
            if reason is None:
                reason = "" if state is None else reasons.default_reason(state)
            self._table.plan(image_id, now + timedelta(seconds=after_seconds), state, reason)

    def remove(self, image_id: str) -> None:
        """Take `image_id` off the fast launch list now (the AMI stays); `KeyError` if absent."""
        with self._lock:
            self._settle()
            if not self._table.drop(image_id):
                raise KeyError(image_id)

    def fail_cleanup(self, image_id: str, reason: str = reasons.CLEANUP_FAILED) -> None:
        """Make the cleanup after the next `disable` of `image_id` fail, unless forced."""
        with self._lock:
            self._cleanup_failures[image_id] = reason

    def images(self) -> tuple[SimulatedImage, ...]:
        """Every fast launch entry as of now, ordered by image id."""
        with self._lock:
            self._settle()
            return self._table.snapshot()

    def image(self, image_id: str) -> SimulatedImage:
        """The entry of `image_id` as of now; `KeyError` if it has none."""
        with self._lock:
            self._settle()
            found = self._table.get(image_id)
            if found is None:
                raise KeyError(image_id)
            return found

    # -- faults of DescribeFastLaunchImages ------------------------------------------------------

    def throttle(self, calls: int = 1) -> None:
        """Answer the next `calls` describe requests with `RequestLimitExceeded` (HTTP 503)."""
        with self._lock:
            self._throttled = calls

    def garbage(self, calls: int = 1) -> None:
        """Answer the next `calls` describe requests with a 200 that botocore cannot parse."""
        with self._lock:
            self._garbled = calls

    def foreign_page(self, calls: int = 1) -> None:
        """Answer the next `calls` describe requests with a 200 HTML page (a proxy's login)."""
        with self._lock:
            self._foreign = calls

    def endless_pages(self, enabled: bool = True) -> None:
        """While enabled, every describe page carries a new `NextToken`: paging never ends."""
        with self._lock:
            self._endless = enabled

    def loop_next_token(self, enabled: bool = True) -> None:
        """While enabled, every describe page carries the same `NextToken`, forever."""
        with self._lock:
            self._looping = enabled

    def deny(self) -> None:
        """Answer describe requests, `DryRun` ones too, with `UnauthorizedOperation` (403)."""
        with self._lock:
            self._denied = True

    def allow(self) -> None:
        """Undo `deny`."""
        with self._lock:
            self._denied = False

    def latency(self, seconds: float) -> None:
        """Make every describe request wait `seconds` before it is answered (0: none)."""
        with self._lock:
            self._latency = max(0.0, seconds)

    def clear_faults(self) -> None:
        """Undo every fault: throttling, garbage, token loop, denial and latency."""
        with self._lock:
            self._throttled = self._garbled = self._foreign = 0
            self._looping = self._denied = self._endless = False
            self._latency = 0.0

    # -- internals ------------------------------------------------------------------------------

    def _settle(self) -> datetime:
        now = to_millis(self._clock().now())
        self._table.settle(now)
        return now

    def _ami_owner(self, image_id: str) -> str:
        check_image_id(image_id)
        owner = self._ec2.image_owner(image_id)
        if owner is None:
            raise Ec2Error("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")
        return owner

    def _describe(self, request: DescribeRequest) -> tuple[list[SimulatedImage], str | None]:
        check_describe(request)
        fingerprint = query_fingerprint(request.image_ids, request.filters)
        after = decode_token(request.next_token, fingerprint) if request.next_token else ""
        self._settle()
        images, more = self._table.page(
            after=after,
            limit=request.max_results,
            matches=matcher(request.filters),
            only=request.image_ids or None,
        )
        last = images[-1].image_id if images else after
        if self._looping:
            return images, request.next_token or encode_token(last, fingerprint)
        if self._endless:
            self._pages_served += 1
            return images, encode_token(f"{last}#{self._pages_served}", fingerprint)
        return images, encode_token(last, fingerprint) if more else None
