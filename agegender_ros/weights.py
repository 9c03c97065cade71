"""Weights on disk: a state dict (`NAME.pt`) plus a JSON model card (`NAME.json`) beside it.

The card records what a user needs to trust the file: architecture and its arguments, input size and
normalisation, crop settings, training data and licence, measured metrics, and the sha256 of the .pt file (checked
on load, so a truncated or swapped file is caught before torch sees it).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from . import faces
from .model import AGE_OFFSET, AGE_SCALE, INPUT_SIZE, MEAN_RGB, STD_RGB, AgeGenderModel, count_flops_per_face, \
    count_parameters, create_model

PACKAGE_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS_NAME = "paper_aaf_utk.pt"


class WeightsError(RuntimeError):
    """A weight file is missing, corrupt or does not fit the model; the message says which file and what to do."""


def default_weights_path() -> Path:
    return Path(os.environ.get("AGEGENDER_WEIGHTS", PACKAGE_WEIGHTS_DIR / DEFAULT_WEIGHTS_NAME))


def card_path(weights_path: str | os.PathLike) -> Path:
    return Path(weights_path).with_suffix(".json")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(model: AgeGenderModel, path: str | os.PathLike, card: dict[str, Any]) -> dict[str, Any]:
    """Write the state dict atomically, then its card (with sha256, params, FLOPs filled in). Returns the card."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, partial)
    os.replace(partial, path)
    full_card = {
        "format": "agegender_ros/weights-v1",
        "input_size": INPUT_SIZE,
        "input": "RGB float in [0,1], normalised per channel with mean/std",
        "normalisation": {"mean_rgb": list(MEAN_RGB), "std_rgb": list(STD_RGB)},
        "age_output": {"offset": AGE_OFFSET, "scale": AGE_SCALE},
        "crop": {"size": faces.CROP_SIZE, "scale": faces.CROP_SCALE,
                 "method": "agegender_ros.faces.align_crop (eye line levelled when landmarks exist)"},
        "params": count_parameters(model),
        "flops_per_face": count_flops_per_face(model),
        **card,
        "sha256": sha256_file(path),
    }
    card_path(path).write_text(json.dumps(full_card, indent=2) + "\n")
    return full_card


def update_card(weights_path: str | os.PathLike, fields: dict[str, Any]) -> dict[str, Any]:
    """Add or replace card fields (e.g. metrics measured after training); the weights and their sha256 stay."""
    card = {**read_card(weights_path), **fields}
    card_path(weights_path).write_text(json.dumps(card, indent=2) + "\n")
    return card


def read_card(weights_path: str | os.PathLike) -> dict[str, Any]:
    path = card_path(weights_path)
    if not path.is_file():
        raise WeightsError(f"model card {path} is missing: every weight file needs its .json card beside it")
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"model card {path} is not valid JSON: {error}") from error
    if not isinstance(card, dict) or "architecture" not in card:
        raise WeightsError(f"model card {path} has no 'architecture' field")
    return card


def load_model(weights_path: str | os.PathLike | None = None) -> tuple[AgeGenderModel, dict[str, Any]]:
    """The model in eval mode and its card, from `weights_path` or the package's default weights."""
    path = Path(weights_path) if weights_path else default_weights_path()
    if not path.is_file():
        if weights_path is None:
            raise WeightsError(
                f"no default weights at {path}. Train them with `make weights` (see README: Training), "
                "or pass --weights PATH to a .pt file that has its .json model card beside it")
        raise WeightsError(f"weight file {path} does not exist")
    card = read_card(path)
    expected = card.get("sha256")
    actual = sha256_file(path)
    if expected and expected != actual:
        raise WeightsError(f"{path} is corrupt or was replaced: sha256 {actual[:12]}... does not match its model "
                           f"card's {str(expected)[:12]}...")
    try:
        model = create_model(card["architecture"], **card.get("model_args", {}))
    except (ValueError, TypeError) as error:
        raise WeightsError(f"model card {card_path(path)}: {error}") from error
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except TypeError:  # torch < 1.13 (JetPack 4.6) has no weights_only
            state = torch.load(path, map_location="cpu")
    except Exception as error:  # torch raises many types for truncated/garbage files
        raise WeightsError(f"{path} is not a readable PyTorch state dict ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first_lines = "\n".join(str(error).splitlines()[:4])
        raise WeightsError(f"{path} does not fit architecture {card['architecture']!r}:\n{first_lines}") from error
    return model.eval(), card
