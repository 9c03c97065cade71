"""Weights on disk: a state dict (`NAME.pt`), a JSON model card (`NAME.json`) beside it, and for shipped weights
their ONNX export (`NAME.onnx`, what the torch-free runtime runs).

The card records what a user needs to trust the files: architecture and its arguments, input size and
normalisation, crop settings, training data and licence, measured metrics, the sha256 of the .pt file and, under
`onnx`, the ONNX file's name, sha256 and the .pt sha256 it was exported from. Both hashes are checked on load, so a
truncated or swapped file is caught before torch or ONNX Runtime sees it.

Only `save_weights`, `load_model` and `export_onnx_beside` need torch (imported when called); reading and checking
cards and files does not.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from . import faces
from .backend_common import TORCH_INSTALL_HINT, torch_missing
from .model_io import AGE_OFFSET, AGE_SCALE, INPUT_SIZE, MEAN_RGB, STD_RGB

if TYPE_CHECKING:  # annotations only: importing the model needs torch
    from .model import AgeGenderModel

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


def save_weights(model: AgeGenderModel, path: str | os.PathLike, card: dict[str, Any],
                 crop_scale: float = faces.CROP_SCALE) -> dict[str, Any]:
    """Write the state dict atomically, then its card (with sha256, params, FLOPs and the crop scale the model was
    trained at filled in). Returns the card."""
    import torch

    from .model import count_flops_per_face, count_parameters

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
        "crop": {"size": faces.CROP_SIZE, "scale": crop_scale,
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


# Every weight file before crop scales were recorded by the runtime (cards without "crop") was trained at 3.2.
LEGACY_CROP_SCALE = 3.2
CROP_SCALE_RANGE = (1.0, 6.0)  # crop side in face sizes: from the face alone to head and shoulders


def crop_scale(card: Dict[str, Any]) -> float:
    """The crop scale these weights were trained at, from their card: the runtime must crop faces the same way."""
    crop = card.get("crop") or {}
    size, scale = crop.get("size", faces.CROP_SIZE), crop.get("scale", LEGACY_CROP_SCALE)
    if size != faces.CROP_SIZE:
        raise WeightsError(f"these weights were trained on {size}x{size} crops; this version of agegender_ros makes "
                           f"{faces.CROP_SIZE}x{faces.CROP_SIZE} crops only")
    low, high = CROP_SCALE_RANGE
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not low <= scale <= high:
        raise WeightsError(f"the model card's crop scale {scale!r} is not a number between {low:g} and {high:g}")
    return float(scale)


def check_weights(weights_path: str | os.PathLike | None = None) -> Tuple[Path, Dict[str, Any]]:
    """(path, card) of `weights_path` or the package's default weights, after checking that the file exists, has a
    readable card and matches the card's sha256. Needs no torch."""
    path = Path(weights_path) if weights_path else default_weights_path()
    if not path.is_file():
        if weights_path is None:
            raise WeightsError(
                f"no default weights at {path}. Train them with `make weights` (see README: Training), "
                "or pass --weights PATH to a .pt file that has its .json model card beside it")
        raise WeightsError(f"weight file {path} does not exist")
    card = read_card(path)
    try:
        crop_scale(card)
    except WeightsError as error:
        raise WeightsError(f"model card {card_path(path)}: {error}") from None
    expected = card.get("sha256")
    actual = sha256_file(path)
    if expected and expected != actual:
        raise WeightsError(f"{path} is corrupt or was replaced: sha256 {actual[:12]}... does not match its model "
                           f"card's {str(expected)[:12]}...")
    return path, card


def load_model(weights_path: str | os.PathLike | None = None) -> Tuple["AgeGenderModel", Dict[str, Any]]:
    """The model in eval mode and its card, from `weights_path` or the package's default weights. Needs torch."""
    path, card = check_weights(weights_path)
    try:
        import torch

        from .model import create_model
    except ModuleNotFoundError as error:
        if torch_missing(error):
            raise ModuleNotFoundError(f"reading {path.name} needs PyTorch, which is not installed: "
                                      f"{TORCH_INSTALL_HINT}", name="torch") from error
        raise
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


# --- the ONNX export beside the weights (what the ONNX Runtime backend runs without torch) ----------------------

def onnx_beside(weights_path: str | os.PathLike) -> Path:
    """Where the ONNX export of these weights lives when it is shipped with them: `NAME.onnx` beside `NAME.pt`."""
    return Path(weights_path).with_suffix(".onnx")


def checked_onnx(weights_path: str | os.PathLike, card: Dict[str, Any]) -> Optional[Path]:
    """The ONNX file the card names (`card["onnx"]`), after checking its sha256 and that it was exported from these
    weights; None when the card names none. A missing, corrupt or stale file is refused (WeightsError)."""
    entry = card.get("onnx")
    if entry is None:
        return None
    weights_path = Path(weights_path)
    card_file = card_path(weights_path)
    if not isinstance(entry, dict) or not entry.get("file") or not entry.get("sha256"):
        raise WeightsError(f"model card {card_file}: its 'onnx' entry needs 'file' and 'sha256'")
    path = weights_path.parent / str(entry["file"])
    regenerate = f"`agegender export --format onnx --weights {weights_path}` re-exports it and updates the card"
    if entry.get("weights_sha256") and card.get("sha256") and entry["weights_sha256"] != card["sha256"]:
        raise WeightsError(f"{path} was exported from other weights (sha256 {str(entry['weights_sha256'])[:12]}...) "
                           f"than {weights_path.name} ({str(card['sha256'])[:12]}...): {regenerate}")
    if not path.is_file():
        raise WeightsError(f"ONNX file {path} (named by the model card {card_file.name}) is missing; {regenerate}")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise WeightsError(f"{path} is corrupt or was replaced: sha256 {actual[:12]}... does not match its model "
                           f"card's {str(entry['sha256'])[:12]}...")
    return path


def export_onnx_beside(weights_path: str | os.PathLike | None = None, opset: Optional[int] = None) -> Dict[str, Any]:
    """Export these weights (default: the package's) to `NAME.onnx` beside them and record the file's sha256 in the
    card, under `onnx`. The one step that makes (or remakes, after the .pt changed) a shipped ONNX file. Needs torch.
    Returns the card's new `onnx` entry."""
    import torch

    from .torch_backend import ONNX_INPUT, ONNX_OPSET, ONNX_OUTPUTS, export_onnx

    model, card = load_model(weights_path)
    path = Path(weights_path) if weights_path else default_weights_path()
    opset = opset or ONNX_OPSET
    onnx_path = export_onnx(model, onnx_beside(path), opset=opset)
    entry = {
        "file": onnx_path.name,
        "sha256": sha256_file(onnx_path),
        "weights_sha256": card.get("sha256") or sha256_file(path),
        "opset": opset,
        "input": f"{ONNX_INPUT}: N x 3 x {INPUT_SIZE} x {INPUT_SIZE} float32, normalised as in 'normalisation'",
        "outputs": f"{', '.join(ONNX_OUTPUTS)}: N each (the ensembled prediction)",
        "exported_with": f"torch {torch.__version__}",
    }
    update_card(path, {"onnx": entry})
    return entry
