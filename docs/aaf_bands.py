"""MAE and gender accuracy on AAF val by age band (docs/experiments/crop-scale.md, "Tighter still: 2.2 and 2.0").

    .venv/bin/python docs/aaf_bands.py WEIGHTS.pt

The faces are those that `agegender evaluate --dataset aaf --protocol official` scores, cropped at the scale of the
weights' model card. A one-off analysis, not part of the package.
"""
import sys

import numpy as np
import torch

from agegender_ros.weights import crop_scale, load_model
from training.cli import load_dataset, pick_fold
from training.train import predict_crops

BANDS = ((0, 13), (13, 20), (20, 40), (40, 60), (60, 120))

model, card = load_model(sys.argv[1])
data = load_dataset("aaf", "../shared/data/aaf", "scrfd", progress=False, crop_scale=crop_scale(card))
data = data.subset(pick_fold("aaf", data, "official", 0, 0)[3])
age, p_male, _ = predict_crops(model, data.crops, torch.device("cpu"))
print("| ages | faces | MAE | gender |\n|---|---|---|---|")
for low, high in BANDS:
    chosen = (data.ages >= low) & (data.ages < high)
    gender = ((p_male[chosen] >= 0.5) == (data.genders[chosen] == 1)).mean()
    ages = f"{low}–{high - 1}" if high < 120 else f"{low}+"
    print(f"| {ages} | {chosen.sum()} | {np.abs(age[chosen] - data.ages[chosen]).mean():.2f} | {100 * gender:.1f}% |")
