"""Monotone maps from a teacher's age to the age our labels mean, fitted on labelled training faces.

A teacher's ages carry its own training set's biases: HSE FaceRes learned IMDB's celebrities and underestimates
Asian faces and everyone past 40 more and more (docs/experiments/teachers.md). Distilling its raw ages passes that
bias on. A monotone map keeps the teacher's ordering of faces, the knowledge we want, and replaces its age scale
with the labels' scale. Two kinds:

  quantile  the teacher's k-th percentile goes to the labels' k-th percentile (matches the age distribution, keeps
            the spread of the teacher's answers: no pull towards the mean age)
  median    the median true age among faces with about that teacher age, made non-decreasing (the best single
            guess given the teacher's answer alone; pulls towards the mean age where the teacher is unsure)

Maps are fitted per dataset, since the bias differs between populations (AAF's Asian faces, UTKFace's mix).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

METHODS = ("quantile", "median")
MIN_FACES = 200  # fewer labelled faces than this give too noisy a map


@dataclass
class AgeCalibration:
    method: str
    teacher_ages: list  # knots: teacher age ...
    true_ages: list  # ... and the age it maps to; linear between knots, constant beyond the ends
    faces: int  # labelled faces the map was fitted on
    fitted_on: str = ""  # the datasets they came from

    def __call__(self, ages: np.ndarray) -> np.ndarray:
        ages = np.asarray(ages, np.float64)
        mapped = np.interp(ages, self.teacher_ages, self.true_ages)
        return np.where(np.isfinite(ages), mapped, np.nan).astype(np.float32)

    def to_json(self) -> dict:
        return {**asdict(self), "teacher_ages": [round(float(a), 3) for a in self.teacher_ages],
                "true_ages": [round(float(a), 3) for a in self.true_ages]}


def _non_decreasing(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least-squares non-decreasing fit (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for value, weight in zip(values, weights):
        blocks.append([float(value), float(weight), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (v1, w1, c1), (v2, w2, c2) = blocks[-2], blocks.pop()
            blocks[-1] = [(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, c1 + c2]
    return np.concatenate([np.full(count, mean) for mean, _, count in blocks])


def fit_calibration(teacher_ages, true_ages, method: str = "quantile", knots: int = 101,
                    fitted_on: str = "") -> AgeCalibration:
    """The monotone map from teacher age to true age over the faces where both are known."""
    if method not in METHODS:
        raise ValueError(f"teacher calibration {method!r}: expected one of {', '.join(METHODS)}")
    teacher_ages, true_ages = np.asarray(teacher_ages, np.float64), np.asarray(true_ages, np.float64)
    known = np.isfinite(teacher_ages) & np.isfinite(true_ages)
    teacher_ages, true_ages = teacher_ages[known], true_ages[known]
    if len(teacher_ages) < MIN_FACES:
        raise ValueError(f"teacher calibration needs at least {MIN_FACES} faces with both a label and a teacher "
                         f"answer, got {len(teacher_ages)}")
    levels = np.linspace(0.0, 1.0, knots)
    if method == "quantile":
        x, y = np.quantile(teacher_ages, levels), np.quantile(true_ages, levels)
    else:
        # Equal-count bins of teacher age; each bin's median true age, then made non-decreasing.
        edges = np.quantile(teacher_ages, levels)
        bins = np.clip(np.searchsorted(edges, teacher_ages, side="right") - 1, 0, knots - 2)
        groups = [group for group in (bins == b for b in range(knots - 1)) if group.any()]
        x = np.array([np.median(teacher_ages[group]) for group in groups])
        medians = np.array([np.median(true_ages[group]) for group in groups])
        y = _non_decreasing(medians, np.array([group.sum() for group in groups], np.float64))
    x, unique = np.unique(x, return_index=True)  # np.interp needs increasing knots
    return AgeCalibration(method, x.tolist(), np.asarray(y)[unique].tolist(), int(len(teacher_ages)), fitted_on)
