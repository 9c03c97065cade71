"""TensorRT backend through torch2trt (Jetson): FP16 engine of the network, cached next to the weights.

Only this module imports `tensorrt` / `torch2trt`, and only when a TensorRT backend is asked for, so every other
part of the package works where they are missing. It imports `backend_common`, never `backends` (which imports this
module when TensorRT is asked for): the dependency runs one way.

What runs where: torch2trt converts the network's `forward` (convolutions, BatchNorm, LeakyReLU, pooling, linear
layers: all layers torch2trt has converters for) into an engine; the ensemble of the heads' outputs (`model.ensemble`,
a weighted mean of a few numbers per face) runs in torch on the GPU after it. That keeps the converted graph to
ops torch2trt supports on every version (it has no converter for `std`, used for the ensemble's age spread).

Engine cache: `<weights stem>-<key>.trt.pth` (the torch2trt `TRTModule` state dict) plus a `.json` sidecar beside
it, in the weights' folder, or in `backend_common.cache_dir()/tensorrt` when that folder is not writable. The
key hashes the weights' sha256, the TensorRT version, the GPU's name, the precision and the max batch size
(`engine_cache_key`): other weights, another TensorRT, another GPU or another precision give another key, so a
stale engine is never found by name; an engine whose sidecar does not match the expected fields (or whose own
sha256 does not match its sidecar's) is rebuilt, never silently used.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from .backend_common import BackendUnavailable, cache_dir
from .model import INPUT_SIZE, AgeGenderModel, ensemble
from .weights import sha256_file

log = logging.getLogger(__name__)

ENGINE_FORMAT = "agegender_ros/torch2trt-engine-v1"
# The fields that decide whether a cached engine may be used; all must match.
KEY_FIELDS = ("weights_sha256", "tensorrt_version", "gpu_name", "precision", "max_batch_size")


# --------------------------------------------------------------------------------------------------------------
# Cache key and sidecar (pure functions: unit-tested without TensorRT)


def engine_key_fields(weights_sha256: str, tensorrt_version: str, gpu_name: str, fp16: bool,
                      max_batch_size: int) -> Dict[str, Any]:
    """The fields an engine is keyed by, in the form written to its sidecar."""
    return {"weights_sha256": str(weights_sha256), "tensorrt_version": str(tensorrt_version),
            "gpu_name": str(gpu_name), "precision": "fp16" if fp16 else "fp32", "max_batch_size": int(max_batch_size)}


def engine_cache_key(fields: Dict[str, Any]) -> str:
    """16 hex digits identifying an engine build: changes whenever any of KEY_FIELDS changes."""
    canonical = json.dumps({name: fields[name] for name in KEY_FIELDS}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def sidecar_path(engine_path: Path) -> Path:
    return Path(engine_path).with_suffix(".json")


def engine_file_name(weights_path: Path, fields: Dict[str, Any]) -> str:
    return f"{Path(weights_path).stem}-{fields['precision']}-{engine_cache_key(fields)}.trt.pth"


def candidate_engine_paths(weights_path: Path, fields: Dict[str, Any]) -> list:
    """Where the cached engine for these fields may be: beside the weights, then in the cache folder."""
    name = engine_file_name(weights_path, fields)
    return [Path(weights_path).resolve().parent / name, cache_dir() / "tensorrt" / name]


def check_cached_engine(engine_path: Path, expected: Dict[str, Any]) -> Tuple[bool, str]:
    """(usable, reason). Usable only when the engine and its sidecar exist, the sidecar's key fields all equal
    `expected`, and the engine file's sha256 is the one the sidecar recorded."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        return False, f"no engine at {engine_path}"
    meta_path = sidecar_path(engine_path)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as error:
        return False, f"engine {engine_path} has no readable sidecar {meta_path.name} ({error}): origin unknown"
    if not isinstance(meta, dict) or meta.get("format") != ENGINE_FORMAT:
        return False, f"{meta_path} is not an {ENGINE_FORMAT} sidecar"
    differences = [f"{name} {meta.get(name)!r} != {expected[name]!r}" for name in KEY_FIELDS
                   if meta.get(name) != expected[name]]
    if differences:
        return False, f"engine {engine_path.name} was built for other settings: " + "; ".join(differences)
    if meta.get("engine_sha256") != sha256_file(engine_path):
        return False, f"engine {engine_path.name} does not match the sha256 its sidecar recorded (replaced or truncated)"
    return True, "matches"


