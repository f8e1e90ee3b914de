"""Metrics: per-image gauges from the current state, the monitor's own series, the exposition."""

from __future__ import annotations

import gzip
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import prometheus_client
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.parser import text_string_to_metric_families

from monitor.core.model import KNOWN_STATES, FastLaunchImage, PollResult, Scope, Transition
from monitor.exposition import images as image_exposition
from monitor.exposition.current import CurrentState
from monitor.exposition.metrics import ImageCollector, build_registry, exposition

PROD = Scope("prod", "111111111111", "eu-west-1")
OTHER = Scope("other", "222222222222", "us-east-1")
CHANGED_AT = datetime(2026, 11, 26, 10, 0, 0, 123000, tzinfo=UTC)
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def image(image_id: str = "ami-0123456789abcdef0", **changes: object) -> FastLaunchImage:
    base = FastLaunchImage(
        image_id=image_id,
        state="enabled",
        state_transition_reason="Launch template is valid",
        state_transition_time=CHANGED_AT,
        resource_type="snapshot",
        target_resource_count=5,
        max_parallel_launches=6,
        owner_id="111111111111",
        launch_template_id="lt-0123456789abcdef0",
        launch_template_name="windows-fast-launch",
        launch_template_version="3",
    )
    return replace(base, **changes)


def labels(image_id: str = "ami-0123456789abcdef0", scope: Scope = PROD, **extra: str):
    return {
        "target": scope.target,
        "account_id": scope.account_id,
        "region": scope.region,
        "image_id": image_id,
        **extra,
    }


def scope_labels(scope: Scope = PROD, **extra: str) -> dict[str, str]:
    return {"target": scope.target, "account_id": scope.account_id, "region": scope.region, **extra}


def leading(current: CurrentState) -> CollectorRegistry:
    registry, metrics = build_registry(current)
    metrics.set_leader(True)
    return registry


def poll(scope: Scope = PROD, *, error: str | None = None, duration: float = 1.5) -> PollResult:
    return PollResult(
        scope=scope,
        started_at=CHANGED_AT,
        duration_seconds=duration,
        pages=1,
        images=None if error else (image(),),
        error_code=error,
        error_message="boom" if error else None,
    )


def image_series(registry: CollectorRegistry) -> list[str]:
    return [
        sample.name
        for family in registry.collect()
        for sample in family.samples
        if sample.name.startswith("fastlaunch_image_")
    ]


def body(registry: CollectorRegistry, accept: str | None = None) -> bytes:
    return exposition(registry, accept).text()


def test_an_image_exports_its_counts_transition_time_and_info():
    current = CurrentState()
    current.replace_scope(PROD, [image()])
    registry = leading(current)

    value = registry.get_sample_value
    assert value("fastlaunch_image_target_resources", labels()) == 5
    assert value("fastlaunch_image_max_parallel_launches", labels()) == 6
    assert value("fastlaunch_image_state_transition_timestamp_seconds", labels()) == (
        CHANGED_AT.timestamp()
    )
    info = labels(
        owner_id="111111111111",
        resource_type="snapshot",
        launch_template_id="lt-0123456789abcdef0",
        launch_template_name="windows-fast-launch",
        launch_template_version="3",
    )
    assert value("fastlaunch_image_info", info) == 1


def test_the_transition_timestamp_keeps_its_milliseconds():
    current = CurrentState()
    current.replace_scope(PROD, [image()])

    seconds = leading(current).get_sample_value(
        "fastlaunch_image_state_transition_timestamp_seconds", labels()
    )

    assert seconds == pytest.approx(1_795_687_200.123, abs=1e-6)


def test_the_state_gauge_is_one_for_the_current_state_and_zero_for_the_other_known_ones():
    current = CurrentState()
    current.replace_scope(PROD, [image(state="enabling-failed")])
    registry = leading(current)

    values = {
        state: registry.get_sample_value("fastlaunch_image_state", labels(state=state))
        for state in KNOWN_STATES
    }

    assert values == {state: 1.0 if state == "enabling-failed" else 0.0 for state in KNOWN_STATES}


def test_an_unknown_state_gets_a_series_of_its_own_next_to_the_known_ones():
    current = CurrentState()
    current.replace_scope(PROD, [image(state="hibernating")])
    registry = leading(current)

    states = [
        sample.labels["state"]
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "fastlaunch_image_state"
    ]

    assert states == [*KNOWN_STATES, "hibernating"]
    assert registry.get_sample_value("fastlaunch_image_state", labels(state="hibernating")) == 1
    assert registry.get_sample_value("fastlaunch_image_state", labels(state="enabled")) == 0


