"""The network's input and output contract, without torch: what the runtime (estimator, ONNX Runtime backend, node)
needs to feed the network and read its answer. `model.py` (the torch network) takes its constants from here.

Inputs are 64x64 RGB in [0, 1], normalised per channel with the ImageNet statistics below (recorded in every model
card); age regressors output a raw value r and age = AGE_OFFSET + AGE_SCALE * r.
"""
from __future__ import annotations

import numpy as np

INPUT_SIZE = 64
MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)
AGE_OFFSET = 35.0
AGE_SCALE = 20.0


def normalise_crops(crops_bgr: np.ndarray) -> np.ndarray:
    """N x 64 x 64 x 3 BGR uint8 crops -> N x 3 x 64 x 64 float32 network input (RGB, [0,1], mean/std)."""
    rgb = crops_bgr[..., ::-1].astype(np.float32) / 255.0
    rgb = (rgb - np.asarray(MEAN_RGB, np.float32)) / np.asarray(STD_RGB, np.float32)
    return np.ascontiguousarray(rgb.transpose(0, 3, 1, 2))