def write_sidecar(engine_path: Path, fields: Dict[str, Any], extra: Optional[Dict[str, Any]] = None) -> Path:
    meta = {"format": ENGINE_FORMAT, **fields, "key": engine_cache_key(fields), **(extra or {}),
            "engine_sha256": sha256_file(engine_path)}
    path = sidecar_path(engine_path)
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return path


def _writable_dir(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".agegender-write-test-"):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------------------
# Runtime (needs CUDA + tensorrt + torch2trt)


def require_tensorrt():
    """(torch2trt module, tensorrt module), or BackendUnavailable naming everything that is missing."""
    import importlib.util

    missing = []
    if not torch.cuda.is_available():
        missing.append(f"no CUDA device (torch {torch.__version__}: torch.cuda.is_available() is False)")
    tensorrt = torch2trt = None
    try:
        import tensorrt
    except ImportError as error:
        missing.append(f"the `tensorrt` Python package is not importable ({error}; it comes with JetPack or "
                       "NVIDIA's TensorRT wheels)")
    if importlib.util.find_spec("torch2trt") is None:
        missing.append("`torch2trt` is not installed (build it from https://github.com/NVIDIA-AI-IOT/torch2trt, "
                       "see docs/jetson.md)")
    elif tensorrt is not None:
        try:
            import torch2trt
        except Exception as error:  # a broken build raises more than ImportError
            missing.append(f"`torch2trt` does not import ({type(error).__name__}: {error})")
    if missing:
        raise BackendUnavailable("TensorRT backend unavailable: " + "; ".join(missing))
    return torch2trt, tensorrt


class ForwardOutputs(torch.nn.Module):
    """The model with `forward` returning its outputs as a tuple in a fixed (sorted) order, the form torch2trt marks
    as engine outputs; `output_names` gives that order. Only the outputs the ensemble reads become engine outputs
    (not, e.g., the age-bin logits that only the training loss needs)."""

    def __init__(self, model: AgeGenderModel):
        super().__init__()
        self.model = model.eval()
        with torch.no_grad():
            example = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, device=next(model.parameters()).device)
            wanted = {f"{head}_{task}" for head in model.heads for task in ("age", "gender")}
            self.output_names = tuple(sorted(name for name in model(example) if name in wanted))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        outputs = self.model(x)
        return tuple(outputs[name] for name in self.output_names)


def build_engine(model: AgeGenderModel, fp16: bool = True, max_batch_size: int = 32):
    """A torch2trt `TRTModule` of the model's forward, and the output names in order. Needs CUDA + torch2trt."""
    torch2trt_module, _ = require_tensorrt()
    wrapper = ForwardOutputs(copy.deepcopy(model).eval().cuda())  # the caller's model stays where it is
    example = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, device="cuda")
    # max_batch_size: batch 1..max_batch_size in one engine (torch2trt turns it into the optimisation profile).
    engine = torch2trt_module.torch2trt(wrapper, [example], fp16_mode=fp16, max_batch_size=max_batch_size,
                                        input_names=["faces"], output_names=list(wrapper.output_names))
    return engine, wrapper.output_names


