"""What every backend module shares, with no backend's dependencies: the interface, the "unavailable" error and the
cache folder. `backends.py` (the selection), `torch_backend.py` and `tensorrt_backend.py` import this module; it
imports none of them, so the backend modules depend on each other one way only.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, Tuple

import numpy as np

# How to get the optional parts, in the one-line errors that name them.
TORCH_INSTALL_HINT = ("pip install 'agegender_ros[train]' (or `pip install torch`; on a Jetson, NVIDIA's torch wheel "
                      "for your JetPack, see docs/jetson.md)")


class BackendUnavailable(RuntimeError):
    """A backend cannot run here (a package or device is missing); the message says what and how to get it."""


class Backend(Protocol):
    name: str

    def __call__(self, batch: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def cache_dir() -> Path:
    return Path(os.environ.get("AGEGENDER_CACHE", Path.home() / ".cache" / "agegender_ros"))


def torch_missing(error: ImportError) -> bool:
    """True when this ImportError means that PyTorch itself is not installed (not a bug inside a module)."""
    return isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] == "torch"
