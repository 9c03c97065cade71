"""How each head, and each way of weighting the three heads, scores (docs/experiments/ensemble.md).

    .venv/bin/python docs/ensemble_weights.py WEIGHTS.pt [FAIRFACE_DIR]

Runs the weights' three heads once on the training faces and on the held-out faces of the default weights' sets
(AAF official split, the UTKFace aligned fifth, FairFace's dev10 split when FAIRFACE_DIR is given; FG-NET, never
trained on, as held-out only), then scores every weighting (final 1, virtual and low-level 0, 0.25, 0.5 or 1) of
the ages and of P(male) on both sides. The weighting is chosen on the training faces; the held-out columns show
what it does where it counts. FairFace: age-group accuracy, a missed face counted wrong, as `agegender evaluate`.
A second table asks which spread of the heads' ages is the better uncertainty hint (`age_std`): the plain one
published, or one weighted as the answer is (with the weights' own ensemble weights). A one-off analysis, not part
of the package.
"""
import itertools
import sys

import numpy as np
import torch

from agegender_ros.weights import crop_scale, load_model
from training.cli import load_dataset, pick_fold
from training.metrics import age_gender_metrics, group_report, years_outside
from training.train import predict_crops

WEIGHTS = (0.0, 0.25, 0.5, 1.0)
SETS = [("aaf", "../shared/data/aaf", "official"), ("utkface", "../shared/data/utkface_aligned", "random80"),
        ("fgnet", "../shared/data/fgnet", None)]


def head_outputs(model, crops: np.ndarray) -> dict[str, np.ndarray]:
    """Each head's age and P(male) for stored crops: `predict_crops` (as `agegender evaluate` runs it) with that
    head's ensemble weight 1 and the others' 0."""
    outputs = {}
    for head in model.heads:
        alone = {h: float(h == head) for h in model.heads}
        model.set_ensemble_weights(alone, alone)
        outputs[f"{head}_age"], outputs[f"{head}_p_male"], _ = predict_crops(model, crops, torch.device("cpu"))
    return outputs


def weighted(part: dict, output: str, weights: tuple) -> np.ndarray:
    """The heads' `output` ("age" or "p_male") averaged with these weights, as `model_base.ensemble` does."""
    return sum(w * part[f"{h}_{output}"] for h, w in zip(part["heads"], weights)) / sum(weights)


def scores(part: dict, age_weights: tuple, gender_weights: tuple) -> tuple[float, float]:
    """(gender accuracy %, MAE or FairFace age-group accuracy %) with these head weights."""
    data = part["data"]
    age = np.clip(weighted(part, "age", age_weights), 0, 100)
    p_male = weighted(part, "p_male", gender_weights)
    if data.has_intervals:  # FairFace: all faces, a miss counted wrong, as `agegender evaluate` reports them
        everyone = group_report(data.races, data.age_ranges, age, data.genders, p_male, data.detected)["all"]
        return 100 * everyone["gender_acc"], 100 * everyone["age_group_acc"]
    metrics = age_gender_metrics(data.ages, age, data.genders, p_male)
    return 100 * (metrics["gender_acc"] or float("nan")), metrics["mae"]


def rank_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (ranks' Pearson correlation; the values here are continuous, so ties are rare)."""
    return float(np.corrcoef(np.argsort(np.argsort(x)), np.argsort(np.argsort(y)))[0, 1])


def spread_table(parts: dict, age_weights: tuple) -> None:
    """How well each spread of the heads' ages flags the faces whose answer is far off, on the held-out sides:
    rank correlation with the error (FairFace: years outside the group) and the mean error of the quarter of faces
    with the largest spread against the other three quarters."""
    held_out = {key: part for key, part in parts.items() if key[1] == "held out"}
    print("\n| age spread | " + " | ".join(f"{n} {s}" for n, s in held_out) + " |")
    print("|---" * (1 + len(held_out)) + "|")
    rows = {"unweighted (published age_std)": [], "weighted as the answer": []}
    for part in held_out.values():
        data = part["data"]
        ages = np.stack([part[f"{h}_age"] for h in part["heads"]], 1)
        answer = np.clip(weighted(part, "age", age_weights), 0, 100)
        error = years_outside(data.age_ranges, answer) if data.has_intervals else np.abs(answer - data.ages)
        weights = np.asarray(age_weights)
        spreads = (ages.std(1), np.sqrt(((ages - answer[:, None]) ** 2) @ weights / weights.sum()))
        for cells, spread in zip(rows.values(), spreads):
            top = spread >= np.quantile(spread, 0.75)
            rho = rank_correlation(spread, error)
            cells.append(f"ρ {rho:.3f}; {error[top].mean():.2f} / {error[~top].mean():.2f}")
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    model, card = load_model(sys.argv[1])
    shipped_age_weights = tuple(model.ensemble_age_weights.tolist())
    sets = SETS + ([("fairface", sys.argv[2], "dev10")] if len(sys.argv) > 2 else [])
    parts = {}
    for name, root, protocol in sets:
        data = load_dataset(name, root, "scrfd", progress=False, crop_scale=crop_scale(card))
        sides = {"held out": np.arange(len(data))} if protocol is None else \
            dict(zip(("train", "held out"), pick_fold(name, data, protocol, 0, 0)[2:]))
        for side, index in sides.items():
            subset = data.subset(index)
            parts[(name, side)] = {"data": subset, "heads": model.heads, **head_outputs(model, subset.crops)}
    print("| weights: " + ", ".join(model.heads) + " | " + " | ".join(f"{n} {s}" for n, s in parts) + " |")
    print("|---" * (len(parts) + 1) + "|")
    # Each head alone, then final 1 with every weight of the other two (the first of these: equal weights).
    alone = [tuple(float(i == j) for j in range(3)) for i in range(3)]
    grid = [(1.0, v, lo) for v, lo in itertools.product(WEIGHTS[::-1], WEIGHTS[::-1]) if v or lo]
    for weights in alone + grid:
        cells = [("–" if np.isnan(g) else f"{g:.2f}%") + (f" / {a:.2f}%" if n == "fairface" else f" / {a:.3f}")
                 for (n, _), (g, a) in ((key, scores(part, weights, weights)) for key, part in parts.items())]
        print("| " + ", ".join(f"{w:g}" for w in weights) + " | " + " | ".join(cells) + " |")
    spread_table(parts, shipped_age_weights)


if __name__ == "__main__":
    main()