def test_what_aws_left_out_exports_no_series_and_empty_info_labels():
    current = CurrentState()
    bare = image(
        target_resource_count=None,
        max_parallel_launches=None,
        state_transition_time=None,
        owner_id=None,
        resource_type=None,
        launch_template_id=None,
        launch_template_name=None,
        launch_template_version=None,
    )
    current.replace_scope(PROD, [bare])
    registry = leading(current)

    assert registry.get_sample_value("fastlaunch_image_target_resources", labels()) is None
    assert registry.get_sample_value("fastlaunch_image_max_parallel_launches", labels()) is None
    assert (
        registry.get_sample_value("fastlaunch_image_state_transition_timestamp_seconds", labels())
        is None
    )
    empty = dict.fromkeys(
        (
            "owner_id",
            "resource_type",
            "launch_template_id",
            "launch_template_name",
            "launch_template_version",
        ),
        "",
    )
    assert registry.get_sample_value("fastlaunch_image_info", labels(**empty)) == 1


def test_a_removed_image_has_no_series_left():
    current = CurrentState()
    current.replace_scope(PROD, [image("ami-1"), image("ami-2")])
    registry = leading(current)

    current.replace_scope(PROD, [image("ami-2")])

    assert all(
        sample.labels["image_id"] == "ami-2"
        for family in registry.collect()
        for sample in family.samples
        if sample.name.startswith("fastlaunch_image_")
    )
    assert b"ami-1" not in body(registry)


def test_a_failed_poll_keeps_the_image_gauges_and_sets_poll_success_to_zero():
    current = CurrentState()
    registry, metrics = build_registry(current)
    metrics.set_leader(True)
    current.replace_scope(PROD, [image()])
    metrics.poll_finished(poll(), [])
    before = body(registry).split(b"\n")

    metrics.poll_finished(poll(error="RequestLimitExceeded"), [])

    assert registry.get_sample_value("fastlaunch_poll_success", scope_labels()) == 0
    assert registry.get_sample_value("fastlaunch_image_target_resources", labels()) == 5
    after = body(registry).split(b"\n")
    assert [line for line in after if line.startswith(b"fastlaunch_image_")] == [
        line for line in before if line.startswith(b"fastlaunch_image_")
    ]


def test_a_successful_poll_records_success_duration_and_when_it_finished():
    registry, metrics = build_registry(CurrentState())

    metrics.poll_finished(poll(duration=1.5), [])

    value = registry.get_sample_value
    assert value("fastlaunch_poll_success", scope_labels()) == 1
    assert value("fastlaunch_poll_duration_seconds_count", scope_labels()) == 1
    assert value("fastlaunch_poll_duration_seconds_sum", scope_labels()) == 1.5
    assert value("fastlaunch_poll_duration_seconds_bucket", scope_labels(le="2.5")) == 1
    assert value("fastlaunch_poll_duration_seconds_bucket", scope_labels(le="1.0")) == 0
    assert value("fastlaunch_last_successful_poll_timestamp_seconds", scope_labels()) == (
        CHANGED_AT.timestamp() + 1.5
    )


def test_a_failed_poll_counts_its_error_and_leaves_the_last_success_time():
    registry, metrics = build_registry(CurrentState())
    metrics.poll_finished(poll(), [])

    metrics.poll_finished(poll(error="AccessDenied"), [])
    metrics.poll_finished(poll(error="AccessDenied"), [])
    metrics.poll_finished(poll(error="ReadTimeoutError"), [])

    value = registry.get_sample_value
    assert value("fastlaunch_poll_errors_total", scope_labels(error="AccessDenied")) == 2
    assert value("fastlaunch_poll_errors_total", scope_labels(error="ReadTimeoutError")) == 1
    assert value("fastlaunch_last_successful_poll_timestamp_seconds", scope_labels()) == (
        CHANGED_AT.timestamp() + 1.5
    )
    assert value("fastlaunch_poll_duration_seconds_count", scope_labels()) == 4


def test_transitions_are_counted_by_scope_and_new_state():
    registry, metrics = build_registry(CurrentState())
    moves = [
        Transition("ami-1", None, "enabling", CHANGED_AT, ""),
        Transition("ami-1", "enabling", "enabling-failed", CHANGED_AT, ""),
        Transition("ami-2", None, "enabling", CHANGED_AT, ""),
    ]

    metrics.poll_finished(poll(), moves)
    metrics.poll_finished(poll(OTHER), moves[:1])

    value = registry.get_sample_value
    assert value("fastlaunch_transitions_total", scope_labels(state="enabling")) == 2
    assert value("fastlaunch_transitions_total", scope_labels(state="enabling-failed")) == 1
    assert value("fastlaunch_transitions_total", scope_labels(OTHER, state="enabling")) == 1


