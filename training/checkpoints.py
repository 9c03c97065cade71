"""Checkpoints and the resume rules.

train() writes a checkpoint after every epoch, atomically. Every epoch's shuffle, augmentation and dropout are
seeded by (seed, epoch), so a run resumed from its last checkpoint replays exactly what an uninterrupted run does,
provided it is the same run: a resume with another recipe (everything in TrainConfig but where and how fast it
runs) or other training faces is refused, naming the difference.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from agegender_ros.weights import LEGACY_CROP_SCALE

from .cache import PreprocessedSet

if TYPE_CHECKING:
    from .train import TrainConfig


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic: write a temporary file, then rename over the old checkpoint (a kill -9 leaves one valid file)."""
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


# What a resumed run must share with the run that wrote the checkpoint: everything in TrainConfig but where and
# how fast it runs, and how often it scores the held-out faces.
NOT_RECIPE = ("threads", "device", "amp", "eval_every")


def recipe(config: TrainConfig | dict) -> dict:
    fields = config if isinstance(config, dict) else asdict(config)
    return {k: v for k, v in fields.items() if k not in NOT_RECIPE}


def data_fingerprint(data: PreprocessedSet) -> dict:
    """Which faces, with which labels: a resumed run must train on the same ones."""
    digest = hashlib.sha256()
    for path in data.paths:
        digest.update(str(path).encode() + b"\0")
    digest.update(np.ascontiguousarray(data.ages, np.float32).tobytes())
    digest.update(np.ascontiguousarray(data.genders, np.int8).tobytes())
    return {"faces": len(data), "sha256": digest.hexdigest()[:16]}


def recipe_differences(saved: dict, current: dict) -> list[str]:
    return [f"{key}: {saved.get(key, '(unset)')!r} in the checkpoint, {current.get(key, '(unset)')!r} now"
            for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]


def load_checkpoint(path: Path, config: TrainConfig, data: PreprocessedSet, device: torch.device) -> dict:
    """The checkpoint's state, once it is readable and was written by this recipe on these faces."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
        # An option added since the checkpoint was written had its default value then (crop scale: 3.2);
        # type(config)(): TrainConfig's defaults, without importing train.py, which imports this module.
        saved_recipe = {**recipe(type(config)()), "crop_scale": LEGACY_CROP_SCALE, **recipe(state["config"])}
    except Exception as error:  # torch.load raises whatever the damaged file's unpickling hits
        raise ValueError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error}); delete it to "
                         "start this run over") from error
    differences = recipe_differences(saved_recipe, recipe(config))
    if "data" in state and state["data"] != data_fingerprint(data):
        differences.append(f"training faces: {state['data']} in the checkpoint, {data_fingerprint(data)} now (a "
                           "fold's faces follow the datasets, --protocol, --fold and --split-seed; runs made before "
                           "--split-seed existed drew their split with --seed)")
    if differences:
        raise ValueError(f"--resume {path}: this run's recipe differs from the checkpoint's, so resuming would mix "
                         f"two recipes ({'; '.join(differences)}); use another --out or delete the checkpoint")
    return state
