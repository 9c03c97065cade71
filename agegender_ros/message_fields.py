"""The fields of an agegender_ros/AgeGender message for one face, without ROS.

Shared by the node (rclpy messages) and `agegender bag` (rosbags messages), so both fill the message the same
way: the box as a RegionOfInterest clipped to the image, P(male) clamped to 0..1, the reported gender and its
probability, the track id (0 = untracked). Python 3.8 compatible.
"""
from __future__ import annotations

import math

# The GENDER_* constants of msg/AgeGender.msg.
GENDER_UNKNOWN = 0
GENDER_FEMALE = 1
GENDER_MALE = 2


def roi_of(box, width: int, height: int) -> tuple:
    """(x_offset, y_offset, width, height) of a box (x1, y1, x2, y2): outward to whole pixels, clipped to the
    image; a non-finite coordinate counts as 0."""
    x1, y1, x2, y2 = (float(v) if math.isfinite(float(v)) else 0.0 for v in box)
    left = int(min(max(math.floor(x1), 0), width))
    top = int(min(max(math.floor(y1), 0), height))
    right = int(min(max(math.ceil(x2), left), width))
    bottom = int(min(max(math.ceil(y2), top), height))
    return left, top, right - left, bottom - top


def agegender_fields(face, width: int, height: int) -> dict:
    """AgeGender's fields for a face (tracking.TrackedFace, estimator.FaceEstimate or anything with box, score,
    age, age_std, p_male and optionally track_id); `roi` is the tuple from `roi_of`."""
    p_male = min(max(float(face.p_male), 0.0), 1.0)
    return {
        "roi": roi_of(face.box, width, height),
        "score": float(face.score),
        "age": float(face.age),
        "age_std": float(face.age_std),
        "gender": GENDER_MALE if p_male >= 0.5 else GENDER_FEMALE,
        "gender_confidence": max(p_male, 1.0 - p_male),
        "p_male": p_male,
        "track_id": int(getattr(face, "track_id", 0)),
    }