def test_the_alert_series_are_there_for_the_dispatcher_to_update():
    registry, metrics = build_registry(CurrentState())

    metrics.alerts_pending.labels(receiver="ops").set(3)
    metrics.alert_deliveries_total.labels(receiver="ops", outcome="retry").inc()

    value = registry.get_sample_value
    assert value("fastlaunch_alerts_pending", {"receiver": "ops"}) == 3
    assert value("fastlaunch_alert_deliveries_total", {"receiver": "ops", "outcome": "retry"}) == 1


def test_a_standby_exports_its_own_series_but_no_image_series():
    current = CurrentState()
    current.replace_scope(PROD, [image()])
    registry, metrics = build_registry(current)
    metrics.set_leader(False)
    metrics.poll_finished(poll(), [])

    assert image_series(registry) == []
    assert registry.get_sample_value("fastlaunch_leader") == 0
    assert registry.get_sample_value("fastlaunch_poll_success", scope_labels()) == 1
    assert b"fastlaunch_image_" not in body(registry)


def test_image_series_follow_leadership_by_default():
    current = CurrentState()
    current.replace_scope(PROD, [image()])
    registry, metrics = build_registry(current)
    assert image_series(registry) == []

    metrics.set_leader(True)
    assert registry.get_sample_value("fastlaunch_leader") == 1
    assert image_series(registry) != []

    metrics.set_leader(False)
    assert image_series(registry) == []


def test_an_explicit_exporting_switch_decides_over_leadership():
    current = CurrentState()
    current.replace_scope(PROD, [image()])
    exporting = False
    registry, metrics = build_registry(current, exporting=lambda: exporting)
    metrics.set_leader(True)
    assert image_series(registry) == []

    exporting = True

    assert image_series(registry) != []


def test_nothing_is_registered_on_the_global_registry():
    build_registry(CurrentState())
    build_registry(CurrentState())

    names = {family.name for family in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("fastlaunch_") for name in names)


def test_a_registry_refuses_a_second_image_collector():
    registry = CollectorRegistry()
    registry.register(ImageCollector(CurrentState()))

    with pytest.raises(ValueError, match="fastlaunch_image_state"):
        registry.register(ImageCollector(CurrentState()))


AWKWARD_IMAGES = [
    (PROD, image("ami-1")),
    (PROD, image("ami-2", state='weird"state\\', target_resource_count=1_234_567)),
    (PROD, image("ami-3", launch_template_name='quote"back\\slash\nnewline', owner_id=None)),
    (PROD, image("ami-4", state_transition_time=None, max_parallel_launches=None)),
    (Scope('ta"rget\\', "333333333333", "ap-south-2"), image("ami-5", state="disabling")),
    (Scope("žluťoučký", "444444444444", "eu-central-1"), image("ami-6", resource_type=None)),
    (OTHER, image("ami-7", state_transition_time=CHANGED_AT + timedelta(microseconds=1))),
]


def awkward_registry() -> CollectorRegistry:
    current = CurrentState()
    for scope in {scope for scope, _ in AWKWARD_IMAGES}:
        current.replace_scope(scope, [img for s, img in AWKWARD_IMAGES if s == scope])
    registry, metrics = build_registry(current)
    metrics.set_leader(True)
    metrics.poll_finished(poll(), [Transition("ami-1", None, "enabled", CHANGED_AT, "")])
    awkward = poll(Scope('ta"rget\\', "333333333333", "ap-south-2"))
    changed = Transition(image().image_id, "enabling", "enabled", CHANGED_AT, "")
    metrics.poll_finished(awkward, [changed], CHANGED_AT + timedelta(seconds=90.25))
    metrics.alerts_pending.labels(receiver="ops").set(1)
    return registry


def test_the_text_exposition_is_byte_for_byte_what_prometheus_client_renders():
    registry = awkward_registry()

    rendered = exposition(registry, None)

    assert rendered.content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert rendered.text() == generate_latest(registry)


def test_the_openmetrics_exposition_is_byte_for_byte_what_prometheus_client_renders():
    registry = awkward_registry()

    rendered = exposition(registry, OPENMETRICS)

    assert rendered.content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert rendered.text() == openmetrics.generate_latest(registry)


@pytest.mark.parametrize("escaping", ["allow-utf-8", "underscores", "dots", "values"])
def test_every_negotiated_name_escaping_renders_as_prometheus_client_does(escaping: str):
    registry = awkward_registry()

    text = body(registry, f"text/plain; version=1.0.0; escaping={escaping}")
    om = body(registry, f"application/openmetrics-text; version=1.0.0; escaping={escaping}")

    assert text == generate_latest(registry, escaping=escaping)
    assert om == openmetrics.generate_latest(registry, escaping=escaping)


