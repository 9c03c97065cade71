"""Teacher targets for knowledge distillation (TrainConfig.teacher): what frozen teachers say about each face.

Registered teachers (training/teachers, e.g. hse-faceres-deep) run once per training face from the photo, and their
answers are cached. Their ages can be mapped onto our labels' scale per dataset (teachers/calibration.py) and are
clipped into a face's labelled age group; their age distributions are shared out onto the student's age bins. Our
own weight files run on each augmented batch, the view the student sees. Faces that only a teacher labels learn
from it alone (CelebA's gender-only faces get the teachers' ages). losses.py mixes these targets with the labels.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from agegender_ros.model import AgeGenderModel, age_bin_centres, ensemble
from agegender_ros.weights import load_model

from .cache import PreprocessedSet
from .losses import interval_label_distribution
from .metrics import age_group_labelled

if TYPE_CHECKING:
    from .train import TrainConfig

log = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------------------------------------------
# registered teachers: run once per face, cached


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


def registered_teacher_targets(config: TrainConfig, data: PreprocessedSet, bins: int = 0, progress: bool = True
                               ) -> tuple[tuple[np.ndarray, ...] | None, dict | None]:
    """The registered teachers' targets for every face of data, ready to train on, and the age calibrations.

    Targets: (age, P(male)) per face, NaN where no teacher answered, and with bins (a student's label-distribution
    heads) a third entry, the teachers' age distribution over those bins. Ages are calibrated first
    (config.teacher_calibration), then clipped into the face's age group where it has one; distributions likewise
    go through the calibration, then are restricted to the group. Calibrations: {dataset: AgeCalibration}, None
    without config.teacher_calibration. (None, None) when config.teacher names no registered teacher."""
    answers = cached_teacher_answers(config.teacher, data, config.teacher_precision, config.threads, progress,
                                     skip=config.teacher_skip)
    if answers is None:
        return None, None
    targets, calibrations = answers.targets(), None
    if config.teacher_calibration:
        calibrations = teacher_age_calibrations(targets[0], data, config.teacher_calibration,
                                                config.teacher_calibration_reference)
        targets = (apply_age_calibrations(targets[0], data, calibrations), targets[1])
    if data.has_intervals:
        targets = (clip_into_age_groups(targets[0], data), targets[1])
    if bins:
        distributions = answers.distributions(data_sources(data), bins, calibrations)
        if data.has_intervals:
            distributions = restrict_to_age_groups(distributions, data, bins, config.age_sigma)
        targets = (*targets, distributions)
    return targets, calibrations


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
    both = np.isfinite(teacher_ages) & np.isfinite(data.ages) & ~age_group_labelled(data.age_ranges)
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
    grouped = np.isfinite(teacher_ages) & age_group_labelled(data.age_ranges)
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
    grouped = np.flatnonzero(np.isfinite(distributions).all(1) & age_group_labelled(data.age_ranges))
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


# --------------------------------------------------------------------------------------------------------------
# weight-file teachers: run on each augmented batch


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
