"""Import `timm`'s model definitions without torchvision.

timm (every release from 0.6 to 1.0.x) imports torchvision at package import time for two things the model
definitions do not need here: `torchvision.ops.misc.FrozenBatchNorm2d` (only used to freeze a pretrained backbone)
and its data pipeline (`timm.data`: datasets and transforms; the model files only read its mean/std constants).
PyPI's torchvision does not install beside the pinned CPU torch, so when torchvision is missing we import timm
with two stand-ins, both confined to that import:

- `torchvision.ops.misc` holding a small `FrozenBatchNorm2d` (same buffers and maths as torchvision's), placed in
  `sys.modules` only while timm imports and removed afterwards, so the rest of the process still sees no
  torchvision;
- `timm.data` as a namespace holding only `timm/data/constants.py` (its submodules stay importable by name).

With a working torchvision installed, timm is imported as it is. timm's own data loaders, transforms and
`timm.utils` are not available in the stand-in mode; nothing here uses them.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

_timm = None


class TimmUnavailable(ImportError):
    """timm is not installed, or cannot be imported even with the stand-ins."""


def _frozen_batch_norm_class():
    import torch
    from torch import nn

    class FrozenBatchNorm2d(nn.Module):
        """BatchNorm2d with fixed statistics and affine parameters (torchvision.ops.misc's layout)."""

        def __init__(self, num_features: int, eps: float = 1e-5):
            super().__init__()
            self.eps = eps
            self.register_buffer("weight", torch.ones(num_features))
            self.register_buffer("bias", torch.zeros(num_features))
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))

        def forward(self, x):
            scale = self.weight * (self.running_var + self.eps).rsqrt()
            shift = self.bias - self.running_mean * scale
            return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    return FrozenBatchNorm2d


def _has_torchvision() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a torchvision built for another torch fails in many ways
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


def import_timm():
    """The `timm` module (cached); raises TimmUnavailable with the reason when it cannot be had."""
    global _timm
    if _timm is not None:
        return _timm
    spec = importlib.util.find_spec("timm")
    if spec is None or spec.origin is None:
        raise TimmUnavailable("timm is not installed (pip install --no-deps timm)")
    if _has_torchvision() or "timm" in sys.modules:
        import timm

        _timm = timm
        return timm

    stubs = {name: types.ModuleType(name) for name in ("torchvision", "torchvision.ops", "torchvision.ops.misc")}
    stubs["torchvision.ops.misc"].FrozenBatchNorm2d = _frozen_batch_norm_class()
    stubs["torchvision"].ops = stubs["torchvision.ops"]
    stubs["torchvision.ops"].misc = stubs["torchvision.ops.misc"]

    data_dir = Path(spec.origin).parent / "data"
    constants_spec = importlib.util.spec_from_file_location("timm.data.constants", data_dir / "constants.py")
    constants = importlib.util.module_from_spec(constants_spec)
    constants_spec.loader.exec_module(constants)
    data = types.ModuleType("timm.data", "timm.data stand-in: constants only (timm's data pipeline needs torchvision)")
    data.__path__ = [str(data_dir)]
    data.__dict__.update({k: v for k, v in vars(constants).items() if k.isupper()})

    sys.modules.update(stubs)
    sys.modules["timm.data"] = data
    sys.modules["timm.data.constants"] = constants
    try:
        import timm
    except Exception as error:  # noqa: BLE001
        for name in [n for n in sys.modules if n == "timm" or n.startswith("timm.")]:
            del sys.modules[name]
        raise TimmUnavailable(f"timm {getattr(error, 'name', '') or ''} failed to import without torchvision: "
                              f"{error}") from error
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
    timm.data = data
    _timm = timm
    return timm