def test_the_exposition_parses_back_into_the_images_gauges():
    registry = awkward_registry()

    families = {f.name: f for f in text_string_to_metric_families(body(registry).decode())}

    counts = {
        s.labels["image_id"]: s.value for s in families["fastlaunch_image_target_resources"].samples
    }
    assert counts == {f"ami-{n}": 5 for n in range(1, 8)} | {"ami-2": 1_234_567}
    info = {s.labels["image_id"]: s.labels for s in families["fastlaunch_image_info"].samples}
    assert info["ami-3"]["launch_template_name"] == 'quote"back\\slash\nnewline'
    assert info["ami-5"]["target"] == 'ta"rget\\'


label_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
any_scope = st.builds(Scope, target=label_text, account_id=label_text, region=label_text)
any_image = st.builds(
    image,
    image_id=label_text,
    state=label_text,
    launch_template_name=st.none() | label_text,
    owner_id=st.none() | label_text,
    target_resource_count=st.none() | st.integers(min_value=0, max_value=10**12),
    state_transition_time=st.none() | st.datetimes(timezones=st.just(UTC)),
)


@settings(max_examples=60, deadline=None)
@given(scope=any_scope, images=st.lists(any_image, max_size=3))
def test_any_label_text_renders_as_prometheus_client_renders_it(scope, images):
    current = CurrentState()
    current.replace_scope(scope, images)
    registry = leading(current)

    assert body(registry) == generate_latest(registry)
    assert body(registry, OPENMETRICS) == openmetrics.generate_latest(registry)


def test_ten_thousand_images_render_in_well_under_a_second():
    current = CurrentState()
    for n, scope in enumerate((PROD, OTHER)):
        current.replace_scope(
            scope,
            [
                image(
                    f"ami-{n}{i:016x}",
                    state=KNOWN_STATES[i % len(KNOWN_STATES)],
                    state_transition_time=CHANGED_AT + timedelta(seconds=i),
                )
                for i in range(5_000)
            ],
        )
    registry = leading(current)

    started = time.perf_counter()
    rendered = exposition(registry, None).text()
    elapsed = time.perf_counter() - started

    # The scopes changed before the registry watched them, so this scrape renders them all:
    # about 0.1 s on one core. (A watched change is rendered by the poll that made it.)
    assert elapsed < 1.0
    assert rendered.count(b"\nfastlaunch_image_state{") == 60_000


def test_a_scopes_image_text_is_rendered_once_when_it_changes_and_never_by_a_scrape(
    monkeypatch: pytest.MonkeyPatch,
):
    rendered: list[Scope] = []
    render = image_exposition.render_scope

    def counting(scope: Scope, images):  # type: ignore[no-untyped-def]
        rendered.append(scope)
        return render(scope, images)

    monkeypatch.setattr(image_exposition, "render_scope", counting)
    current = CurrentState()
    registry = leading(current)

    current.replace_scope(PROD, [image("ami-1"), image("ami-2")])
    first = body(registry)
    current.replace_scope(PROD, [image("ami-2"), image("ami-1")])  # unchanged
    again = body(registry)
    current.replace_scope(PROD, [image("ami-1", state="enabled-failed"), image("ami-2")])
    changed = body(registry)

    assert rendered == [PROD, PROD]
    assert first == again != changed
    assert changed == generate_latest(registry)


def test_images_loaded_without_a_change_are_rendered_by_the_first_scrape_only(
    monkeypatch: pytest.MonkeyPatch,
):
    current = CurrentState()
    current.replace_scope(PROD, [image("ami-1")])  # before anyone watches
    registry = leading(current)
    calls: list[Scope] = []
    render = image_exposition.render_scope
    monkeypatch.setattr(
        image_exposition, "render_scope", lambda s, i: calls.append(s) or render(s, i)
    )

    assert body(registry) == body(registry) == generate_latest(registry)
    assert calls == [PROD]


def test_the_gzipped_body_is_a_series_of_members_that_gzip_reads_as_the_plain_text():
    current = CurrentState()
    current.replace_scope(PROD, [image("ami-1")])
    current.replace_scope(OTHER, [image("ami-2")])
    registry = leading(current)
    rendered = exposition(registry, OPENMETRICS)

    gzipped = rendered.gzipped()
    data = b"".join(gzipped.chunks)

    assert len(data) == gzipped.length
    assert data.count(b"\x1f\x8b\x08") > 10  # one member per scope and family, and the rest
    assert gzip.decompress(data) == rendered.text() == openmetrics.generate_latest(registry)
    assert rendered.plain().length == len(rendered.text())
