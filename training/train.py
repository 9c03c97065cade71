"""The trainer: the paper's 6-term loss, AdamW + one-cycle schedule, on-device augmentation, exact resume, DDP.

Data live in memory as uint8 80x80 crops (see cache.py) on the training device; each step samples a batch,
augments it on the device (flip, shift/scale/rotation in one affine resample to 64x64, colour jitter, some
greyscale; optionally smeared tight-crop margins and other cameras' degradations) and normalises it with the
runtime's own constants. Every epoch's shuffle, augmentation and dropout are seeded by (seed, epoch), so a run
resumed from its last checkpoint replays exactly what an uninterrupted run does; a resume with another recipe or
other training faces is refused, naming the difference.

Options beyond the paper's recipe, each measured in docs/results.md: label-distribution age heads (age_bins),
age-balanced sampling (age_balance) and knowledge distillation from frozen teachers (teacher), including
faces that only a teacher labels (CelebA's gender-only faces get the teachers' ages).

Multi-GPU / multi-machine: start with `torchrun --nproc-per-node N -m training.cli train ...`; each rank takes
its share of every epoch's permutation and DistributedDataParallel averages gradients. Only rank 0 writes.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from agegender_ros import faces
from agegender_ros.model import (HEADS, MEAN_RGB, STD_RGB, AgeGenderModel, age_bin_centres, create_model,
                                  ensemble, normalise_crops_tensor)
from agegender_ros.weights import LEGACY_CROP_SCALE, load_model, save_weights

from .cache import CONTEXT, PreprocessedSet
from .metrics import age_gender_metrics, group_report, interval_metrics
from .reparam import expand, fuse

log = logging.getLogger(__name__)

# The paper: small weights for the two virtual outputs, larger for the low-level pair, largest for the final pair.
DEFAULT_LOSS_WEIGHTS = {"final": 1.0, "low": 0.5, "virtual": 0.25}
# How a face's age label and its teacher age combine (TrainConfig.distill_age_mix).
AGE_MIXES = ("loss", "target")


@dataclass
class TrainConfig:
    model: str = "paper"
    epochs: int = 60
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.1
    loss_weights: dict = field(default_factory=lambda: dict(DEFAULT_LOSS_WEIGHTS))
    age_loss_scale: float = 0.1  # age L1 in decades, so it is of the same order as the gender BCE
    seed: int = 0
    augment: bool = True
    grayscale_p: float = 0.1  # some greyscale faces: cameras, mugshots and IR frames are often colourless
    camera_augment: bool = False  # also mimic other cameras: low resolution, blur, sensor noise, JPEG
    # UTKFace's chips are cropped so tightly that the crop's margin is a smear of the chip's edge pixels (the crop
    # replicates borders), so "smeared margin" would tell the network "UTKFace" and its age distribution. This
    # smears the margin of that fraction of every dataset's faces, as if they too came from a tight chip.
    tight_crop_p: float = 0.0
    # Face crop side / face size (agegender_ros/faces.py); recorded in the model card, where the runtime reads it.
    crop_scale: float = faces.CROP_SCALE
    age_bins: int = 0  # paper net only: 0 = regress each age (L1); K = label distribution over K bins (+ L1)
    width: float = 1.0  # paper net only: channel multiplier (1 = the paper's ~99.2k parameters; capacity studies)
    # Train every conv as parallel k x k, 1 x 1 and identity branches and fold them into the one conv it ships as
    # (training/reparam.py, RepVGG): more to optimise during training, the same network and FLOPs afterwards.
    reparam: bool = False
    age_sigma: float = 0.0  # label distribution width in years (0: the bin spacing)
    label_distribution_weight: float = 1.0  # weight of the distribution loss next to each head's age L1
    # Sample each face with probability proportional to (faces in its 5-year age bin)^-age_balance: 0 = every face
    # once per epoch (the paper), 1 = every age bin equally often. Counters the pull towards the training sets'
    # mean age that shows as overestimated children and underestimated elderly on faces from elsewhere.
    age_balance: float = 0.0
    # Knowledge distillation: comma-separated teachers whose averaged (age, P(male)) is a second target for every
    # head, mixed with the labels at distill_weight: registered teachers (training/teachers, e.g. hse-faceres-deep),
    # run once per training face from the photo and cached, and/or our own weight files, run on each augmented
    # batch. Training only: the teachers never ship, and they need not share the student's architecture.
    teacher: str = ""
    distill_weight: float = 0.5
    # The teachers' share of the gender loss where a face has a gender label (default: distill_weight). Real
    # labels beat a teacher's gender where they exist; the teachers still label the faces that have none.
    distill_gender_weight: float | None = None
    # How a face's age label and teacher age are mixed. "loss": (1 - a) x L1 to the label + a x L1 to the teacher
    # (the earlier runs). That sum is flat anywhere between label and teacher at a = 0.5, so a student already
    # between them learns nothing from the teacher. "target": L1 to (1 - a) x label + a x teacher, which is what
    # mixing means for the gender BCE (linear in its target) and in Hinton et al.'s cross-entropy distillation.
    distill_age_mix: str = "loss"
    # With label-distribution age heads (age_bins), also learn the teachers' age distribution (a registered
    # teacher's 100 softmax bins, moved through the age calibration where one is set; a weight file's own bins),
    # shared out onto our bins and mixed with the Gaussian label distribution at distill_weight: how sure the
    # teacher is, and between which ages it hesitates, is knowledge its expected age alone does not carry. Only
    # when every teacher has one.
    distill_age_distribution: bool = True
    # Registered teachers' pass over the training faces: bfloat16 is ~3.7x faster on CPUs with AVX-512 BF16, and
    # ~0.3 years from float32 on average, far below the teachers' own error (docs/results.md).
    teacher_precision: str = "bfloat16"
    # Comma-separated datasets whose faces learn from their labels alone, where a teacher is worse than the labels
    # in a way that matters (HSE FaceRes underestimates AAF's Asian faces over 30 by 6-12 years).
    teacher_skip: str = ""
    # Map each registered teacher's ages onto our labels' scale before distilling (training/teachers/calibration.py:
    # "quantile" or "median", "" = raw ages). Fitted per training dataset on its labelled faces; faces of datasets
    # without age labels (CelebA) use the map of teacher_calibration_reference (comma-separated datasets, default:
    # every labelled training face). HSE FaceRes's raw ages are 3-11 years too young on AAF past 20.
    teacher_calibration: str = ""
    teacher_calibration_reference: str = ""
    threads: int = 0  # CPU threads (0: torch default)
    device: str = "auto"
    amp: bool = True  # on CUDA only
    init_weights: str = ""  # start from these weights (e.g. FG-NET LOPO: pretrain elsewhere, fine-tune per fold)

    def model_args(self) -> dict:
        """Constructor arguments recorded in the model card, so `load_model` rebuilds the same network."""
        if self.age_bins and self.model != "paper":
            raise ValueError(f"age bins (label-distribution learning) are an option of the paper net, not of "
                             f"{self.model!r}")
        if self.width != 1.0 and self.model != "paper":
            raise ValueError(f"width is an option of the paper net, not of {self.model!r}")
        if self.reparam and self.model != "paper":  # training/reparam.py folds the paper net's conv units
            raise ValueError(f"reparam is an option of the paper net, not of {self.model!r}")
        return {**({"age_bins": self.age_bins} if self.age_bins else {}),
                **({"width": self.width} if self.width != 1.0 else {})}


# --------------------------------------------------------------------------------------------------------------
# augmentation (on the device, batched)


def augment_batch(crops: torch.Tensor, generator: torch.Generator | None, enabled: bool,
                  grayscale_p: float = 0.1, camera: bool = False, tight_crop_p: float = 0.0) -> torch.Tensor:
    """uint8 N x 80 x 80 x 3 BGR crops -> normalised N x 3 x 64 x 64 float input, randomly augmented if enabled."""
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
            x = camera_degrade(x, generator)
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


def age_sampling_weights(ages: np.ndarray, power: float, bin_years: float = 5.0) -> torch.Tensor:
    """Per-face sampling weight (faces in its bin_years age bin)^-power, normalised to a mean of 1."""
    bins = np.floor(np.asarray(ages, np.float64) / bin_years).astype(np.int64)
    _, inverse, counts = np.unique(bins, return_inverse=True, return_counts=True)
    weights = counts[inverse].astype(np.float64) ** -float(power)
    return torch.from_numpy(weights / weights.mean())


def _chosen(n: int, p: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.nonzero(torch.rand(n, generator=generator) < p).flatten()


def _gaussian_kernel(sigma: float, device) -> torch.Tensor:
    offsets = torch.arange(-2, 3, dtype=torch.float32, device=device)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = torch.outer(kernel, kernel) / kernel.sum() ** 2
    return kernel.expand(3, 1, 5, 5)


def camera_degrade(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """What other cameras do to a face, each to a random part of the batch: a small sensor or a distant face
    (downsample, then upsample back), defocus (Gaussian blur), sensor noise, and JPEG compression."""
    n, device = x.shape[0], x.device
    x = x.clone()
    low_res = _chosen(n, 0.25, generator).to(device)
    if len(low_res):
        side = int(torch.randint(14, 41, (1,), generator=generator))
        small = F.interpolate(x[low_res], size=(side, side), mode="area")
        x[low_res] = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
    blurred = _chosen(n, 0.2, generator).to(device)
    if len(blurred):
        sigma = float(torch.rand(1, generator=generator)) * 1.0 + 0.6
        padded = F.pad(x[blurred], (2, 2, 2, 2), mode="reflect")
        x[blurred] = F.conv2d(padded, _gaussian_kernel(sigma, device), groups=3)
    noisy = _chosen(n, 0.2, generator).to(device)
    if len(noisy):
        # Pixel noise of 1-6% of the range, in normalised units (the channels' std is about 0.226).
        level = (torch.rand(len(noisy), 1, 1, 1, generator=generator) * 0.05 + 0.01).to(device) / 0.226
        x[noisy] = x[noisy] + torch.randn(x[noisy].shape, generator=generator).to(device) * level
    compressed = _chosen(n, 0.25, generator)
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


# --------------------------------------------------------------------------------------------------------------
# loss


def _weighted_mean(label_loss: torch.Tensor, label_weight: torch.Tensor, teacher_loss: torch.Tensor | None,
                   teacher_weight: torch.Tensor | None) -> torch.Tensor:
    """Mean over the faces that have any target of label_weight x label_loss + teacher_weight x teacher_loss."""
    total = torch.where(label_weight > 0, label_weight * label_loss, torch.zeros_like(label_loss))
    covered = label_weight > 0
    if teacher_loss is not None:
        total = total + torch.where(teacher_weight > 0, teacher_weight * teacher_loss, torch.zeros_like(teacher_loss))
        covered = covered | (teacher_weight > 0)
    return total.sum() / covered.sum().clamp(min=1)


def interval_l1(predicted: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Years outside [low, high]: 0 inside an age-group label, |predicted - age| for a year's label (low = high)."""
    return F.relu(low - predicted) + F.relu(predicted - high)


