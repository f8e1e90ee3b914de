"""Records for tests, with plain defaults a test overrides where it matters."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from monitor.core.model import FastLaunchImage

T0 = datetime(2026, 11, 26, 10, 0, 0, 123000, tzinfo=UTC)


def an_image(
    state: str = "enabled",
    when: datetime | None = T0,
    image_id: str = "ami-1",
    **changes: Any,
) -> FastLaunchImage:
    """An image in `state` since `when`; any other field through `changes`."""
    image = FastLaunchImage(
        image_id=image_id,
        state=state,
        state_transition_reason="Client.UserInitiated",
        state_transition_time=when,
        resource_type="snapshot",
        target_resource_count=5,
        max_parallel_launches=6,
        owner_id="123456789012",
        launch_template_id="lt-1",
        launch_template_name="win",
        launch_template_version="2",
    )
    return replace(image, **changes)
