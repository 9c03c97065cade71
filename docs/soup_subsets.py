"""Every subset of some fine-tunings of one start, averaged (docs/experiments/fairface.md, "Weight averaging").

    .venv/bin/python docs/soup_subsets.py NAME=WEIGHTS.pt NAME=WEIGHTS.pt [...] --fairface FAIRFACE_DIR

Averages every subset of two or more weights files as `agegender soup` does (training/soup.py) and scores each
ingredient and each soup on the held-out faces of the default weights' sets (docs/camera_degraded.py's: AAF's
official split, the UTKFace aligned fifth, all of FG-NET, FairFace's dev10 split). Prints one row per soup with its
gain over the mean of its ingredients, and the mean gain over all soups. FairFace: gender and age-group accuracy,
all faces, a missed face counted wrong, as `agegender evaluate`. A one-off analysis, not part of the package.
"""
import argparse
import copy
import itertools

import numpy as np
import torch

from agegender_ros.weights import crop_scale, load_model
from camera_degraded import figures, held_out_sets
from training.soup import average_cards, average_state_dicts
from training.train import predict_crops

COLUMNS = "AAF MAE, AAF gender, UTKFace MAE, UTKFace gender, FG-NET MAE, FairFace gender, FairFace age group"


def scores(model, sets: dict) -> np.ndarray:
    """The columns of COLUMNS (accuracies in %) for one network."""
    return np.array([value for data in sets.values()
                     for value in figures(data, *predict_crops(model, data.crops, torch.device("cpu"))[:2])])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("weights", nargs="+", metavar="NAME=WEIGHTS.pt")
    parser.add_argument("--fairface", required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    names, paths = zip(*(item.split("=", 1) for item in args.weights))
    models = [load_model(path) for path in paths]
    average_cards(list(paths), [card for _, card in models])  # refuses what cannot be averaged
    sets = held_out_sets(args.fairface, crop_scale(models[0][1]))
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
