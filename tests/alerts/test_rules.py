from dataclasses import replace
from datetime import timedelta

from monitor.alerts.rules import (
    FAILED,
    FIRING,
    RESOLVED,
    STUCK,
    AlertKey,
    Receiver,
    alerts_for_poll,
)
from monitor.core.diff import diff_images
from monitor.core.model import FAILED_STATES, Scope
from tests.builders import T0
from tests.builders import an_image as image

SCOPE = Scope("prod", "123456789012", "us-east-1")
NOW = T0 + timedelta(minutes=5)
OPS = Receiver("ops", FAILED_STATES)


def alerts(before, after, receivers=(OPS,), now=NOW, stuck_after=0.0):
    previous = {i.image_id: i for i in before}
    diff = diff_images(previous, after, now)
    events = alerts_for_poll(
        SCOPE, previous, diff, receivers, now, stuck_after=stuck_after, current=after
    )
    return [(e.key.receiver, e.key.kind, e.key.status, e.key.state, e.key.since) for e in events]


def test_a_transition_into_a_failed_state_fires_once():
    failed = image("enabling-failed", T0 + timedelta(minutes=1))
    assert alerts([image("enabling")], [failed]) == [
        ("ops", FAILED, FIRING, "enabling-failed", failed.state_transition_time)
    ]


def test_the_first_sight_of_an_image_already_failed_fires():
    assert alerts([], [image("enabled-failed")]) == [("ops", FAILED, FIRING, "enabled-failed", T0)]


def test_an_unchanged_failed_image_fires_nothing_more():
    assert alerts([image("enabled-failed")], [image("enabled-failed")]) == []


def test_the_same_failed_state_with_a_new_time_is_a_new_failure():
    again = T0 + timedelta(minutes=2)
    assert alerts([image("enabled-failed")], [image("enabled-failed", again)]) == [
        ("ops", FAILED, FIRING, "enabled-failed", again)
    ]


def test_a_non_failed_transition_fires_nothing():
    assert alerts([image("enabling")], [image("enabled", T0 + timedelta(minutes=1))]) == []


def test_leaving_a_failed_state_resolves_the_alert_of_that_failure():
    recovered = image("enabled", T0 + timedelta(minutes=3))
    assert alerts([image("enabled-failed")], [recovered]) == [
        ("ops", FAILED, RESOLVED, "enabled-failed", T0)
    ]


def test_removal_of_a_failed_image_resolves_its_alert():
    assert alerts([image("disabling-failed")], []) == [
        ("ops", FAILED, RESOLVED, "disabling-failed", T0)
    ]


def test_no_resolve_is_sent_to_a_receiver_without_send_resolved():
    quiet = Receiver("quiet", FAILED_STATES, send_resolved=False)
    assert alerts([image("enabled-failed")], [image("enabled", NOW)], receivers=(quiet,)) == []


def test_each_receiver_gets_the_states_it_asked_for():
    strict = Receiver("strict", frozenset({"enabling-failed"}))
    broad = Receiver("broad", frozenset({"enabling-failed", "enabled-failed"}))
    events = alerts([image("enabled")], [image("enabled-failed", NOW)], receivers=(strict, broad))
    assert events == [("broad", FAILED, FIRING, "enabled-failed", NOW)]


def test_an_image_stuck_in_enabling_past_stuck_after_fires_a_stuck_alert():
    stuck = image("enabling", NOW - timedelta(hours=3))
    assert alerts([stuck], [stuck], stuck_after=7200) == [
        ("ops", STUCK, FIRING, "enabling", stuck.state_transition_time)
    ]


def test_an_image_in_enabling_for_less_than_stuck_after_is_not_stuck():
    fresh = image("enabling", NOW - timedelta(minutes=30))
    assert alerts([fresh], [fresh], stuck_after=7200) == []


def test_stuck_after_0_disables_stuck_alerts():
    old = image("disabling", NOW - timedelta(days=3))
    assert alerts([old], [old], stuck_after=0) == []


def test_a_stuck_image_that_moves_on_resolves_its_stuck_alert():
    stuck = image("enabling", NOW - timedelta(hours=3))
    assert alerts([stuck], [image("enabled", NOW)], stuck_after=7200) == [
        ("ops", STUCK, RESOLVED, "enabling", stuck.state_transition_time)
    ]


def test_a_stuck_image_that_fails_fires_the_failure_and_resolves_the_stuck_alert():
    stuck = image("enabling", NOW - timedelta(hours=3))
    events = alerts([stuck], [image("enabling-failed", NOW)], stuck_after=7200)
    assert events == [
        ("ops", FAILED, FIRING, "enabling-failed", NOW),
        ("ops", STUCK, RESOLVED, "enabling", stuck.state_transition_time),
    ]


def test_a_resolve_paired_with_its_firing_takes_that_firing_s_since_and_a_matching_event_id():
    # AWS gave the failure no time: its firing was keyed by the poll that first saw it (T0),
    # which only the outbox knows; the rules can only offer this poll's time.
    previous = {"ami-1": image("enabled-failed", None)}
    recovered = image("enabled", NOW)
    diff = diff_images(previous, [recovered], NOW)
    (resolve,) = alerts_for_poll(SCOPE, previous, diff, [OPS], NOW, current=[recovered])
    paired = resolve.resolving(T0, 0)
    assert paired.key == replace(resolve.key, since=T0)
    assert paired.event_id != resolve.event_id
    assert paired.payload == {**resolve.payload, "event_id": paired.event_id}


def test_the_event_id_is_the_same_for_the_same_alert_and_differs_otherwise():
    key = AlertKey("ops", SCOPE, "ami-1", FAILED, "enabled-failed", T0, FIRING)
    assert key.event_id == replace(key).event_id
    assert key.event_id != replace(key, status=RESOLVED).event_id
    assert key.event_id != replace(key, since=T0 + timedelta(milliseconds=1)).event_id


def test_the_payload_follows_the_spec():
    previous = {"ami-1": image("enabling")}
    failed = image("enabling-failed", NOW, state_transition_reason="Client.LaunchTemplateNotFound")
    diff = diff_images(previous, [failed], NOW)
    (event,) = alerts_for_poll(SCOPE, previous, diff, [OPS], NOW, current=[failed])
    assert event.payload == {
        "version": 1,
        "event_id": event.event_id,
        "status": "firing",
        "kind": "failed",
        "target": "prod",
        "account_id": "123456789012",
        "region": "us-east-1",
        "image_id": "ami-1",
        "state": "enabling-failed",
        "previous_state": "enabling",
        "state_transition_reason": "Client.LaunchTemplateNotFound",
        "state_transition_time": "2026-11-26T10:05:00.123Z",
        "observed_at": "2026-11-26T10:05:00.123Z",
        "target_resource_count": 5,
        "max_parallel_launches": 6,
        "launch_template": {"id": "lt-1", "name": "win", "version": "2"},
    }
