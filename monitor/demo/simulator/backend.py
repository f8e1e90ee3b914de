"""The part of moto's EC2 backend of one (account, region) the simulator reads and writes.

moto is untyped; this is where its objects are touched, so `Any` stays here.
"""

from __future__ import annotations

import uuid
from typing import Any

from monitor.demo.simulator import reasons
from monitor.demo.simulator.table import LaunchTemplateRef

_WINDOWS_NAME = "Windows_Server-2022-English-Full-Base"


class MotoEc2:
    """AMIs and launch templates of one moto EC2 backend."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    @property
    def account_id(self) -> str:
        """The account the backend belongs to."""
        return str(self._backend.account_id)

    @property
    def region(self) -> str:
        """The region the backend belongs to."""
        return str(self._backend.region_name)

    def image_owner(self, image_id: str) -> str | None:
        """The owner account of AMI `image_id`, or `None` if moto does not know it."""
        ami = self._backend.amis.get(image_id)
        return None if ami is None else str(ami.owner_id)

    def register_images(self, count: int, *, owner_id: str) -> list[str]:
        """Create `count` Windows AMIs owned by `owner_id`; returns their ids.

        They are built directly in the backend (one API call each would be far too slow for
        ten thousand), as real moto AMIs with their snapshot, so `DescribeImages` sees them.
        """
        from moto.ec2.models.amis import Ami
        from moto.ec2.utils import random_ami_id

        amis = self._backend.amis
        created: list[str] = []
        while len(created) < count:
            image_id = random_ami_id()
            if image_id in amis:
                continue
            amis[image_id] = Ami(
                self._backend,
                image_id,
                name=f"{_WINDOWS_NAME}-{image_id}",
                owner_id=owner_id,
                platform="windows",
                architecture="x86_64",
                virtualization_type="hvm",
                region_name=f"{self.region}a",
            )
            created.append(image_id)
        return created

    def create_launch_template(self, name: str) -> LaunchTemplateRef:
        """Create an (empty) launch template named `name`; returns its reference."""
        template = self._backend.create_launch_template(
            name, "fast launch simulator", {"ImageId": "", "InstanceType": "t3.medium"}, {}
        )
        return LaunchTemplateRef(str(template.id), str(template.name), "1")

    def create_default_launch_template(self) -> LaunchTemplateRef:
        """The template EC2 makes for fast launch when the caller names none."""
        return self.create_launch_template(f"EC2FastLaunchDefaultResourceCreation-{uuid.uuid4()}")

    def resolve_launch_template(
        self, spec: LaunchTemplateRef
    ) -> tuple[LaunchTemplateRef, str | None]:
        """The template `spec` names, completed from moto, and why it is unusable (or `None`).

        A missing template or version is not an error of the request: EC2 accepts it and the
        image later fails to enable, with the returned reason.
        """
        version = spec.version or "$Default"
        templates = self._backend.launch_templates
        if spec.launch_template_id is not None:
            template = templates.get(spec.launch_template_id)
            if template is None:
                return spec, reasons.missing_template_id(spec.launch_template_id)
        else:
            name = spec.launch_template_name or ""
            template_id = self._backend.launch_template_name_to_ids.get(name)
            template = templates.get(template_id) if template_id else None
            if template is None:
                return spec, reasons.missing_template_name(name)
        found_id = str(template.id)
        found = LaunchTemplateRef(found_id, str(template.name), version)
        numbers = {str(v.number) for v in template.versions}
        if version.lower() not in ("$latest", "$default") and version not in numbers:
            return found, reasons.missing_template_version(found_id, version)
        return found, None
