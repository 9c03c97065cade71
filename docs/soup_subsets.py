"""Every subset of some fine-tunings of one start, averaged (docs/experiments/fairface.md, "Weight averaging").

    .venv/bin/python docs/soup_subsets.py NAME=WEIGHTS.pt NAME=WEIGHTS.pt [...] --fairface FAIRFACE_DIR

Averages every subset of two or more weights files as `agegender soup` does (training/soup.py) and scores each
ingredient and each soup on the held-out faces of the default weights' sets (FairFace's dev10 split, AAF's official
split, the UTKFace aligned fifth, all of FG-NET). Prints one row per soup with its gain over the mean of its
ingredients, and the mean gain over all soups. FairFace: gender and age-group accuracy, all faces, a missed face
counted wrong, as `agegender evaluate`. A one-off analysis, not part of the package.
"""
import argparse
import copy
import itertools

import numpy as np
import torch

from agegender_ros.weights import crop_scale, load_model
from training.cli import load_dataset, pick_fold
from training.metrics import age_gender_metrics, group_report
from training.soup import average_cards, average_state_dicts
from training.train import predict_crops

SETS = [("aaf", "../shared/data/aaf", "official"), ("utkface", "../shared/data/utkface_aligned", "random80"),
        ("fgnet", "../shared/data/fgnet", None)]
COLUMNS = "FairFace gender, FairFace age group, AAF MAE, AAF gender, UTKFace MAE, UTKFace gender, FG-NET MAE"


def scores(model, sets: dict) -> np.ndarray:
    """The columns of COLUMNS (accuracies in %) for one network."""
    row = []
    for name, data in sets.items():
        age, p_male, _ = predict_crops(model, data.crops, torch.device("cpu"))
        if data.has_intervals:
            everyone = group_report(data.races, data.age_ranges, age, data.genders, p_male, data.detected)["all"]
            row += [100 * everyone["gender_acc"], 100 * everyone["age_group_acc"]]
        else:
            metrics = age_gender_metrics(data.ages, age, data.genders, p_male)
            row += [metrics["mae"]] + ([100 * metrics["gender_acc"]] if metrics["gender_acc"] is not None else [])
    return np.array(row)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("weights", nargs="+", metavar="NAME=WEIGHTS.pt")
    parser.add_argument("--fairface", required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    names, paths = zip(*(item.split("=", 1) for item in args.weights))
    models = [load_model(path) for path in paths]
    average_cards(list(paths), [card for _, card in models])  # refuses what cannot be averaged
    sets = {}
    for name, root, protocol in [("fairface", args.fairface, "dev10")] + SETS:
        data = load_dataset(name, root, "scrfd", progress=False, crop_scale=crop_scale(models[0][1]))
        sets[name] = data.subset(pick_fold(name, data, protocol, 0, 0)[3]) if protocol else data
    alone = [scores(model, sets) for model, _ in models]
    line = lambda values: " | ".join(f"{v:.3f}" for v in values)
    gain_cell = lambda values: ", ".join(f"{v:+.3f}" for v in values)
    print(f"| weights | {COLUMNS.replace(', ', ' | ')} | gain over the ingredients' mean |")
    print("|---" * 9 + "|")
    for name, row in zip(names, alone):
        print(f"| {name} | {line(row)} | |")
    gains = []
    soup = copy.deepcopy(models[0][0])  # the ingredients stay as they are
    for size in range(2, len(models) + 1):
        for subset in itertools.combinations(range(len(models)), size):
            soup.load_state_dict(average_state_dicts([models[i][0].state_dict() for i in subset]))
            row = scores(soup, sets)
            gains.append(row - np.mean([alone[i] for i in subset], axis=0))
            print(f"| {' + '.join(names[i] for i in subset)} | {line(row)} | {gain_cell(gains[-1])} |", flush=True)
    print(f"\nmean gain over {len(gains)} soups: {gain_cell(np.mean(gains, axis=0))}")


if __name__ == "__main__":
    main()
