"""Per-face tracking across frames with temporal smoothing of age and gender (ROS-free, NumPy only).

`FaceTracker.update(faces)` takes one frame's face estimates (anything with `box` (x1, y1, x2, y2), `score`,
`age`, `age_std` and `p_male`, e.g. `estimator.FaceEstimate`) and returns a `TrackedFace` for each, in the same
order, carrying a stable track id and smoothed values:

* association: greedy one-to-one matching of detections to live tracks by box IoU (highest IoU first,
  pairs under `iou_threshold` never match) -- enough for faces, which rarely cross at camera frame rates;
* smoothing: an exponential moving average of age, of the ensemble's age spread and of P(male) in logit
  space (so a confident frame is not undone by one averaging step near 0.5). `smoothing` is the weight of the
  past: 0 = raw per-frame values, 0.9 = heavy. While a track is young every frame so far gets equal weight
  (weight of the new frame = max(1 - smoothing, 1 / frames seen)), so the first frames are not over-trusted;
* expiry: a track survives `max_missed` consecutive frames without a match and is dropped on the next one;
* ids: 1, 2, 3, ... never reused while the process runs (0 means "untracked" in AgeGender.msg), wrapping
  within uint32. Trackers that share a `TrackIds` (one per camera in the node) hand out distinct ids.

Runs on Python 3.8 (JetPack 4.6 containers).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

UINT32_MAX = 2 ** 32 - 1
_P_EPS = 1e-4  # P(male) is clipped to [eps, 1 - eps] before the logit


class TrackIds:
    """Thread-safe source of track ids 1, 2, ..., UINT32_MAX, then 1 again."""

    def __init__(self, start: int = 1):
        self._next = start
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            value = self._next
            self._next = value + 1 if value < UINT32_MAX else 1
            return value


def _logit(p: float) -> float:
    p = min(max(float(p), _P_EPS), 1.0 - _P_EPS)
    return math.log(p / (1.0 - p))


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (N x 4, x1 y1 x2 y2) with every box in `b` (M x 4): N x M."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def greedy_match(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """One-to-one (row, column) pairs, highest IoU first, each with IoU >= threshold (and > 0)."""
    if iou.size == 0:
        return []
    rows, cols = np.nonzero((iou >= threshold) & (iou > 0))
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_rows, used_cols, pairs = set(), set(), []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r not in used_rows and c not in used_cols:
            used_rows.add(r)
            used_cols.add(c)
            pairs.append((r, c))
    return pairs


@dataclass
class TrackedFace:
    """One face of the current frame: the detection's box and score, the track's smoothed estimates."""

    track_id: int
    box: tuple  # x1, y1, x2, y2 of this frame's detection (not smoothed)
    score: float
    age: float  # smoothed
    age_std: float  # smoothed
    p_male: float  # smoothed
    hits: int  # frames this track has been matched in, this one included
    raw: Any = field(default=None, repr=False)  # the estimate as it came in

    @property
    def gender(self) -> str:
        return "male" if self.p_male >= 0.5 else "female"

    @property
    def gender_confidence(self) -> float:
        return max(self.p_male, 1.0 - self.p_male)


@dataclass
class _Track:
    track_id: int
    box: np.ndarray
    age: float
    age_std: float
    logit_male: float
    hits: int = 1
    missed: int = 0


class FaceTracker:
    """IoU tracker + exponential smoothing for one image stream. Not thread-safe: one caller at a time."""

    def __init__(self, iou_threshold: float = 0.3, smoothing: float = 0.6, max_missed: int = 5,
                 ids: TrackIds | None = None):
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        if max_missed < 0:
            raise ValueError(f"max_missed must be >= 0, got {max_missed}")
        self.iou_threshold = float(iou_threshold)
        self.smoothing = float(smoothing)
        self.max_missed = int(max_missed)
        self._ids = ids or TrackIds()
        self._tracks: list[_Track] = []

    @property
    def active_tracks(self) -> int:
        return len(self._tracks)

    def reset(self) -> None:
        self._tracks = []

    def update(self, faces: Sequence[Any]) -> list[TrackedFace]:
        """Associate this frame's faces with the tracks, update them and return one TrackedFace per face."""
        boxes = np.array([[float(v) for v in f.box] for f in faces], np.float64).reshape(-1, 4)
        track_boxes = np.array([t.box for t in self._tracks], np.float64).reshape(-1, 4)
        pairs = greedy_match(iou_matrix(boxes, track_boxes), self.iou_threshold)
        track_of = {face_index: track_index for face_index, track_index in pairs}

        out: list[TrackedFace] = []
        matched_tracks = set(track_of.values())
        new_tracks: list[_Track] = []
        for i, face in enumerate(faces):
            logit = _logit(face.p_male)
            if i in track_of:
                track = self._tracks[track_of[i]]
                track.hits += 1
                track.missed = 0
                weight = max(1.0 - self.smoothing, 1.0 / track.hits)
                track.age += weight * (float(face.age) - track.age)
                track.age_std += weight * (float(face.age_std) - track.age_std)
                track.logit_male += weight * (logit - track.logit_male)
                track.box = boxes[i]
            else:
                track = _Track(self._ids(), boxes[i], float(face.age), float(face.age_std), logit)
                new_tracks.append(track)
            out.append(TrackedFace(track.track_id, tuple(float(v) for v in boxes[i]), float(face.score),
                                   track.age, track.age_std, _sigmoid(track.logit_male), track.hits, face))

        survivors = []
        for index, track in enumerate(self._tracks):
            if index not in matched_tracks:
                track.missed += 1
                if track.missed > self.max_missed:
                    continue
            survivors.append(track)
        self._tracks = survivors + new_tracks
        return out


def untracked(faces: Sequence[Any]) -> list[TrackedFace]:
    """The faces as they are, with track id 0 (tracking switched off)."""
    return [TrackedFace(0, tuple(float(v) for v in f.box), float(f.score), float(f.age), float(f.age_std),
                        float(f.p_male), 1, f) for f in faces]
