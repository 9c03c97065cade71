"""The training losses: the paper's six terms (age L1 and gender BCE of each of the three head pairs, weighted per
head), label distributions over age bins, age-group labels as intervals, and the teachers' targets mixed in.

Options beyond the paper's recipe, each measured in docs/experiments/: label-distribution age heads
(TrainConfig.age_bins: a Gaussian label distribution around each age, DLDL, learned with a KL loss next to each
head's L1; training-recipe.md), age-group labels (FairFace's "20-29": the age loss is the years outside the group,
the label distribution spreads over the group's bins; fairface.md) and knowledge distillation (the teachers' age,
P(male) and age distribution as second targets, made by distill.py; distillation.md).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from agegender_ros.model import HEADS, age_bin_centres

from .metrics import age_group_labelled

if TYPE_CHECKING:
    from .train import TrainConfig

# The paper: small weights for the two virtual outputs, larger for the low-level pair, largest for the final pair.
DEFAULT_LOSS_WEIGHTS = {"final": 1.0, "low": 0.5, "virtual": 0.25}
# How a face's age label and its teacher age combine (TrainConfig.distill_age_mix).
AGE_MIXES = ("loss", "target")


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
    to lie inside it already (distill.clip_into_age_groups puts it there).

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
        grouped = has_age & has_teacher_age & age_group_labelled(age_ranges)
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


def label_distribution(ages: torch.Tensor, bins: int, sigma: float = 0.0, match_mean: bool = False) -> torch.Tensor:
    """A Gaussian around each true age over the model's age bins (DLDL): neighbouring ages share evidence, which
    suits noisy, apparent-age labels. sigma 0: the bin spacing.

    Near the first bin the Gaussian is cut off, so its mean over the bins lies above the age (5.4 years for a baby
    of 1.5 with 12 bins over 0-100), and the distribution loss teaches what the age L1 forbids. match_mean moves
    each Gaussian's centre until the distribution's mean over the bins is the age itself (ages inside the bins'
    span; the same Gaussian where the cut-off does not matter)."""
    centres = age_bin_centres(bins, ages.device)
    sigma = sigma or float(centres[1] - centres[0])

    def gaussian(centre: torch.Tensor) -> torch.Tensor:
        return torch.softmax(-(centres[None, :] - centre[:, None]) ** 2 / (2 * sigma ** 2), 1)

    if not match_mean:
        return gaussian(ages)
    # The mean over the bins grows monotonically with the centre: bisect for the centre that gives the age, once
    # per distinct age (a batch holds few: whole years, and an age group's fixed samples).
    target, inverse = torch.unique(ages.clamp(float(centres[0]) + 0.05 * sigma, float(centres[-1]) - 0.05 * sigma),
                                   return_inverse=True)
    low, high = target - 8 * sigma, target + 8 * sigma
    for _ in range(40):
        middle = (low + high) / 2
        too_old = (gaussian(middle) * centres).sum(1) > target
        low, high = torch.where(too_old, low, middle), torch.where(too_old, middle, high)
    return gaussian(((low + high) / 2)[inverse])


# An open-ended age group ("70+") spreads its mass over this many years above its low end.
OPEN_GROUP_YEARS = 20.0
INTERVAL_SAMPLES = 16  # ages averaged over a group's span for its label distribution


def interval_label_distribution(age_ranges: torch.Tensor, bins: int, sigma: float = 0.0,
                                match_mean: bool = False) -> torch.Tensor:
    """The label distribution of an age group [low, high): the Gaussian label distributions of ages spread evenly
    over it, averaged (a flat stretch over the group's bins with soft edges); an open-ended group spans
    OPEN_GROUP_YEARS."""
    low = age_ranges[:, 0]
    high = torch.where(torch.isinf(age_ranges[:, 1]), low + OPEN_GROUP_YEARS, age_ranges[:, 1])
    steps = (torch.arange(INTERVAL_SAMPLES, device=age_ranges.device, dtype=low.dtype) + 0.5) / INTERVAL_SAMPLES
    ages = low[:, None] + steps[None, :] * (high - low)[:, None]  # faces x samples
    return label_distribution(ages.reshape(-1), bins, sigma, match_mean).reshape(len(low), INTERVAL_SAMPLES,
                                                                                 bins).mean(1)


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
    match_mean = config.match_age_distribution_mean
    labelled = label_distribution(torch.nan_to_num(ages), logits.shape[1], config.age_sigma, match_mean)
    if age_ranges is not None:
        grouped = has_age & age_group_labelled(age_ranges)
        if grouped.any():
            labelled = labelled.clone()
            labelled[grouped] = interval_label_distribution(age_ranges[grouped], logits.shape[1], config.age_sigma,
                                                            match_mean)
    teacher_distribution = teacher[2] if teacher is not None and len(teacher) > 2 else None
    if teacher_distribution is None:
        return has_age, labelled[has_age]
    has_teacher = torch.isfinite(teacher_distribution).all(1)
    taught = torch.nan_to_num(teacher_distribution)
    both = (has_age & has_teacher)[:, None]
    target = torch.where(both, (1 - a) * labelled + a * taught, torch.where(has_age[:, None], labelled, taught))
    covered = has_age | has_teacher
    return covered, target[covered]