def multitask_loss(outputs: dict[str, torch.Tensor], ages: torch.Tensor, genders: torch.Tensor,
                   config: TrainConfig, teacher: tuple[torch.Tensor, torch.Tensor] | None = None,
                   age_ranges: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum over heads of age L1 (MAE) and gender BCE.

    age_ranges (faces x 2), where given, are the age labels' [low, high] years: the age loss is the years outside
    that range, zero inside an age group (FairFace's "20-29") and the L1 to the age for a year's label (low = high);
    label-distribution heads then learn the group's bins. A teacher's age for a face with an age group is expected
    to lie inside it already (train() clips it there).

    Labels may be missing: a NaN age (CelebA), gender -1 (FG-NET); such a face adds nothing to that term. teacher =
    (age, P(male)) per face (NaN where a teacher has no answer): where a face has both a label and a teacher
    target, its loss is (1 - a) x (loss to the label) + a x (loss to the teacher), a = config.distill_weight; where
    it has only the teacher's, the teacher's alone (CelebA's ages, its unlabelled faces' gender). The gender term
    uses config.distill_gender_weight where set. With config.distill_age_mix = "target", a face with both ages
    learns the mixed age (1 - a) x label + a x teacher instead. A third teacher entry, where given, is the teachers'
    age distribution over the model's age bins (NaN rows: none), mixed into the label distribution the same way."""
    a = config.distill_weight if teacher is not None else 0.0
    a_gender = a if config.distill_gender_weight is None or teacher is None else config.distill_gender_weight
    has_age, known = torch.isfinite(ages), genders >= 0
    age_label = torch.nan_to_num(ages)
    if teacher is not None:
        has_teacher_age, has_teacher_p = torch.isfinite(teacher[0]), torch.isfinite(teacher[1])
        teacher_age, teacher_p = torch.nan_to_num(teacher[0]), torch.nan_to_num(teacher[1]).clamp(0, 1)
        if config.distill_age_mix == "loss":
            age_weights = (torch.where(has_age, torch.where(has_teacher_age, 1 - a, 1.0), 0.0),
                           torch.where(has_teacher_age, torch.where(has_age, a, 1.0), 0.0))
        elif config.distill_age_mix == "target":  # one target per face: the mix where both exist, else either
            age_label = torch.where(has_age & has_teacher_age, (1 - a) * age_label + a * teacher_age,
                                    torch.where(has_age, age_label, teacher_age))
            age_weights = ((has_age | has_teacher_age).float(), torch.zeros_like(teacher_age))
        else:
            raise ValueError(f"distill_age_mix {config.distill_age_mix!r}: expected one of {', '.join(AGE_MIXES)}")
        gender_weights = (torch.where(known, torch.where(has_teacher_p, 1 - a_gender, 1.0), 0.0),
                          torch.where(has_teacher_p, torch.where(known, a_gender, 1.0), 0.0))
    else:
        age_weights, gender_weights = (has_age.float(), None), (known.float(), None)
    gender_label = genders.clamp(min=0).float()
    has_distribution, distribution_target = age_distribution_targets(outputs, ages, config, teacher, a, age_ranges)
    if age_ranges is not None and config.distill_age_mix == "target" and teacher is not None:
        # The teacher's age, inside the face's group, is the mixed target's label part too.
        grouped = has_age & has_teacher_age & (age_ranges[:, 1] > age_ranges[:, 0])
        age_label = torch.where(grouped, teacher_age, age_label)
    total = torch.zeros((), device=ages.device)
    parts = {}
    for head in HEADS:
        weight = float(config.loss_weights.get(head, 0.0))
        if f"{head}_age" in outputs:
            predicted = outputs[f"{head}_age"]
            distilled = (predicted - teacher_age).abs() * config.age_loss_scale if teacher is not None else None
            if distilled is not None:
                parts[f"{head}_age_distilled"] = float(_weighted_mean(distilled, has_teacher_age.float(), None,
                                                                      None).detach())
            if age_ranges is None or config.distill_age_mix == "target":
                to_label = (predicted - age_label).abs()
            else:
                to_label = interval_l1(predicted, torch.nan_to_num(age_ranges[:, 0]),
                                       torch.nan_to_num(age_ranges[:, 1], nan=0.0, posinf=torch.inf))
            loss = _weighted_mean(to_label * config.age_loss_scale, age_weights[0], distilled, age_weights[1])
            if f"{head}_age_logits" in outputs and has_distribution.any():
                distribution = distribution_loss(outputs[f"{head}_age_logits"][has_distribution],
                                                 distribution_target)
                parts[f"{head}_age_distribution"] = float(distribution.detach())
                loss = loss + config.label_distribution_weight * distribution
            total = total + weight * loss
            parts[f"{head}_age"] = float(loss.detach())
        if f"{head}_gender" in outputs and (known.any() or teacher is not None):
            logits = outputs[f"{head}_gender"]
            distilled = F.binary_cross_entropy_with_logits(logits, teacher_p, reduction="none") \
                if teacher is not None else None
            if distilled is not None:
                parts[f"{head}_gender_distilled"] = float(_weighted_mean(distilled, has_teacher_p.float(), None,
                                                                         None).detach())
            loss = _weighted_mean(F.binary_cross_entropy_with_logits(logits, gender_label, reduction="none"),
                                  gender_weights[0], distilled, gender_weights[1])
            total = total + weight * loss
            parts[f"{head}_gender"] = float(loss.detach())
    return total, parts


def comma_list(text: str) -> list[str]:
    """The entries of a comma-separated option (TrainConfig.teacher, teacher_skip, ...), blanks dropped."""
    return [name.strip() for name in text.split(",") if name.strip()]


def teacher_names(teacher: str) -> list[str]:
    """Every entry of TrainConfig.teacher (comma-separated): registered teacher names or weight files."""
    return comma_list(teacher)


def data_sources(data: PreprocessedSet) -> np.ndarray:
    """The dataset of every face (one name for all when the set does not record them)."""
    return data.sources if data.sources is not None else np.full(len(data), "data")


def teacher_paths(teacher: str) -> list[str]:
    """The weight files named in TrainConfig.teacher (our own models, run on each augmented batch)."""
    from .teachers import TEACHERS

    return [name for name in teacher_names(teacher) if name not in TEACHERS]


def registered_teachers(teacher: str) -> list[str]:
    """The registered teachers named in TrainConfig.teacher (training/teachers; run once per face, cached)."""
    from .teachers import TEACHERS

    return [name for name in teacher_names(teacher) if name in TEACHERS]


@dataclass
class CachedTeacherAnswers:
    """The registered teachers' cached answers for a training set: read once, then averaged into scalar targets
    and, for label-distribution heads, into age distributions."""
    taught: np.ndarray  # indices of the faces the teachers answered for (not those of --teacher-skip datasets)
    answers: dict  # {teacher name: training.teachers.TeacherTargets over the taught faces}
    faces: int  # faces in the whole set

    def targets(self) -> tuple[np.ndarray, np.ndarray]:
        """The teachers' mean (age, P(male)) for every face; NaN for skipped faces and unreadable photos."""
        ages, p_male = np.full(self.faces, np.nan, np.float32), np.full(self.faces, np.nan, np.float32)
        ages[self.taught] = np.mean([t.ages for t in self.answers.values()], 0)
        p_male[self.taught] = np.mean([t.p_male for t in self.answers.values()], 0)
        return ages, p_male

    def distributions(self, sources: np.ndarray, bins: int, calibrations: dict | None = None) -> np.ndarray:
        """The teachers' mean age distribution over a model's `bins` age bins (faces x bins; NaN rows as in
        targets). With calibrations ({dataset: AgeCalibration}), each teacher bin's age goes through its face's
        dataset map first, so the distribution lands on the labels' age scale."""
        from .teachers import rebin_age_distribution, spec_for

        centres = age_bin_centres(bins).numpy()
        taught_sources = sources[self.taught]
        total = np.zeros((len(self.taught), bins), np.float32)
        for name, answers in self.answers.items():
            bin_ages = np.arange(answers.age_probs.shape[1], dtype=np.float64) + spec_for(name).age_offset
            shared = np.zeros_like(total)
            for dataset in dict.fromkeys(taught_sources.tolist()):
                chosen = taught_sources == dataset
                mapped = calibrations[dataset](bin_ages) if calibrations and dataset in calibrations else bin_ages
                shared[chosen] = rebin_age_distribution(answers.age_probs[chosen], mapped, centres)
            shared[answers.failed | ~np.isfinite(answers.ages)] = np.nan  # photo unreadable: a blank's answer
            total += shared  # a NaN row stays NaN: no mean over fewer teachers, as in targets
        distributions = np.full((self.faces, bins), np.nan, np.float32)
        distributions[self.taught] = total / len(self.answers)
        return distributions


def cached_teacher_answers(teacher: str, data: PreprocessedSet, precision: str = "bfloat16", threads: int = 0,
                           progress: bool = True, skip: str = "") -> CachedTeacherAnswers | None:
    """The registered teachers' answers for every face of data, from the photos and the cached face boxes (run
    once per face and kept: training/teachers), except the faces of the datasets named in skip (comma-separated:
    they learn from their labels alone). None when no registered teacher is named."""
    from .teachers import teacher_targets

    names = registered_teachers(teacher)
    if not names:
        return None
    taught = np.flatnonzero(~np.isin(data_sources(data), comma_list(skip)))
    answers = {name: teacher_targets(name, data.paths[taught], data.boxes[taught], precision, threads=threads,
                                     progress=progress) for name in names}
    return CachedTeacherAnswers(taught, answers, len(data))


def teacher_age_calibrations(teacher_ages: np.ndarray, data: PreprocessedSet, method: str,
                             reference: str = "") -> dict:
    """{dataset: AgeCalibration} for every dataset in data: its own map where it has enough faces with both an
    age label and a teacher age, else the map fitted on the reference datasets' faces (comma-separated; default:
    all such faces)."""
    from .teachers.calibration import MIN_FACES, fit_calibration

    sources = data_sources(data)
    # Faces labelled with a year only: a map fitted to age groups' middles would pull every age onto a few values.
    # A dataset of age groups (FairFace) takes the reference map, and its teacher ages are clipped into each face's
    # group afterwards (clip_into_age_groups).
    both = np.isfinite(teacher_ages) & np.isfinite(data.ages) & (data.age_ranges[:, 1] <= data.age_ranges[:, 0])
    references = comma_list(reference)
    pool = both & np.isin(sources, references) if references else both
    maps = {}
    for name in dict.fromkeys(sources.tolist()):
        if not np.isfinite(teacher_ages[sources == name]).any():  # skipped (--teacher-skip): nothing to map
            continue
        own = both & (sources == name)
        chosen = own if own.sum() >= MIN_FACES else pool
        fitted_on = name if chosen is own else (",".join(references) or "all labelled datasets")
        try:
            maps[name] = fit_calibration(teacher_ages[chosen], data.ages[chosen], method, fitted_on=fitted_on)
        except ValueError as error:
            raise ValueError(f"teacher calibration for {name}'s faces: {error} (reference: "
                             f"{', '.join(references) or 'all labelled training faces'})") from error
        log.info("teacher calibration for %s (%s map fitted on %s, %d faces)", name, method, maps[name].fitted_on,
                 maps[name].faces)
    return maps


def clip_into_age_groups(teacher_ages: np.ndarray, data: PreprocessedSet) -> np.ndarray:
    """The teacher's ages, each clipped into its face's labelled age group where the face has one (the teacher
    knows the age better than a group's middle, the label knows the group better than the teacher)."""
    low, high = data.age_ranges[:, 0], data.age_ranges[:, 1]
    grouped = np.isfinite(teacher_ages) & np.isfinite(low) & (high > low)
    clipped = np.array(teacher_ages, np.float32, copy=True)
    # [low, high): the group's last year ends just below high
    clipped[grouped] = np.clip(teacher_ages[grouped], low[grouped], np.minimum(high[grouped] - 0.5, 200.0))
    return clipped


def restrict_to_age_groups(distributions: np.ndarray, data: PreprocessedSet, bins: int, sigma: float = 0.0
                           ) -> np.ndarray:
    """The teachers' age distributions of faces with an age group, restricted to that group: each bin's mass times
    the share of the bin's span that lies in the group, renormalised (the teacher's belief given the label); where
    the teacher puts no mass in the group, the group's label distribution."""
    low, high = data.age_ranges[:, 0], data.age_ranges[:, 1]
    grouped = np.flatnonzero(np.isfinite(distributions).all(1) & np.isfinite(low) & (high > low))
    if not len(grouped):
        return distributions
    centres = age_bin_centres(bins).numpy().astype(np.float64)
    half = (centres[1] - centres[0]) / 2
    overlap = (np.minimum(centres + half, high[grouped, None]) - np.maximum(centres - half, low[grouped, None]))
    share = np.clip(overlap / (2 * half), 0, 1)
    product = distributions[grouped] * share
    mass = product.sum(1, keepdims=True)
    group = interval_label_distribution(torch.from_numpy(data.age_ranges[grouped]), bins, sigma).numpy()
    restricted = np.where(mass > 1e-6, product / np.maximum(mass, 1e-12), group)
    out = np.array(distributions, np.float32, copy=True)
    out[grouped] = restricted
    return out


def apply_age_calibrations(teacher_ages: np.ndarray, data: PreprocessedSet, maps: dict) -> np.ndarray:
    sources = data_sources(data)
    calibrated = np.array(teacher_ages, np.float32, copy=True)
    for name, calibration in maps.items():
        chosen = sources == name
        calibrated[chosen] = calibration(teacher_ages[chosen])
    return calibrated


def load_teachers(teacher: str, device: torch.device) -> list[AgeGenderModel]:
    """The weight-file teachers named in TrainConfig.teacher, in eval mode, frozen."""
    teachers = []
    for path in teacher_paths(teacher):
        teacher = load_model(path)[0].to(device).eval()
        teacher.requires_grad_(False)
        teachers.append(teacher)
    return teachers


def teacher_age_distribution(teacher: AgeGenderModel, outputs: dict[str, torch.Tensor],
                             bins: int) -> torch.Tensor | None:
    """A weight-file teacher's age distribution over a student's `bins` age bins: the mean of its heads' bin
    probabilities, weighted as its predicted age weighs them (so the distribution's expectation is that age),
    shared out onto the student's bins where the two networks' bins differ. None for a teacher without
    label-distribution heads."""
    heads = [(i, head) for i, head in enumerate(teacher.heads) if f"{head}_age_logits" in outputs]
    if not heads:
        return None
    weights = teacher.ensemble_age_weights[[i for i, _ in heads]].float()
    probs = sum(w * torch.softmax(outputs[f"{head}_age_logits"].float(), 1) for w, (_, head) in zip(weights, heads))
    probs = probs / weights.sum()
    if probs.shape[1] != bins:
        from .teachers import rebin_age_distribution

        rebinning = rebin_age_distribution(np.eye(probs.shape[1]), age_bin_centres(probs.shape[1]).numpy(),
                                           age_bin_centres(bins).numpy())  # teacher bin -> student bins
        probs = probs @ torch.from_numpy(rebinning).to(probs.device)
    return probs


@torch.no_grad()
def online_teacher_targets(teachers: list[AgeGenderModel], x: torch.Tensor,
                           bins: int = 0) -> tuple[torch.Tensor, ...]:
    """The weight-file teachers' mean (age, P(male)) for a batch of network inputs, and with bins (a student with
    label-distribution heads) their mean age distribution over those bins, when every teacher has one."""
    ages, probs, distributions = [], [], []
    for teacher in teachers:
        outputs = teacher(x)
        age, p_male, _ = ensemble(outputs, teacher.heads, teacher.ensemble_age_weights,
                                  teacher.ensemble_gender_weights)
        ages.append(age.float()), probs.append(p_male.float())
        distributions.append(teacher_age_distribution(teacher, outputs, bins) if bins else None)
    mean = (torch.stack(ages).mean(0), torch.stack(probs).mean(0))
    if not bins or any(d is None for d in distributions):
        return mean
    return (*mean, torch.stack(distributions).mean(0))


def batch_teacher_targets(teachers: list[AgeGenderModel], x: torch.Tensor,
                          cached: tuple[torch.Tensor, ...] | None, index: torch.Tensor, bins: int = 0) -> tuple | None:
    """The batch's teacher (age, P(male)[, age distribution]): the cached registered teachers' answers for these
    faces and/or the weight-file teachers run on the augmented batch (the view the student sees), averaged per
    teacher. With bins, the age distribution over them where every teacher gives one (registered teachers:
    CachedTeacherAnswers.distributions; weight files: their label-distribution heads); None without teachers."""
    answers, counts = [], []
    if cached is not None:
        answers.append(tuple(t[index] for t in cached))
        counts.append(1.0)
    if teachers:
        answers.append(online_teacher_targets(teachers, x, bins))
        counts.append(float(len(teachers)))
    if not answers:
        return None
    share = [c / sum(counts) for c in counts]
    parts = 3 if bins and all(len(a) > 2 for a in answers) else 2
    return tuple(sum(w * a[k] for w, a in zip(share, answers)) for k in range(parts))


def label_distribution(ages: torch.Tensor, bins: int, sigma: float = 0.0) -> torch.Tensor:
    """A Gaussian around each true age over the model's age bins (DLDL): neighbouring ages share evidence, which
    suits noisy, apparent-age labels. sigma 0: the bin spacing."""
    centres = age_bin_centres(bins, ages.device)
    sigma = sigma or float(centres[1] - centres[0])
    return torch.softmax(-(centres[None, :] - ages[:, None]) ** 2 / (2 * sigma ** 2), 1)


# An open-ended age group ("70+") spreads its mass over this many years above its low end.
OPEN_GROUP_YEARS = 20.0
INTERVAL_SAMPLES = 16  # ages averaged over a group's span for its label distribution


def interval_label_distribution(age_ranges: torch.Tensor, bins: int, sigma: float = 0.0) -> torch.Tensor:
    """The label distribution of an age group [low, high): the Gaussian label distributions of ages spread evenly
    over it, averaged (a flat stretch over the group's bins with soft edges); an open-ended group spans
    OPEN_GROUP_YEARS."""
    low = age_ranges[:, 0]
    high = torch.where(torch.isinf(age_ranges[:, 1]), low + OPEN_GROUP_YEARS, age_ranges[:, 1])
    steps = (torch.arange(INTERVAL_SAMPLES, device=age_ranges.device, dtype=low.dtype) + 0.5) / INTERVAL_SAMPLES
    ages = low[:, None] + steps[None, :] * (high - low)[:, None]  # faces x samples
    return label_distribution(ages.reshape(-1), bins, sigma).reshape(len(low), INTERVAL_SAMPLES, bins).mean(1)


def distribution_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL divergence from the target age distribution to the predicted one, averaged over faces."""
    return F.kl_div(torch.log_softmax(logits, 1), target, reduction="batchmean")


def age_distribution_targets(outputs: dict[str, torch.Tensor], ages: torch.Tensor, config: TrainConfig,
                             teacher: tuple | None, a: float,
                             age_ranges: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(which faces, their target age distribution) for label-distribution heads: the Gaussian label distribution
    where a face has an age (an age group's: interval_label_distribution), the teachers' distribution where it has
    one, (1 - a) x label + a x teacher where it has both. Mixing the targets of a KL loss is the same as mixing the
    two losses (it is linear in its target)."""
    logits = next((v for k, v in outputs.items() if k.endswith("_age_logits")), None)
    has_age = torch.isfinite(ages)
    if logits is None:
        return torch.zeros_like(has_age), None
    labelled = label_distribution(torch.nan_to_num(ages), logits.shape[1], config.age_sigma)
    if age_ranges is not None:
        grouped = has_age & (age_ranges[:, 1] > age_ranges[:, 0])
        if grouped.any():
            labelled = labelled.clone()
            labelled[grouped] = interval_label_distribution(age_ranges[grouped], logits.shape[1], config.age_sigma)
    teacher_distribution = teacher[2] if teacher is not None and len(teacher) > 2 else None
    if teacher_distribution is None:
        return has_age, labelled[has_age]
    has_teacher = torch.isfinite(teacher_distribution).all(1)
    taught = torch.nan_to_num(teacher_distribution)
    both = (has_age & has_teacher)[:, None]
    target = torch.where(both, (1 - a) * labelled + a * taught, torch.where(has_age[:, None], labelled, taught))
    covered = has_age | has_teacher
    return covered, target[covered]


# --------------------------------------------------------------------------------------------------------------
# evaluation


@contextlib.contextmanager
def full_float32():
    """No TF32 inside: on Ampere and later GPUs, cuDNN and cuBLAS otherwise round convolution and matmul inputs to
    10-bit mantissas (ages move by up to ~0.04 years), and scores recorded in training would differ from what
    `agegender evaluate` or the runtime's CPU backends give for the same weights. Training steps keep TF32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@torch.no_grad()
@full_float32()
def predict_crops(model: AgeGenderModel, crops: np.ndarray, device: torch.device, batch_size: int = 512,
                  flip: bool = False):
    """Ensembled (age, P(male), age spread) for stored crops, without augmentation; flip: also the mirrored
    crops, averaged (test-time augmentation)."""
    model.eval()
    ages, probs, spreads = [], [], []
    for start in range(0, len(crops), batch_size):
        batch = torch.from_numpy(crops[start:start + batch_size]).to(device)
        x = augment_batch(batch, None, enabled=False)
        age, p_male, spread = model.predict(x)
        if flip:
            mirrored = model.predict(x.flip(3))
            age, p_male, spread = (age + mirrored[0]) / 2, (p_male + mirrored[1]) / 2, (spread + mirrored[2]) / 2
        ages.append(age.float().cpu()), probs.append(p_male.float().cpu()), spreads.append(spread.float().cpu())
    if not ages:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    return torch.cat(ages).numpy(), torch.cat(probs).numpy(), torch.cat(spreads).numpy()


def evaluate(model: AgeGenderModel, data: PreprocessedSet, device: torch.device,
             flip: bool = False) -> tuple[dict, dict]:
    """(metrics, predictions) of the model on a preprocessed set (flip: with flip test-time averaging)."""
    age, p_male, spread = predict_crops(model, data.crops, device, flip=flip)
    metrics = age_gender_metrics(data.ages, age, data.genders, p_male)
    metrics["detected"] = int(data.detected.sum())
    if data.has_intervals:  # age groups: the MAE above is to the groups' middles, these are what counts
        metrics.update(interval_metrics(data.age_ranges, age))
        metrics["groups"] = group_report(data.races, data.age_ranges, age, data.genders, p_male, data.detected)
    return metrics, {"age_true": data.ages, "age_pred": age, "gender_true": data.genders, "p_male": p_male,
                     "age_std": spread, "paths": data.paths}


# --------------------------------------------------------------------------------------------------------------
# distributed helpers


def distributed_setup() -> tuple[int, int]:
    """(rank, world size); initialises torch.distributed when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return int(os.environ.get("RANK", "0")), world


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic: write a temporary file, then rename over the old checkpoint (a kill -9 leaves one valid file)."""
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


# What a resumed run must share with the run that wrote the checkpoint: everything in TrainConfig but where and
# how fast it runs.
NOT_RECIPE = ("threads", "device", "amp")


def recipe(config: TrainConfig | dict) -> dict:
    fields = config if isinstance(config, dict) else asdict(config)
    return {k: v for k, v in fields.items() if k not in NOT_RECIPE}


def data_fingerprint(data: PreprocessedSet) -> dict:
    """Which faces, with which labels: a resumed run must train on the same ones."""
    digest = hashlib.sha256()
    for path in data.paths:
        digest.update(str(path).encode() + b"\0")
    digest.update(np.ascontiguousarray(data.ages, np.float32).tobytes())
    digest.update(np.ascontiguousarray(data.genders, np.int8).tobytes())
    return {"faces": len(data), "sha256": digest.hexdigest()[:16]}


def recipe_differences(saved: dict, current: dict) -> list[str]:
    return [f"{key}: {saved.get(key, '(unset)')!r} in the checkpoint, {current.get(key, '(unset)')!r} now"
            for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]


def load_checkpoint(path: Path, config: TrainConfig, data: PreprocessedSet, device: torch.device) -> dict:
    """The checkpoint's state, once it is readable and was written by this recipe on these faces."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
        # An option added since the checkpoint was written had its default value then (crop scale: 3.2).
        saved_recipe = {**recipe(TrainConfig()), "crop_scale": LEGACY_CROP_SCALE, **recipe(state["config"])}
    except Exception as error:  # torch.load raises whatever the damaged file's unpickling hits
        raise ValueError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error}); delete it to "
                         "start this run over") from error
    differences = recipe_differences(saved_recipe, recipe(config))
    if "data" in state and state["data"] != data_fingerprint(data):
        differences.append(f"training faces: {state['data']} in the checkpoint, {data_fingerprint(data)} now (a "
                           "fold's faces follow the datasets, --protocol, --fold and --split-seed; runs made before "
                           "--split-seed existed drew their split with --seed)")
    if differences:
        raise ValueError(f"--resume {path}: this run's recipe differs from the checkpoint's, so resuming would mix "
                         f"two recipes ({'; '.join(differences)}); use another --out or delete the checkpoint")
    return state


