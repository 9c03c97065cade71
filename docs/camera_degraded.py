"""Held-out scores on clean faces and on the same faces as other cameras would deliver them (docs/experiments/
fairface.md, "Camera augmentation in the last stage").

    .venv/bin/python docs/camera_degraded.py WEIGHTS.pt [WEIGHTS.pt ...] [--fairface FAIRFACE_DIR]

The held-out faces of the default weights' sets (AAF official split, the UTKFace aligned fifth, all of FG-NET,
FairFace's dev10 split when given), scored as they are and after training's camera degradation
(training/augment.py `camera_degrade`: low resolution, blur, sensor noise, JPEG, each on a random part of the faces)
with a fixed seed, so every weights file sees the same degraded faces. FairFace: gender and age-group accuracy,
all faces, a missed face counted wrong, as `agegender evaluate`. A one-off analysis, not part of the package.
"""
import argparse

import numpy as np
import torch

from agegender_ros.weights import crop_scale, load_model
from training.augment import camera_degrade
from training.cli import load_dataset, pick_fold
from training.metrics import age_gender_metrics, group_report
from training.train import predict_crops

SETS = [("aaf", "../shared/data/aaf", "official"), ("utkface", "../shared/data/utkface_aligned", "random80"),
        ("fgnet", "../shared/data/fgnet", None)]


def held_out_sets(fairface: str | None, scale: float) -> dict:
    """name -> the held-out faces of the default weights' sets (and FairFace's dev10 split, when given), cropped at
    the weights' scale."""
    sets = {}
    for name, root, protocol in SETS + ([("fairface", fairface, "dev10")] if fairface else []):
        data = load_dataset(name, root, "scrfd", progress=False, crop_scale=scale)
        sets[name] = data.subset(pick_fold(name, data, protocol, 0, 0)[3]) if protocol else data
    return sets


def answers(model, crops: np.ndarray, degrade: bool) -> tuple[np.ndarray, np.ndarray]:
    """(age, P(male)) as `agegender evaluate` gets them, on the faces as they are or degraded (a fresh seed each
    call, so every weights file sees the same degraded faces)."""
    generator = torch.Generator().manual_seed(0)
    age, p_male, _ = predict_crops(model, crops, torch.device("cpu"),
                                   transform=(lambda x: camera_degrade(x, generator)) if degrade else None)
    return age, p_male


def figures(data, age: np.ndarray, p_male: np.ndarray) -> list[float]:
    """FairFace: [gender %, age-group %] over all faces; the others: [MAE] + [gender %] where genders are known."""
    if data.has_intervals:
        everyone = group_report(data.races, data.age_ranges, age, data.genders, p_male, data.detected)["all"]
        return [100 * everyone["gender_acc"], 100 * everyone["age_group_acc"]]
    metrics = age_gender_metrics(data.ages, age, data.genders, p_male)
    return [metrics["mae"]] + ([100 * metrics["gender_acc"]] if metrics["gender_acc"] is not None else [])


def cell(data, age: np.ndarray, p_male: np.ndarray) -> str:
    values = figures(data, age, p_male)
    if data.has_intervals:
        return f"{values[0]:.2f}% / {values[1]:.2f}%"
    return f"{values[0]:.3f}" + (f" / {values[1]:.2f}%" if len(values) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("weights", nargs="+")
    parser.add_argument("--fairface")
    args = parser.parse_args()
    torch.set_num_threads(2)
    models = [load_model(path) for path in args.weights]
    sets = held_out_sets(args.fairface, crop_scale(models[0][1]))
    columns = [f"{name} {kind}" for name in sets for kind in ("clean", "degraded")]
    rows = {path: [] for path in args.weights}
    for name, data in sets.items():
        for path, (model, _) in zip(args.weights, models):
            rows[path] += [cell(data, *answers(model, data.crops, degrade)) for degrade in (False, True)]
    print("| weights | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for path, cells in rows.items():
        print(f"| {path} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
