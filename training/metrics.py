"""Evaluation metrics of the paper and the age-estimation literature: MAE, gender accuracy, CA(n), MAE per decade;
for age-group labels (FairFace): group accuracy, one-off group accuracy and years outside the group; reports per
race and per age group."""
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


def age_group_labelled(age_ranges) -> np.ndarray:
    """Which faces carry an age-group label [low, high), high > low: a year's label has low = high, an unknown age
    NaN (never greater). A numpy array (or list) gives a numpy mask, a torch tensor (the losses) a tensor."""
    ranges = (age_ranges if hasattr(age_ranges, "reshape") else np.asarray(age_ranges)).reshape(-1, 2)
    return ranges[:, 1] > ranges[:, 0]


def age_groups(age_ranges: np.ndarray) -> np.ndarray:
    """The distinct [low, high) age groups of a set's interval labels, sorted (G x 2): the classes that group
    accuracy counts in."""
    ranges = np.asarray(age_ranges, np.float64).reshape(-1, 2)
    ranges = ranges[age_group_labelled(ranges)]
    return np.unique(ranges, axis=0) if len(ranges) else np.zeros((0, 2))


def group_index(ages: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Which group each age falls in (by the groups' lower edges: an age between two groups, or past the last
    one's end, belongs to the group below it; below the first, to the first)."""
    return np.clip(np.searchsorted(groups[:, 0], np.asarray(ages, np.float64), side="right") - 1, 0,
                   len(groups) - 1)


def years_outside(age_ranges, age_pred) -> np.ndarray:
    """Each face's years between its predicted age and its age group [low, high) (0 inside; high inf: open)."""
    ranges = np.asarray(age_ranges, np.float64).reshape(-1, 2)
    age_pred = np.asarray(age_pred, np.float64)
    return np.maximum(ranges[:, 0] - age_pred, 0) + np.maximum(age_pred - ranges[:, 1], 0)


def interval_metrics(age_ranges, age_pred, groups: np.ndarray | None = None) -> dict:
    """Scores of predicted ages against age-group labels [low, high) (high inf: open-ended; faces without a group
    label, or with a year's, are left out): the fraction whose predicted age falls in the labelled group
    (age_group_acc), within one group of it (age_group_one_off), and the mean years outside it (0 inside)."""
    ranges = np.asarray(age_ranges, np.float64).reshape(-1, 2)
    age_pred = np.asarray(age_pred, np.float64)
    grouped = age_group_labelled(ranges)
    if not grouped.any():
        return {"age_group_n": 0, "age_group_acc": None, "age_group_one_off": None, "years_outside": None}
    groups = age_groups(ranges) if groups is None else groups
    ranges, age_pred = ranges[grouped], age_pred[grouped]
    outside = years_outside(ranges, age_pred)
    true_group, predicted_group = group_index(ranges[:, 0], groups), group_index(age_pred, groups)
    return {"age_group_n": int(grouped.sum()),
            "age_group_acc": float(np.mean(predicted_group == true_group)),
            "age_group_one_off": float(np.mean(np.abs(predicted_group - true_group) <= 1)),
            "years_outside": float(outside.mean())}


def group_name(low: float, high: float) -> str:
    return f"{low:g}+" if np.isinf(high) else f"{low:g}-{high - 1:g}"


def breakdown(keys, age_ranges, age_pred, gender_true, p_male, detected, groups: np.ndarray,
              order=None) -> dict[str, dict]:
    """Per key (a race, an age group): faces, faces found, gender accuracy and age-group accuracy (in `groups`,
    age_groups' classes), each over all faces with a miss (no face found) counted wrong, as a user sees it, and
    over the found faces alone."""
    keys = np.asarray(keys).astype(str)
    ranges = np.asarray(age_ranges, np.float64).reshape(-1, 2)
    age_pred, p_male = np.asarray(age_pred, np.float64), np.asarray(p_male, np.float64)
    gender_true, detected = np.asarray(gender_true), np.asarray(detected, bool)
    gender_right = (p_male >= 0.5) == (gender_true == 1)
    known = gender_true >= 0
    grouped = age_group_labelled(ranges)
    in_group = np.zeros(len(keys), bool)
    if len(groups):
        in_group[grouped] = group_index(age_pred[grouped], groups) == group_index(ranges[grouped, 0], groups)
    rows = {}
    for key in order if order is not None else sorted(set(keys.tolist())):
        chosen = keys == key
        if not chosen.any():
            continue
        found = chosen & detected
        row = {"n": int(chosen.sum()), "found": int(found.sum())}
        if (chosen & known).any():
            row["gender_acc"] = float(np.mean((gender_right & detected)[chosen & known]))
            row["gender_acc_found"] = float(np.mean(gender_right[found & known])) if (found & known).any() else None
        if len(groups):
            if (chosen & grouped).any():
                row["age_group_acc"] = float(np.mean((in_group & detected)[chosen & grouped]))
                row["age_group_acc_found"] = float(np.mean(in_group[found & grouped])) \
                    if (found & grouped).any() else None
        rows[key] = row
    return rows


def group_report(races, age_ranges, age_pred, gender_true, p_male, detected) -> dict:
    """For the faces with age-group labels (a mixed set's others are left out): overall figures with misses counted
    wrong, and the breakdowns by race (where the set has race labels) and by age group."""
    ranges = np.asarray(age_ranges, np.float64).reshape(-1, 2)
    grouped = age_group_labelled(ranges)
    races, age_pred, gender_true, p_male, detected = (np.asarray(a)[grouped] for a in (races, age_pred, gender_true,
                                                                                       p_male, detected))
    ranges = ranges[grouped]
    groups = age_groups(ranges)
    names = np.array([group_name(*groups[g]) for g in group_index(ranges[:, 0], groups)]) if len(groups) \
        else np.full(len(ranges), "")
    everyone = np.full(len(ranges), "all")
    report = {"all": breakdown(everyone, ranges, age_pred, gender_true, p_male, detected, groups)["all"],
              "by_age_group": breakdown(names, ranges, age_pred, gender_true, p_male, detected, groups,
                                        order=[group_name(*g) for g in groups])}
    races = np.asarray(races).astype(str)
    if (races != "").any():
        report["by_race"] = breakdown(races, ranges, age_pred, gender_true, p_male, detected, groups)
    return report