def optimizer_step(optimizer: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler) -> bool:
    """One optimiser step through the (mixed-precision) gradient scaler; False when the scaler skipped it.

    A float16 scaler skips the step whose gradients overflowed (always the first few: its scale starts high). The
    learning-rate schedule then stays where it is, so it advances with the weights (and torch does not warn that
    the scheduler stepped before the optimiser).
    """
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    stepped = scaler.get_scale() >= scale  # the scale drops exactly when the step was skipped
    if stepped:
        scheduler.step()
    return stepped


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------------------------
# the training loop


def train(config: TrainConfig, train_set: PreprocessedSet, val_set: PreprocessedSet, run_dir: str | os.PathLike,
          resume: bool = False, card: dict | None = None, progress: bool = True) -> dict:
    """Train, checkpointing every epoch; write `model.pt` + card, `metrics.json`, `predictions.npz` in run_dir."""
    run_dir = Path(run_dir)
    rank, world = distributed_setup()
    device = pick_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    checkpoint_path = run_dir / "checkpoint.pt"
    state = load_checkpoint(checkpoint_path, config, train_set, device) if resume and checkpoint_path.is_file() \
        else None
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    seed_everything(config.seed)
    model = create_model(config.model, **config.model_args())
    if config.init_weights:
        pretrained, pretrained_card = load_model(config.init_weights)
        if pretrained_card["architecture"] != config.model:
            raise ValueError(f"--init-weights {config.init_weights} is a {pretrained_card['architecture']!r} "
                             f"model, not {config.model!r}")
        if pretrained_card.get("model_args", {}) != config.model_args():
            raise ValueError(f"--init-weights {config.init_weights} was built with "
                             f"{pretrained_card.get('model_args')}, this run with {config.model_args()} "
                             "(e.g. pass the same --age-bins)")
        model.load_state_dict(pretrained.state_dict())
    if config.reparam:
        # From --init-weights the new branches start at zero, so training starts from the weights' own function.
        expand(model, new_branches_start_at_zero=bool(config.init_weights))
    model = model.to(device).to(memory_format=torch.channels_last)
    if len(train_set) == 0:
        raise ValueError("the training set is empty")
    steps_per_epoch = max(1, len(train_set) // (config.batch_size * world))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch,
        pct_start=config.warmup_fraction, div_factor=20, final_div_factor=200)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history: list[dict] = []
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, start_epoch = state["history"], state["epoch"] + 1
        if rank == 0:
            log.info("resumed %s at epoch %d", checkpoint_path, start_epoch)
    elif resume:
        log.warning("--resume: no checkpoint at %s, starting at epoch 0 (%s)", checkpoint_path,
                    f"from {config.init_weights}" if config.init_weights else "random initialisation")

    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    crops = torch.from_numpy(train_set.crops).to(device)
    ages = torch.from_numpy(train_set.ages).to(device)
    genders = torch.from_numpy(train_set.genders.astype(np.int64)).to(device)
    # Only sets with age-group labels take the interval loss (for year labels it is the same L1).
    age_ranges = torch.from_numpy(train_set.age_ranges).to(device) if train_set.has_intervals else None
    teachers = load_teachers(config.teacher, device) if config.teacher else []
    # Age bins whose teacher distribution the student learns (0: only the teachers' ages; the paper net's option,
    # the baselines have none).
    distill_bins = getattr(model, "age_bins", 0) if config.distill_age_distribution else 0
    answers = cached_teacher_answers(config.teacher, train_set, config.teacher_precision, config.threads,
                                     progress and rank == 0, skip=config.teacher_skip)
    cached, calibrations = None, None
    if answers is not None:
        cached = answers.targets()
        if config.teacher_calibration:
            calibrations = teacher_age_calibrations(cached[0], train_set, config.teacher_calibration,
                                                    config.teacher_calibration_reference)
            cached = (apply_age_calibrations(cached[0], train_set, calibrations), cached[1])
            if rank == 0:
                (run_dir / "teacher_calibration.json").write_text(json.dumps(
                    {name: c.to_json() for name, c in calibrations.items()}, indent=1) + "\n")
        if train_set.has_intervals:
            cached = (clip_into_age_groups(cached[0], train_set), cached[1])
        if distill_bins:
            distributions = answers.distributions(data_sources(train_set), distill_bins, calibrations)
            if train_set.has_intervals:
                distributions = restrict_to_age_groups(distributions, train_set, distill_bins, config.age_sigma)
            cached = (*cached, distributions)
    if cached is not None:
        cached = tuple(torch.from_numpy(t).to(device) for t in cached)
    # Faces without an age label (CelebA) are binned by the teachers' age when balancing ages.
    known_ages = train_set.ages if cached is None else np.where(np.isfinite(train_set.ages), train_set.ages,
                                                                cached[0].cpu().numpy())
    sampling_weights = age_sampling_weights(known_ages, config.age_balance) if config.age_balance else None
    writer = None
    if rank == 0:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            log.warning("tensorboard not installed: no TensorBoard logs")

    for epoch in range(start_epoch, config.epochs):
        # Everything random in this epoch derives from (seed, epoch): resuming replays it exactly.
        epoch_seed = config.seed * 100_003 + epoch
        torch.manual_seed(epoch_seed)
        generator = torch.Generator().manual_seed(epoch_seed)
        if sampling_weights is None:
            permutation = torch.randperm(len(train_set), generator=generator)
        else:  # an epoch of as many draws as faces, rare ages drawn more often
            permutation = torch.multinomial(sampling_weights, len(train_set), replacement=True, generator=generator)
        permutation = permutation[: steps_per_epoch * config.batch_size * world][rank::world].to(device)
        train_model.train()
        started, seen, loss_sum = time.time(), 0, 0.0
        steps = range(steps_per_epoch)
        if progress and rank == 0:
            from tqdm import tqdm

            steps = tqdm(steps, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", leave=False)
        for step in steps:
            index = permutation[step * config.batch_size:(step + 1) * config.batch_size]
            x = augment_batch(crops[index], generator, config.augment, config.grayscale_p, config.camera_augment,
                              config.tight_crop_p)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                outputs = train_model(x)
            loss, parts = multitask_loss({k: v.float() for k, v in outputs.items()}, ages[index], genders[index],
                                         config, batch_teacher_targets(teachers, x, cached, index, distill_bins),
                                         None if age_ranges is None else age_ranges[index])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            optimizer_step(optimizer, scheduler, scaler)
            seen += len(index)
            loss_sum += float(loss.detach()) * len(index)
            if writer and step % 20 == 0:
                global_step = epoch * steps_per_epoch + step
                writer.add_scalar("train/loss", float(loss.detach()), global_step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], global_step)
                for name, value in parts.items():
                    writer.add_scalar(f"train/{name}", value, global_step)
        elapsed = time.time() - started
        if rank != 0:
            continue
        metrics, _ = evaluate(model, val_set, device) if len(val_set) else ({}, None)
        entry = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "images_per_s": seen * world / elapsed,
                 **{k: v for k, v in metrics.items() if k not in ("mae_by_decade", "groups")}}
        history.append(entry)
        if writer:
            for key in ("mae", "gender_acc", "ca3", "ca5"):
                if entry.get(key) is not None:
                    writer.add_scalar(f"val/{key}", entry[key], epoch + 1)
            writer.add_scalar("train/images_per_s", entry["images_per_s"], epoch + 1)
        log.info("epoch %d: %s", epoch + 1, json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                                        for k, v in entry.items()}))
        save_checkpoint(checkpoint_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                          "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                          "epoch": epoch, "history": history, "config": asdict(config),
                                          "data": data_fingerprint(train_set)})
    if writer:
        writer.close()
    if rank != 0:
        return {}
    if config.reparam:  # from here on: the network that ships (its scores, predictions and weights)
        fuse(model.eval())
    metrics, predictions = evaluate(model, val_set, device) if len(val_set) else ({}, None)
    if predictions is not None:
        np.savez(run_dir / "predictions.npz", **predictions)
    result = {"config": asdict(config), "metrics": metrics, "history": history,
              "train_images": len(train_set), "val_images": len(val_set)}
    if len(val_set):
        result["metrics_flip_tta"] = {k: v for k, v in evaluate(model, val_set, device, flip=True)[0].items()
                                      if k != "mae_by_decade"}
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    model_card = {"architecture": config.model, "model_args": config.model_args(),
                  "metrics": {k: v for k, v in metrics.items() if k != "mae_by_decade"}, **(card or {})}
    save_weights(model.cpu().eval(), run_dir / "model.pt", model_card, crop_scale=config.crop_scale)
    return result
