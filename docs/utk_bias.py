"""MAE, bias and gender accuracy on the held-out UTKFace fifth by UTKFace's race label and age band (the full table:
docs/experiments/training-recipe.md, "Where the error is"; the shipped weights' figures: docs/results.md).

    .venv/bin/python docs/utk_bias.py WEIGHTS.pt
    .venv/bin/python docs/utk_bias.py teacher:hse-faceres-deep   (a distillation teacher's raw bfloat16 answers)

The fifth is the one the weights' model card records as held out (`agegender evaluate --protocol random80` picks
it the same way; split seed 0 for a teacher): a run trained with another split seed held out another fifth and
trained on most of seed 0's.

UTKFace names carry a race field (0 White, 1 Black, 2 Asian, 3 Indian, 4 Others); the faces are those that
`agegender evaluate --protocol random80` scores. A one-off analysis, not part of the package.
"""
import sys
from pathlib import Path

import numpy as np
import torch

from agegender_ros.weights import crop_scale, load_model
from training.cli import load_dataset, pick_fold
from training.protocols import trained_splits
from training.teachers import teacher_targets
from training.train import predict_crops

RACES = ("White", "Black", "Asian", "Indian", "Others")
BANDS = ((0, 20), (20, 40), (40, 60), (60, 120))

model, card = (None, {}) if sys.argv[1].startswith("teacher:") else load_model(sys.argv[1])
# Faces cropped as the weights were trained (a teacher crops its own input from the face box).
data = load_dataset("utkface", "../shared/data/utkface_aligned", "scrfd", progress=False,
                    crop_scale=crop_scale(card) if model is not None else None)
seeds = {split["split_seed"] for split in trained_splits(card) if split["protocol"] == "random80"}
data = data.subset(pick_fold("utkface", data, "random80", 0, seeds.pop() if len(seeds) == 1 else 0)[3])
if model is None:
    answers = teacher_targets(sys.argv[1].partition(":")[2], data.paths, data.boxes, "bfloat16", progress=False)
    age, p_male = answers.ages, answers.p_male
else:
    age, p_male, _ = predict_crops(model, data.crops, torch.device("cpu"))
race = np.array([int(Path(p).name.split("_")[2]) for p in data.paths])
error = age - data.ages
print("| race | ages | faces | MAE | bias | gender |\n|---|---|---|---|---|---|")
for r, name in enumerate(RACES):
    for low, high in BANDS:
        chosen = (race == r) & (data.ages >= low) & (data.ages < high)
        if chosen.sum() >= 20:
            gender = ((p_male[chosen] >= 0.5) == (data.genders[chosen] == 1)).mean()
            ages = f"{low}–{high - 1}" if high < 120 else f"{low}+"
            print(f"| {name} | {ages} | {chosen.sum()} | {np.abs(error[chosen]).mean():.2f} "
                  f"| {error[chosen].mean():+.2f} | {100 * gender:.1f}% |")
