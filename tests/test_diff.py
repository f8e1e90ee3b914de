from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from monitor.core.diff import diff_images
from monitor.core.model import KNOWN_STATES, REMOVED
from tests.builders import T0, an_image

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def image(image_id="ami-1", state="enabled", when=T0, **changes):
    changes = {"launch_template_name": None, "launch_template_version": "1", **changes}
    return an_image(state, when, image_id, **changes)


def by_id(*images):
    return {i.image_id: i for i in images}


def test_an_unchanged_poll_records_nothing():
    diff = diff_images(by_id(image()), [image()], NOW)
    assert diff.is_empty


def test_the_first_sight_of_an_image_is_a_transition_from_no_state():
    diff = diff_images({}, [image(state="enabling-failed")], NOW)
    (t,) = diff.transitions
    assert (t.previous_state, t.new_state, t.transition_time) == (None, "enabling-failed", T0)
    assert diff.upserts == (image(state="enabling-failed"),)


def test_a_state_change_is_a_transition():
    later = T0 + timedelta(minutes=5)
    diff = diff_images(by_id(image(state="enabling")), [image(state="enabled", when=later)], NOW)
    (t,) = diff.transitions
    assert (t.previous_state, t.new_state, t.transition_time) == ("enabling", "enabled", later)


def test_the_same_state_with_a_new_time_is_a_new_transition():
    before = image(state="enabling-failed")
    again = image(state="enabling-failed", when=T0 + timedelta(seconds=30))
    (t,) = diff_images(by_id(before), [again], NOW).transitions
    assert (t.previous_state, t.new_state) == ("enabling-failed", "enabling-failed")


def test_a_changed_count_rewrites_the_image_without_a_transition():
    diff = diff_images(by_id(image()), [image(target_resource_count=9)], NOW)
    assert diff.transitions == ()
    assert diff.upserts == (image(target_resource_count=9),)


def test_an_image_no_longer_listed_is_removed():
    diff = diff_images(by_id(image("ami-1"), image("ami-2")), [image("ami-1")], NOW)
    assert diff.removed == ("ami-2",)
    (t,) = diff.transitions
    assert (t.image_id, t.previous_state, t.new_state, t.transition_time) == (
        "ami-2",
        "enabled",
        REMOVED,
        NOW,
    )


def test_a_transition_without_aws_time_is_dated_by_the_observation():
    (t,) = diff_images({}, [image(when=None)], NOW).transitions
    assert t.transition_time == NOW


def test_an_image_listed_twice_counts_once():
    diff = diff_images({}, [image(), image(state="enabling")], NOW)
    assert len(diff.transitions) == 1
    assert diff.upserts == (image(),)


# A snapshot: image id -> (state, seconds after T0 of its transition time).
snapshots = st.dictionaries(
    st.sampled_from([f"ami-{n}" for n in range(6)]),
    st.tuples(st.sampled_from(KNOWN_STATES), st.integers(0, 3)),
    max_size=6,
)


def as_images(snapshot):
    return [image(i, state, T0 + timedelta(seconds=s)) for i, (state, s) in snapshot.items()]


@given(st.lists(snapshots, min_size=1, max_size=8))
def test_replaying_recorded_transitions_over_the_first_poll_yields_the_last(polls):
    stored = by_id(*as_images(polls[0]))
    replayed = {i: (img.state, img.state_transition_time) for i, img in stored.items()}
    for snapshot in polls[1:]:
        diff = diff_images(stored, as_images(snapshot), NOW)
        for t in diff.transitions:
            if t.new_state == REMOVED:
                del replayed[t.image_id]
            else:
                replayed[t.image_id] = (t.new_state, t.transition_time)
        stored = {i: img for i, img in stored.items() if i not in diff.removed}
        stored.update(by_id(*diff.upserts))
    last = {
        i: (img.state, img.state_transition_time) for i, img in by_id(*as_images(polls[-1])).items()
    }
    assert replayed == last
    assert stored == by_id(*as_images(polls[-1]))


@given(snapshots, st.integers(1, 5))
def test_a_sequence_of_identical_polls_records_nothing(snapshot, repeats):
    stored = by_id(*as_images(snapshot))
    for _ in range(repeats):
        assert diff_images(stored, as_images(snapshot), NOW).is_empty
