"""On-device, batched augmentation of the stored face crops.

Training faces live in memory as uint8 80x80 crops (cache.py) on the training device. Each step's batch is
augmented there: flip, shift/scale/rotation in one affine resample to 64x64, colour jitter, some greyscale, and
optionally smeared tight-crop margins (tight_crop) and other cameras' degradations (camera_degrade: low resolution,
blur, sensor noise, JPEG). It is then normalised with the runtime's own constants. Without augmentation
(evaluation, prediction) the same resample takes the inference crop. The random draws come from the caller's
generator, which train.py seeds from (seed, epoch).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from agegender_ros.model import MEAN_RGB, STD_RGB, normalise_crops_tensor

from .cache import CONTEXT


def augment_batch(crops: torch.Tensor, generator: torch.Generator | None, enabled: bool,
                  grayscale_p: float = 0.1, camera: float = 0.0, tight_crop_p: float = 0.0) -> torch.Tensor:
    """uint8 N x 80 x 80 x 3 BGR crops -> normalised N x 3 x 64 x 64 float input, randomly augmented if enabled
    (camera: the strength of camera_degrade, 0 = none)."""
    n, device = crops.shape[0], crops.device
    x = normalise_crops_tensor(crops)
    # The identity resample takes the central 64/80 of the stored crop = the inference crop.
    base = 1.0 / CONTEXT
    if enabled:
        def uniform(low, high):
            return torch.rand(n, generator=generator, device="cpu").to(device) * (high - low) + low

        angle = uniform(-10, 10) * math.pi / 180
        scale = base * uniform(0.9, 1.1)
        tx, ty = uniform(-0.06, 0.06), uniform(-0.06, 0.06)
        flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    else:
        angle = torch.zeros(n, device=device)
        scale = torch.full((n,), base, device=device)
        tx = ty = torch.zeros(n, device=device)
        flip = torch.ones(n, device=device)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, (n, 3, 64, 64), align_corners=False)
    if enabled and tight_crop_p > 0:
        grid = tight_crop(grid, tight_crop_p, generator)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if enabled:
        # Colour jitter in normalised space: brightness (shift), contrast (scale about the mean), saturation.
        brightness = (torch.rand(n, 1, 1, 1, generator=generator) - 0.5).to(device) * 0.8
        contrast = (torch.rand(n, 1, 1, 1, generator=generator) * 0.6 + 0.7).to(device)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean + brightness
        grey = x.mean(1, keepdim=True)
        saturation = (torch.rand(n, 1, 1, 1, generator=generator) * 0.8 + 0.6).to(device)
        to_grey = (torch.rand(n, 1, 1, 1, generator=generator) < grayscale_p).to(device)
        saturation = torch.where(to_grey, torch.zeros_like(saturation), saturation)
        x = grey + (x - grey) * saturation
        if camera:
            x = camera_degrade(x, generator, float(camera))
    return x.contiguous(memory_format=torch.channels_last)


def tight_crop(grid: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Clamp the sampling grid of a random fraction p of the faces to a random box around the face (in stored-crop
    coordinates, where the inference crop spans +-0.8): outside the box the resample repeats the box's edge pixels,
    which is what a tightly cropped source photo looks like after `align_crop`."""
    n = grid.shape[0]
    # Box edges between 0.45 (a chip barely wider than the face) and 0.85 (just outside the inference crop).
    edges = (torch.rand(n, 4, generator=generator) * 0.4 + 0.45).to(grid.device)
    chosen = (torch.rand(n, generator=generator) < p).to(grid.device)
    edges = torch.where(chosen[:, None], edges, torch.full_like(edges, 2.0))  # 2.0: beyond the crop, no clamp
    low = -edges[:, None, None, :2]  # left, top
    high = edges[:, None, None, 2:]  # right, bottom
    return torch.maximum(torch.minimum(grid, high), low)


def _chosen(n: int, p: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.nonzero(torch.rand(n, generator=generator) < p).flatten()


def _gaussian_kernel(sigma: float, device) -> torch.Tensor:
    offsets = torch.arange(-2, 3, dtype=torch.float32, device=device)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = torch.outer(kernel, kernel) / kernel.sum() ** 2
    return kernel.expand(3, 1, 5, 5)


def camera_degrade(x: torch.Tensor, generator: torch.Generator | None, strength: float = 1.0) -> torch.Tensor:
    """What other cameras do to a face, each to a random part of the batch: a small sensor or a distant face
    (downsample, then upsample back), defocus (Gaussian blur), sensor noise, and JPEG compression. strength scales
    each part (1: a quarter of the faces low-resolution, a fifth blurred, a fifth noisy, a quarter compressed)."""
    n, device = x.shape[0], x.device
    x = x.clone()
    low_res = _chosen(n, 0.25 * strength, generator).to(device)
    if len(low_res):
        side = int(torch.randint(14, 41, (1,), generator=generator))
        small = F.interpolate(x[low_res], size=(side, side), mode="area")
        x[low_res] = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
    blurred = _chosen(n, 0.2 * strength, generator).to(device)
    if len(blurred):
        sigma = float(torch.rand(1, generator=generator)) * 1.0 + 0.6
        padded = F.pad(x[blurred], (2, 2, 2, 2), mode="reflect")
        x[blurred] = F.conv2d(padded, _gaussian_kernel(sigma, device), groups=3)
    noisy = _chosen(n, 0.2 * strength, generator).to(device)
    if len(noisy):
        # Pixel noise of 1-6% of the range, in normalised units (the channels' std is about 0.226).
        level = (torch.rand(len(noisy), 1, 1, 1, generator=generator) * 0.05 + 0.01).to(device) / 0.226
        x[noisy] = x[noisy] + torch.randn(x[noisy].shape, generator=generator).to(device) * level
    compressed = _chosen(n, 0.25 * strength, generator)
    if len(compressed):
        qualities = torch.randint(20, 76, (len(compressed),), generator=generator).tolist()
        x[compressed.to(device)] = _jpeg(x[compressed.to(device)], qualities)
    return x


def _jpeg(x: torch.Tensor, qualities: list[int]) -> torch.Tensor:
    """JPEG round trip (OpenCV, on the CPU) of normalised RGB images at the given qualities."""
    import cv2

    mean = torch.tensor(MEAN_RGB, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD_RGB, device=x.device).view(1, 3, 1, 1)
    pixels = ((x * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).flip(-1).cpu().numpy()
    out = []
    for image, quality in zip(pixels, qualities):
        ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        out.append(cv2.imdecode(data, cv2.IMREAD_COLOR) if ok else image)
    decoded = torch.from_numpy(np.stack(out)).to(x.device).flip(-1).permute(0, 3, 1, 2).float() / 255.0
    return (decoded - mean) / std