def load_engine(engine_path: Path):
    """A torch2trt `TRTModule` from its saved state dict (the serialized engine plus binding names)."""
    import inspect

    torch2trt_module, _ = require_tensorrt()
    # The state dict holds the engine as bytes and torch2trt's own objects; the file is ours (its sha256 was
    # checked against the sidecar), and torch >= 2.6 would refuse it with the default weights_only=True.
    extra = {"weights_only": False} if "weights_only" in inspect.signature(torch.load).parameters else {}
    engine = torch2trt_module.TRTModule()
    engine.load_state_dict(torch.load(str(engine_path), map_location="cuda", **extra))
    return engine


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, engine, output_names, model: AgeGenderModel, max_batch_size: int, precision: str,
                 engine_path: Optional[Path] = None):
        self.engine = engine
        self.output_names = tuple(output_names)
        self.heads = model.heads
        self.age_weights = model.ensemble_age_weights.detach().float().cuda()
        self.gender_weights = model.ensemble_gender_weights.detach().float().cuda()
        self.max_batch_size = int(max_batch_size)
        self.precision = precision
        self.engine_path = engine_path

    @classmethod
    def for_weights(cls, model: AgeGenderModel, weights_path, engine=None, fp16: bool = True,
                    max_batch_size: int = 32) -> "TensorRTBackend":
        """The backend for these weights: a valid cached engine (the given `engine` file, else the cache beside the
        weights, else the cache folder) is loaded; anything else is (re)built and saved."""
        _torch2trt, tensorrt = require_tensorrt()
        weights_path = Path(weights_path)
        fields = engine_key_fields(sha256_file(weights_path), tensorrt.__version__,
                                   torch.cuda.get_device_name(torch.cuda.current_device()), fp16, max_batch_size)
        candidates = [Path(engine)] if engine else candidate_engine_paths(weights_path, fields)
        output_names = ForwardOutputs(copy.deepcopy(model).eval().cuda()).output_names
        for path in candidates:
            usable, reason = check_cached_engine(path, fields)
            if usable:
                try:
                    module = load_engine(path)
                except Exception as error:  # a TRT/torch2trt version skew surfaces here as many exception types
                    log.warning("tensorrt: cannot load cached engine %s (%s: %s); rebuilding", path,
                                type(error).__name__, error)
                    break
                log.info("tensorrt: using cached engine %s", path)
                return cls(module, output_names, model, max_batch_size, fields["precision"], path)
            if path.exists():
                log.warning("tensorrt: not using %s: %s; rebuilding", path, reason)
            else:
                log.info("tensorrt: %s", reason)
        log.info("tensorrt: building %s engine (max batch %d) for %s; this takes a while once", fields["precision"],
                 max_batch_size, weights_path.name)
        module, output_names = build_engine(model, fp16=fp16, max_batch_size=max_batch_size)
        path = save_engine(module, weights_path, fields, output_names, target=Path(engine) if engine else None)
        return cls(module, output_names, model, max_batch_size, fields["precision"], path)

    def __call__(self, batch: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).cuda()
        if len(x) == 0:
            empty = np.zeros(0, np.float32)
            return empty, empty.copy(), empty.copy()
        results = []
        with torch.no_grad():
            # The engine's profile stops at max_batch_size: run bigger batches in slices.
            for start in range(0, len(x), self.max_batch_size):
                outputs = self.engine(x[start:start + self.max_batch_size])
                if not isinstance(outputs, (tuple, list)):
                    outputs = (outputs,)
                named = {name: out.float().reshape(-1) for name, out in zip(self.output_names, outputs)}
                results.append(ensemble(named, self.heads, self.age_weights, self.gender_weights))
        age, p_male, age_std = (torch.cat([r[i] for r in results]).cpu().numpy() for i in range(3))
        return age, p_male, age_std


def save_engine(module, weights_path: Path, fields: Dict[str, Any], output_names, target: Optional[Path] = None
                ) -> Path:
    """Write the TRTModule state dict (atomically) and its sidecar: to `target`, else beside the weights, else (when
    that folder is not writable) into the cache folder. Returns the engine's path."""
    if target is None:
        beside, fallback = candidate_engine_paths(weights_path, fields)
        target = beside if _writable_dir(beside.parent) else fallback
        if target is fallback:
            log.info("tensorrt: %s is not writable; caching the engine in %s", beside.parent, fallback.parent)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    torch.save(module.state_dict(), str(partial))
    os.replace(partial, target)
    try:
        import torch2trt as t2t

        torch2trt_version = getattr(t2t, "__version__", "unknown")
    except ImportError:  # pragma: no cover - build_engine needed it
        torch2trt_version = "unknown"
    write_sidecar(target, fields, {"weights": str(Path(weights_path).resolve()), "output_names": list(output_names),
                                   "torch_version": torch.__version__, "torch2trt_version": torch2trt_version})
    log.info("tensorrt: engine saved to %s", target)
    return target
