"""The texts the simulator puts in `StateTransitionReason`, modelled on what EC2 reports."""

from __future__ import annotations

USER_INITIATED = "Client.UserInitiated"
LIFECYCLE = "Client.UserInitiated - Lifecycle state transition"
CAPACITY = (
    "Server.InsufficientInstanceCapacity: Insufficient capacity to launch the instances "
    "that replenish the pre-provisioned snapshots."
)
RECOVERED = "Server.Recovered - Pre-provisioned snapshots replenished"
CLEANUP_FAILED = (
    "Client.UnauthorizedOperation: Failed to delete pre-provisioned snapshots: not authorized "
    "to perform ec2:DeleteSnapshot. Retry DisableFastLaunch with Force."
)
PREPROVISIONING_FAILED = "Server.InternalError: Pre-provisioning failed; retry EnableFastLaunch."

#: What an image put into a state without a stated reason reports.
DEFAULT_REASONS: dict[str, str] = {
    "enabling": USER_INITIATED,
    "enabling-failed": PREPROVISIONING_FAILED,
    "enabled": LIFECYCLE,
    "enabled-failed": CAPACITY,
    "disabling": USER_INITIATED,
    "disabling-failed": CLEANUP_FAILED,
}


def default_reason(state: str) -> str:
    """The reason an image reports for `state` when nobody said why."""
    return DEFAULT_REASONS.get(state, "")


def missing_template_id(template_id: str) -> str:
    """Why enabling fails when the launch template named by id does not exist."""
    return (
        "Client.InvalidLaunchTemplateId.NotFound: The specified launch template, "
        f"with template ID {template_id}, does not exist."
    )


def missing_template_name(name: str) -> str:
    """Why enabling fails when the launch template named by name does not exist."""
    return (
        "Client.InvalidLaunchTemplateName.NotFoundException: The specified launch template, "
        f"with template name {name}, does not exist."
    )


def missing_template_version(template_id: str, version: str) -> str:
    """Why enabling fails when the launch template has no such version."""
    return (
        "Client.InvalidLaunchTemplateId.VersionNotFound: Could not find launch template "
        f"version {version} for launch template {template_id}."
    )
