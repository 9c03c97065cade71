"""Inference backends behind one interface: N x 3 x 64 x 64 float32 batch -> (age years, P(male), age spread).

  torch        eager PyTorch (always available where torch is)
  onnxruntime  ONNX Runtime; CPU here, CUDA / TensorRT execution providers where installed
  tensorrt     torch2trt engine (Jetson); see `tensorrt_backend.py`, imported only when asked for

`create_backend("auto", ...)` tries TensorRT -> ONNX Runtime -> torch and logs why each one it skipped was skipped.
"""
from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .model import INPUT_SIZE, AgeGenderModel
from .weights import default_weights_path, load_model, sha256_file

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "tensorrt")
AUTO_ORDER = ("tensorrt", "onnxruntime", "torch")


class BackendUnavailable(RuntimeError):
    pass


class Backend(Protocol):
    name: str

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


class TorchBackend:
    name = "torch"

    def __init__(self, model: AgeGenderModel, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self.device)
        age, p_male, age_std = self.model.predict(x)
        return age.cpu().numpy(), p_male.cpu().numpy(), age_std.cpu().numpy()


class PredictWrapper(torch.nn.Module):
    """Exports `predict` (the ensemble) instead of `forward`, so deployed graphs return the final answer."""

    def __init__(self, model: AgeGenderModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.predict(x)


def export_onnx(model: AgeGenderModel, path: str | os.PathLike, opset: int = 17) -> Path:
    """ONNX graph of the ensembled prediction with a dynamic batch axis (input `faces`, outputs age/p_male/age_std)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    # The TorchScript exporter handles this small static graph on every torch from 1.10 (JetPack 4.6) on;
    # newer torch defaults to the dynamo exporter, which needs extra packages, so ask for the classic one.
    extra = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    torch.onnx.export(
        PredictWrapper(model).eval(), (torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE),), str(partial),
        input_names=["faces"], output_names=["age", "p_male", "age_std"], opset_version=opset,
        dynamic_axes={"faces": {0: "batch"}, "age": {0: "batch"}, "p_male": {0: "batch"}, "age_std": {0: "batch"}},
        **extra,
    )
    os.replace(partial, path)
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("AGEGENDER_CACHE", Path.home() / ".cache" / "agegender_ros"))


def onnx_path_for(weights_path: Path) -> Path:
    """The exported ONNX file for these weights: keyed by their sha256 so changed weights are never served stale."""
    return cache_dir() / "onnx" / f"{weights_path.stem}-{sha256_file(weights_path)[:16]}.onnx"


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike, threads: int = 0, prefer_gpu: bool = True):
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise BackendUnavailable("onnxruntime is not installed") from error
        from .faces import onnxruntime_providers

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        # No busy-waiting between runs: on a shared CPU (a robot's; here 2 cores beside the detector's session)
        # spinning threads steal the cores the other work needs (docs/results.md, "Inference speed").
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=onnxruntime_providers(prefer_gpu))
        self.providers = self.session.get_providers()

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        age, p_male, age_std = self.session.run(None, {"faces": np.ascontiguousarray(batch, np.float32)})
        return age, p_male, age_std


def create_backend(name: str = "auto", weights: str | os.PathLike | None = None, *, device: str | None = None,
                   engine: str | os.PathLike | None = None, fp16: bool = True, max_batch_size: int = 32,
                   threads: int = 0) -> Backend:
    """A ready backend for these weights (default: the package's). `auto` = TensorRT -> ONNX Runtime -> torch."""
    if name not in ("auto", *BACKENDS):
        raise ValueError(f"unknown backend {name!r}; choose from auto, {', '.join(BACKENDS)}")
    weights_path = Path(weights) if weights else default_weights_path()
    model, _card = load_model(weights_path if weights else None)
    candidates = AUTO_ORDER if name == "auto" else (name,)
    reasons = []
    for candidate in candidates:
        try:
            backend = _build(candidate, model, weights_path, device, engine, fp16, max_batch_size, threads)
        except BackendUnavailable as error:
            if name != "auto":
                raise
            reasons.append(f"{candidate}: {error}")
            continue
        if reasons:
            log.info("backend %s (skipped %s)", candidate, "; ".join(reasons))
        else:
            log.info("backend %s", candidate)
        return backend
    raise BackendUnavailable("no backend available: " + "; ".join(reasons))


def _build(name, model, weights_path, device, engine, fp16, max_batch_size, threads) -> Backend:
    if name == "torch":
        return TorchBackend(model, device or "cpu")
    if name == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError as error:
            raise BackendUnavailable("onnxruntime is not installed") from error
        onnx_file = onnx_path_for(weights_path)
        if not onnx_file.is_file():
            export_onnx(model, onnx_file)
        return OnnxRuntimeBackend(onnx_file, threads=threads)
    from .tensorrt_backend import TensorRTBackend  # isolated: imports torch2trt/tensorrt

    return TensorRTBackend.for_weights(model, weights_path, engine=engine, fp16=fp16, max_batch_size=max_batch_size)
