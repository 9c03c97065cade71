"""The PyTorch side of inference: eager torch as a backend, and the ONNX export of a model (what the ONNX Runtime
backend and the shipped `.onnx` file run). Needs torch (`pip install 'agegender_ros[train]'`); the runtime imports
this module only for `--backend torch` or to export weights that have no ONNX file yet.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Tuple

import numpy as np
import torch

from .model import INPUT_SIZE, AgeGenderModel

ONNX_OPSET = 17
ONNX_INPUT = "faces"
ONNX_OUTPUTS = ("age", "p_male", "age_std")


class TorchBackend:
    name = "torch"

    def __init__(self, model: AgeGenderModel, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self.device)
        age, p_male, age_std = self.model.predict(x)
        return age.cpu().numpy(), p_male.cpu().numpy(), age_std.cpu().numpy()


class PredictWrapper(torch.nn.Module):
    """Exports `predict` (the ensemble) instead of `forward`, so deployed graphs return the final answer."""

    def __init__(self, model: AgeGenderModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.predict(x)


def export_onnx(model: AgeGenderModel, path: str | os.PathLike, opset: int = ONNX_OPSET) -> Path:
    """ONNX graph of the ensembled prediction with a dynamic batch axis (input `faces`, outputs age/p_male/age_std)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    # The TorchScript exporter handles this small static graph on every torch from 1.10 (JetPack 4.6) on;
    # newer torch defaults to the dynamo exporter, which needs extra packages, so ask for the classic one.
    extra = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    torch.onnx.export(
        PredictWrapper(model).eval(), (torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE),), str(partial),
        input_names=[ONNX_INPUT], output_names=list(ONNX_OUTPUTS), opset_version=opset,
        dynamic_axes={name: {0: "batch"} for name in (ONNX_INPUT, *ONNX_OUTPUTS)},
        **extra,
    )
    os.replace(partial, path)
    return path
