"""Evaluation metrics of the paper and the age-estimation literature: MAE, gender accuracy, CA(n), MAE per decade."""
from __future__ import annotations

import numpy as np


def cumulative_accuracy(age_true: np.ndarray, age_pred: np.ndarray, n: float) -> float:
    """CA(n): fraction of faces whose absolute age error is below n years (the paper's eq. 4, MegaAge-Asian)."""
    return float(np.mean(np.abs(np.asarray(age_pred) - np.asarray(age_true)) < n)) if len(age_true) else float("nan")


def age_gender_metrics(age_true, age_pred, gender_true, p_male, ca_years=(3, 5)) -> dict:
    """All metrics for one evaluation. Genders: 1 male, 0 female, -1 unknown (left out of gender accuracy); ages:
    NaN = unknown (CelebA's gender-only faces; left out of every age metric)."""
    age_true, age_pred = np.asarray(age_true, float), np.asarray(age_pred, float)
    gender_true, p_male = np.asarray(gender_true), np.asarray(p_male, float)
    n = len(age_true)
    aged = np.isfinite(age_true)
    age_true, age_pred = age_true[aged], age_pred[aged]
    errors = np.abs(age_pred - age_true)
    known = gender_true >= 0
    metrics = {
        "n": int(n),
        "age_n": int(aged.sum()),
        # None, like gender_acc without genders, where no face has an age (CelebA): NaN is not JSON
        "mae": float(errors.mean()) if len(errors) else None,
        "gender_acc": float(np.mean((p_male[known] >= 0.5) == (gender_true[known] == 1))) if known.any()
        else None,
        "gender_n": int(known.sum()),
    }
    for n in ca_years:
        metrics[f"ca{n}"] = cumulative_accuracy(age_true, age_pred, n) if len(errors) else None
    metrics["mae_by_decade"] = mae_by_decade(age_true, age_pred)
    return metrics


def mae_by_decade(age_true: np.ndarray, age_pred: np.ndarray) -> dict[str, dict]:
    """Per decade of true age: faces, MAE, and bias (mean signed error, + = too old), which shows a pull towards
    the training data's mean age that the MAE alone hides."""
    errors = np.asarray(age_pred, np.float64) - np.asarray(age_true, np.float64)
    decades = (np.asarray(age_true) // 10).astype(int)
    rows = {}
    for d in np.unique(decades):
        in_decade = errors[decades == d]
        rows[f"{d * 10}-{d * 10 + 9}"] = {"n": int(in_decade.size), "mae": float(np.abs(in_decade).mean()),
                                          "bias": float(in_decade.mean())}
    return rows


def gender_confusion(gender_true, p_male) -> list[list[int]]:
    """2x2 counts [[female->female, female->male], [male->female, male->male]] over faces with a known gender."""
    gender_true, p_male = np.asarray(gender_true), np.asarray(p_male)
    known = gender_true >= 0
    truth, pred = gender_true[known] == 1, p_male[known] >= 0.5
    return [[int((~truth & ~pred).sum()), int((~truth & pred).sum())],
            [int((truth & ~pred).sum()), int((truth & pred).sum())]]


def mean_over_folds(fold_metrics: list[dict]) -> dict:
    """Mean (and std) of the scalar metrics over folds; the paper reports k-fold means."""
    summary = {}
    for key in ("mae", "gender_acc", "ca3", "ca5"):
        values = [m[key] for m in fold_metrics if m.get(key) is not None]
        if values:
            summary[key] = float(np.mean(values))
            summary[f"{key}_std"] = float(np.std(values))
    summary["n"] = int(sum(m["n"] for m in fold_metrics))
    summary["folds"] = len(fold_metrics)
    return summary
