"""ROS-free face tracker (agegender_ros.tracking): stable ids, smoothing, expiry, id sources."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from agegender_ros.tracking import UINT32_MAX, FaceTracker, TrackIds, greedy_match, iou_matrix, untracked


@dataclass
class Face:
    box: tuple
    age: float = 30.0
    p_male: float = 0.5
    score: float = 0.9
    age_std: float = 1.0


def face_at(x, y, size=100, **kw):
    return Face((x, y, x + size, y + size), **kw)


def test_iou_matrix():
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [100, 100, 101, 101]])
    iou = iou_matrix(a, b)
    assert iou.shape == (2, 3)
    assert iou[0, 0] == pytest.approx(1.0)
    assert iou[0, 1] == pytest.approx(50 / 150)
    assert iou[1].max() == 0.0
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)
    # Degenerate boxes give 0, not NaN.
    assert iou_matrix([[0, 0, 0, 0]], [[0, 0, 0, 0]])[0, 0] == 0.0


def test_greedy_match_prefers_the_best_pairs():
    iou = np.array([[0.9, 0.8], [0.85, 0.1]])
    assert sorted(greedy_match(iou, 0.3)) == [(0, 0)]  # row 1's only good match is taken by the better pair
    assert sorted(greedy_match(np.array([[0.9, 0.8], [0.85, 0.4]]), 0.3)) == [(0, 0), (1, 1)]
    assert greedy_match(np.array([[0.2]]), 0.3) == []


def test_ids_are_stable_for_moving_faces_and_follow_each_face():
    tracker = FaceTracker(smoothing=0.5)
    first = tracker.update([face_at(0, 0), face_at(300, 0)])
    ids = [f.track_id for f in first]
    assert ids == [1, 2]
    for step in range(1, 20):  # both move 10 px a frame; the order of the detections changes
        faces = [face_at(300 + 10 * step, 5 * step), face_at(10 * step, 0)]
        out = tracker.update(faces)
        assert [f.track_id for f in out] == [2, 1]
        assert out[0].box == faces[0].box  # the reported box is this frame's detection
        assert out[1].hits == step + 1
    assert tracker.active_tracks == 2


def test_a_new_face_gets_a_new_id_and_ids_are_never_reused():
    tracker = FaceTracker(max_missed=0)
    assert tracker.update([face_at(0, 0)])[0].track_id == 1
    assert tracker.update([face_at(500, 500)])[0].track_id == 2  # far away: new face, track 1 dropped
    assert tracker.update([face_at(0, 0)])[0].track_id == 3
    assert tracker.update([])[:] == []
    assert tracker.active_tracks == 0


def test_tracks_survive_max_missed_frames_then_expire():
    tracker = FaceTracker(max_missed=3)
    tid = tracker.update([face_at(0, 0)])[0].track_id
    for _ in range(3):
        assert tracker.update([]) == []
    assert tracker.active_tracks == 1
    assert tracker.update([face_at(5, 5)])[0].track_id == tid  # back within 3 missed frames
    for _ in range(4):
        tracker.update([])
    assert tracker.active_tracks == 0
    assert tracker.update([face_at(5, 5)])[0].track_id != tid


def test_smoothing_of_age_and_gender():
    tracker = FaceTracker(smoothing=0.8)
    ages = [30.0, 40.0, 30.0, 40.0, 30.0, 40.0] * 5
    out_ages = [tracker.update([face_at(0, 0, age=a)])[0].age for a in ages]
    # The first two frames are averaged equally, later ones with weight 0.2.
    assert out_ages[0] == 30.0 and out_ages[1] == pytest.approx(35.0)
    assert max(out_ages[10:]) - min(out_ages[10:]) < 3.0  # the 10-year flicker is damped to < 3 years
    assert 33.0 < out_ages[-1] < 37.0

    tracker = FaceTracker(smoothing=0.8)
    out = [tracker.update([face_at(0, 0, p_male=p)])[0] for p in [0.9, 0.3, 0.9, 0.3, 0.9, 0.3, 0.9, 0.3]]
    assert out[0].p_male == pytest.approx(0.9, abs=1e-6)
    assert all(f.gender == "male" for f in out)  # a single 0.3 frame does not flip a confident face
    # Smoothing is in logit space: the mean logit of 0.9 and 0.3 is logit ~ 0.67 -> p ~ 0.66.
    mean_logit = (math.log(9) + math.log(0.3 / 0.7)) / 2
    assert out[1].p_male == pytest.approx(1 / (1 + math.exp(-mean_logit)), abs=1e-6)
    assert out[-1].gender_confidence == max(out[-1].p_male, 1 - out[-1].p_male)


def test_converges_to_a_new_value():
    tracker = FaceTracker(smoothing=0.6)
    for _ in range(5):
        tracker.update([face_at(0, 0, age=20.0, p_male=0.1)])
    for _ in range(25):
        out = tracker.update([face_at(0, 0, age=60.0, p_male=0.95)])[0]
    assert out.age == pytest.approx(60.0, abs=0.1)
    assert out.p_male == pytest.approx(0.95, abs=0.01)


def test_no_smoothing_passes_values_through():
    tracker = FaceTracker(smoothing=0.0)
    for age, p in [(20.0, 0.2), (50.0, 0.8), (33.0, 0.4)]:
        out = tracker.update([face_at(0, 0, age=age, p_male=p, age_std=age / 10)])[0]
        assert out.age == pytest.approx(age)
        assert out.p_male == pytest.approx(p, abs=1e-6)
        assert out.age_std == pytest.approx(age / 10)
        assert out.track_id == 1


def test_extreme_probabilities_stay_finite():
    tracker = FaceTracker()
    for p in (0.0, 1.0, 0.0, float(np.float32(1.0))):
        out = tracker.update([face_at(0, 0, p_male=p)])[0]
        assert 0.0 < out.p_male < 1.0 and math.isfinite(out.p_male)


def test_shared_id_source_gives_distinct_ids_across_trackers():
    ids = TrackIds()
    a, b = FaceTracker(ids=ids), FaceTracker(ids=ids)
    got = [a.update([face_at(0, 0)])[0].track_id, b.update([face_at(0, 0)])[0].track_id,
           a.update([face_at(0, 0), face_at(400, 0)])[1].track_id]
    assert got == [1, 2, 3]


def test_ids_wrap_within_uint32_and_skip_zero():
    ids = TrackIds(start=UINT32_MAX - 1)
    assert [ids(), ids(), ids()] == [UINT32_MAX - 1, UINT32_MAX, 1]


def test_untracked_and_argument_checks():
    out = untracked([face_at(0, 0, age=12.0, p_male=0.25)])
    assert out[0].track_id == 0 and out[0].age == 12.0 and out[0].p_male == 0.25
    assert out[0].gender == "female"
    for kwargs in ({"smoothing": 1.0}, {"smoothing": -0.1}, {"iou_threshold": 0.0}, {"max_missed": -1}):
        with pytest.raises(ValueError):
            FaceTracker(**kwargs)


def test_reset_forgets_tracks():
    tracker = FaceTracker()
    tracker.update([face_at(0, 0)])
    tracker.reset()
    assert tracker.active_tracks == 0
    assert tracker.update([face_at(0, 0)])[0].track_id == 2
