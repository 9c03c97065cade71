"""How much a monotone age calibration helps a teacher, on faces it was not fitted on (docs/experiments/teachers.md).

    .venv/bin/python docs/teacher_calibration.py [TEACHER]

Maps are fitted on the training sides (AAF train, UTKFace's training 80%) exactly as `agegender train
--teacher-calibration` fits them, and scored on the held-out sides (AAF val, the UTKFace fifth) and on all of
FG-NET, which no map saw. Needs the preprocessing caches and the teacher's cached bfloat16 answers (made by
`agegender evaluate --teacher TEACHER --teacher-precision bfloat16` on each dataset). A one-off analysis.
"""
import sys

import numpy as np

from training.cli import load_dataset, pick_fold
from training.teachers import teacher_targets
from training.teachers.calibration import METHODS, fit_calibration

TEACHER = sys.argv[1] if len(sys.argv) > 1 else "hse-faceres-deep"
DATA = {"aaf": ("../shared/data/aaf", "official"), "utkface": ("../shared/data/utkface_aligned", "random80"),
        "fgnet": ("../shared/data/fgnet", None)}


def sides(name):
    root, protocol = DATA[name]
    data = load_dataset(name, root, "scrfd", progress=False)
    ages = teacher_targets(TEACHER, data.paths, data.boxes, "bfloat16", progress=False).ages
    if protocol is None:
        return None, (data.ages, ages)
    _, _, train, test = pick_fold(name, data, protocol, 0, 0)
    return (data.ages[train], ages[train]), (data.ages[test], ages[test])


def row(label, truth, predicted):
    error = predicted - truth
    decades = " ".join(f"{d}0s {error[(truth // 10) == d].mean():+.1f}" for d in range(8)
                       if ((truth // 10) == d).sum() >= 20)
    return f"| {label} | {np.abs(error).mean():.2f} | {decades} |"


sets = {name: sides(name) for name in DATA}
print("| teacher ages | MAE | bias per decade (+ = too old) |\n|---|---|---|")
for name, (train, test) in sets.items():
    print(row(f"{name} held out, raw", *test))
    maps = {"aaf": ["aaf", "utkface", "pooled"], "utkface": ["utkface", "pooled"], "fgnet": ["utkface", "pooled"]}
    for source in maps[name]:
        fit = (np.concatenate([sets[s][0][0] for s in ("aaf", "utkface")]),
               np.concatenate([sets[s][0][1] for s in ("aaf", "utkface")])) if source == "pooled" \
            else sets[source][0]
        for method in METHODS:
            calibration = fit_calibration(fit[1], fit[0], method)
            print(row(f"{name} held out, {method} map from {source} train", test[0], calibration(test[1])))
