"""Checkpoints and the resume rules.

train() writes a checkpoint after every epoch, atomically. Every epoch's shuffle, augmentation and dropout are
seeded by (seed, epoch), so a run resumed from its last checkpoint replays exactly what an uninterrupted run does,
provided it is the same run: a resume with another recipe (everything in TrainConfig but where and how fast it
runs), other training faces or other starting weights is refused, naming the difference. Faces and starting weights
are compared by name within their dataset and by content, not by where they lie, so a moved checkout still resumes
and a stage whose --init-weights were retrained since does not.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from agegender_ros.weights import LEGACY_CROP_SCALE, load_model

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


def data_fingerprint(data: PreprocessedSet, relative: bool = True) -> dict:
    """Which faces, with which labels: a resumed run must train on the same ones. Each face is named relative to its
    dataset's folder, so a run still resumes after the checkout or the data moved (relative=False: the full paths
    that checkpoints written before 2026-12-07 hold)."""
    digest = hashlib.sha256()
    for name in (relative_face_names(data) if relative else map(str, data.paths)):
        digest.update(name.encode() + b"\0")
    digest.update(np.ascontiguousarray(data.ages, np.float32).tobytes())
    digest.update(np.ascontiguousarray(data.genders, np.int8).tobytes())
    return {"faces": len(data), "sha256": digest.hexdigest()[:16], **({"names": "relative"} if relative else {})}


def relative_face_names(data: PreprocessedSet) -> list[str]:
    """'dataset:path' with the path relative to the deepest folder that holds all of that dataset's faces."""
    paths = [os.path.normpath(str(path)) for path in data.paths]
    sources = [str(source) for source in data.sources] if data.sources is not None else [""] * len(paths)
    folders: dict[str, list[str]] = {}
    for path, source in zip(paths, sources):
        folders.setdefault(source, []).append(os.path.dirname(path))
    roots = {source: os.path.commonpath(dirs) for source, dirs in folders.items()}
    return [f"{source}:{os.path.relpath(path, roots[source])}" for path, source in zip(paths, sources)]


def weights_fingerprint(path: str | os.PathLike) -> str:
    """The sha256 (16 hex digits) of a state dict's tensor names and values: equal for a re-saved or moved copy of
    the same weights, unlike the file's own hash."""
    state = load_model(path)[0].state_dict()
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode() + b"\0")
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def start_fingerprint(config: TrainConfig) -> dict:
    """What a run started from: the --init-weights' contents (None: a fresh initialisation from the seed)."""
    return {"init_weights": weights_fingerprint(config.init_weights) if config.init_weights else None}


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
    current_recipe = recipe(config)
    if "start" in state:  # the starting weights are compared by content below, not by the path they were read from
        saved_recipe.pop("init_weights", None)
        current_recipe.pop("init_weights", None)
    differences = recipe_differences(saved_recipe, current_recipe)
    start = start_fingerprint(config) if "start" in state else None
    if start is not None and state["start"] != start:
        differences.append(f"starting weights (--init-weights {config.init_weights or '(none)'}): "
                           f"{state['start']['init_weights']} in the checkpoint, {start['init_weights']} now (they "
                           "were retrained or replaced since)")
    faces = data_fingerprint(data, relative=state.get("data", {}).get("names") == "relative")
    if "data" in state and state["data"] != faces:
        differences.append(f"training faces: {state['data']} in the checkpoint, {faces} now (a "
                           "fold's faces follow the datasets, --protocol, --fold and --split-seed; runs made before "
                           "--split-seed existed drew their split with --seed)")
    if differences:
        raise ValueError(f"--resume {path}: this run's recipe differs from the checkpoint's, so resuming would mix "
                         f"two recipes ({'; '.join(differences)}); use another --out or delete the checkpoint")
    return state
