"""Inference backends behind one interface: N x 3 x 64 x 64 float32 batch -> (age years, P(male), age spread).

  tensorrt     torch2trt engine (Jetson; needs torch, tensorrt, torch2trt, CUDA): `tensorrt_backend.py`
  onnxruntime  ONNX Runtime on the ONNX file shipped beside the weights (no torch needed); CPU here, CUDA /
               TensorRT execution providers where the installed onnxruntime has them
  torch        eager PyTorch (`torch_backend.py`; `pip install 'agegender_ros[train]'`)

`create_backend("auto", ...)` tries TensorRT -> ONNX Runtime -> torch, whichever is installed, and logs which one it
picked and why each one before it was skipped. This module imports neither torch nor the other backend modules at
import time: a runtime install (numpy, OpenCV, ONNX Runtime) never loads torch. Dependencies run one way: this
module -> torch_backend / tensorrt_backend -> backend_common (BackendUnavailable, cache_dir), never back.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .backend_common import TORCH_INSTALL_HINT, Backend, BackendUnavailable, cache_dir, torch_missing
from .weights import check_weights, checked_onnx, sha256_file

__all__ = ["BACKENDS", "AUTO_ORDER", "Backend", "BackendUnavailable", "OnnxRuntimeBackend", "cache_dir",
           "create_backend", "onnx_path_for"]

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "tensorrt")
AUTO_ORDER = ("tensorrt", "onnxruntime", "torch")


def onnx_path_for(weights_path: Path) -> Path:
    """The cached ONNX export of weights that ship none: keyed by their sha256 so changed weights are never served
    stale."""
    return cache_dir() / "onnx" / f"{weights_path.stem}-{sha256_file(weights_path)[:16]}.onnx"


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike, threads: int = 0, prefer_gpu: bool = True):
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime)") from error
        from .faces import onnxruntime_providers

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        # No busy-waiting between runs: on a shared CPU (a robot's; here 2 cores beside the detector's session)
        # spinning threads steal the cores the other work needs (docs/experiments/inference-speed.md, "Why the
        # first run missed, and the fix: ONNX Runtime's spinning threads").
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.onnx_path = Path(onnx_path)
        self.session = ort.InferenceSession(str(onnx_path), options, providers=onnxruntime_providers(prefer_gpu))
        self.providers = self.session.get_providers()

    def __call__(self, batch: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        age, p_male, age_std = self.session.run(None, {"faces": np.ascontiguousarray(batch, np.float32)})
        return age, p_male, age_std


def __getattr__(name: str):
    """`backends.TorchBackend`, `backends.PredictWrapper` and `backends.export_onnx` (they live in torch_backend.py
    since the runtime stopped needing torch) still resolve, importing torch only when asked for."""
    if name in ("TorchBackend", "PredictWrapper", "export_onnx"):
        from . import torch_backend

        return getattr(torch_backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _torch_backend_module():
    """`torch_backend`, or BackendUnavailable with the install hint when PyTorch is not installed."""
    try:
        from . import torch_backend
    except ImportError as error:
        if torch_missing(error):
            raise BackendUnavailable(f"PyTorch is not installed: {TORCH_INSTALL_HINT}") from error
        raise
    return torch_backend


def tensorrt_packages_missing() -> Optional[str]:
    """Why the torch2trt path cannot even be imported here (a package is not installed), else None; found without
    importing anything, so `auto` does not load torch on a machine that has no TensorRT."""
    missing = []
    if importlib.util.find_spec("torch") is None:
        missing.append(f"PyTorch is not installed (torch2trt needs it: {TORCH_INSTALL_HINT})")
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("the `tensorrt` Python package is not installed (it comes with JetPack or NVIDIA's TensorRT "
                       "wheels)")
    if importlib.util.find_spec("torch2trt") is None:
        missing.append("`torch2trt` is not installed (build it from https://github.com/NVIDIA-AI-IOT/torch2trt, "
                       "see docs/jetson.md)")
    return "TensorRT backend unavailable: " + "; ".join(missing) if missing else None


def create_backend(name: str = "auto", weights: str | os.PathLike | None = None, *, device: str | None = None,
                   engine: str | os.PathLike | None = None, fp16: bool = True, max_batch_size: int = 32,
                   threads: int = 0) -> Backend:
    """A ready backend for these weights (default: the package's). `auto` = TensorRT -> ONNX Runtime -> torch.

    Raises WeightsError for a missing, corrupt or mismatched weight, card or ONNX file (in every mode), and
    BackendUnavailable when the asked-for backend (or, for `auto`, every backend) cannot run here."""
    if name not in ("auto", *BACKENDS):
        raise ValueError(f"unknown backend {name!r}; choose from auto, {', '.join(BACKENDS)}")
    weights_path, card = check_weights(weights)
    candidates = AUTO_ORDER if name == "auto" else (name,)
    options = {"device": device, "engine": engine, "fp16": fp16, "max_batch_size": max_batch_size,
               "threads": threads}
    reasons = []
    for candidate in candidates:
        try:
            backend = _build(candidate, weights_path, card, options)
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


def _build(name: str, weights_path: Path, card: Dict[str, Any], options: Dict[str, Any]) -> Backend:
    if name == "onnxruntime":
        if importlib.util.find_spec("onnxruntime") is None:
            raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime)")
        onnx_file = checked_onnx(weights_path, card)  # the shipped export, hash-checked; WeightsError if broken
        if onnx_file is None:
            onnx_file = _export_to_cache(weights_path)
        return OnnxRuntimeBackend(onnx_file, threads=options["threads"])
    if name == "torch":
        torch_backend = _torch_backend_module()
        from .weights import load_model

        return torch_backend.TorchBackend(load_model(weights_path)[0], options["device"] or "cpu")
    missing = tensorrt_packages_missing()
    if missing:
        raise BackendUnavailable(missing)
    from .tensorrt_backend import TensorRTBackend  # isolated: imports torch, torch2trt and tensorrt
    from .weights import load_model

    return TensorRTBackend.for_weights(load_model(weights_path)[0], weights_path, engine=options["engine"],
                                       fp16=options["fp16"], max_batch_size=options["max_batch_size"])


def _export_to_cache(weights_path: Path) -> Path:
    """ONNX file for weights whose card names none (e.g. freshly trained ones): exported once with torch into the
    cache folder, keyed by the weights' sha256."""
    onnx_file = onnx_path_for(weights_path)
    if onnx_file.is_file():
        return onnx_file
    try:
        torch_backend = _torch_backend_module()
    except BackendUnavailable as error:
        raise BackendUnavailable(
            f"{weights_path.name} has no ONNX export recorded in its model card, and making one needs PyTorch, which "
            f"is not installed: run `agegender export --format onnx --weights {weights_path}` where torch is "
            "installed, then copy the .onnx and .json beside the .pt") from error
    from .weights import load_model

    return torch_backend.export_onnx(load_model(weights_path)[0], onnx_file)
