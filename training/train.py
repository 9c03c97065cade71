"""The trainer: TrainConfig and the training loop (AdamW + one-cycle schedule, mixed precision on CUDA, DDP), with
the evaluation it runs after every epoch.

Data live in memory as uint8 80x80 crops (see cache.py) on the training device. Each step samples a batch, augments
it on the device (augment.py), runs the network and takes the paper's 6-term loss (losses.py), with the teachers'
targets mixed in when distilling (distill.py). Every epoch's shuffle, augmentation and dropout are seeded by (seed,
epoch), so a run resumed from its last checkpoint replays exactly what an uninterrupted run does (checkpoints.py:
what a resume must share with the run that wrote the checkpoint).

Options beyond the paper's recipe, each measured in docs/experiments/: label-distribution age heads (age_bins)
and age-balanced sampling (age_balance) in training-recipe.md, knowledge distillation from frozen teachers
(teacher) in distillation.md, including faces that only a teacher labels (CelebA's gender-only faces get the
teachers' ages; celeba.md), and drawing some datasets more often (dataset_weights) and label distributions whose
mean is the age (match_age_distribution_mean) in fairface.md.

Multi-GPU / multi-machine: start with `torchrun --nproc-per-node N -m training.cli train ...`; each rank takes
its share of every epoch's permutation and DistributedDataParallel averages gradients. Only rank 0 writes.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from agegender_ros import faces
from agegender_ros.model import AgeGenderModel, create_model
from agegender_ros.weights import load_model, save_weights

from .augment import augment_batch
from .cache import PreprocessedSet
from .checkpoints import data_fingerprint, load_checkpoint, save_checkpoint, start_fingerprint
from .distill import batch_teacher_targets, load_teachers, registered_teacher_targets
from .losses import DEFAULT_LOSS_WEIGHTS, multitask_loss
from .metrics import age_gender_metrics, group_report, interval_metrics
from .reparam import expand, fuse

log = logging.getLogger(__name__)


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
    # Also mimic other cameras (low resolution, blur, sensor noise, JPEG): 0 = off, 1 = each degradation on its full
    # share of the faces (augment.camera_degrade), between = on that fraction of it.
    camera_augment: float = 0.0
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
    # Centre each Gaussian label distribution so that its mean over the bins is the age (training/losses.py
    # label_distribution): without it, babies' and children's targets sit years above their ages.
    match_age_distribution_mean: bool = False
    # Sample each face with probability proportional to (faces in its 5-year age bin)^-age_balance: 0 = every face
    # once per epoch (the paper), 1 = every age bin equally often. Counters the pull towards the training sets'
    # mean age that shows as overestimated children and underestimated elderly on faces from elsewhere.
    age_balance: float = 0.0
    # Draw each face of these datasets W times as often as the others ({"fairface": 2.0}; with age_balance, the two
    # multiply). An epoch stays as many draws as faces. Spends the net's capacity on the faces users' cameras see.
    dataset_weights: dict = field(default_factory=dict)
    # Age-group labels (FairFace's "20-29"): "interval" learns them as intervals (training/losses.py), "midpoint" as
    # the group's middle age, as if it were a year's label (the ablation in docs/experiments/fairface.md).
    age_groups: str = "interval"
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
    # ~0.3 years from float32 on average, far below the teachers' own error (docs/experiments/teachers.md).
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
    # Score the held-out faces after every Nth epoch (the history's and TensorBoard's val curves); 0: only once,
    # after the last. Scoring never touches the weights or the random streams, so the weights are the same for
    # every N; on CPU, N = 0 saves ~10% of a run's time (~6 s an epoch on 14k held-out faces).
    eval_every: int = 1
    device: str = "auto"
    amp: bool = True  # on CUDA only
    init_weights: str = ""  # start from these weights (e.g. FG-NET LOPO: pretrain elsewhere, fine-tune per fold)
    # Each head's weight in the prediction (`predict`: the weighted mean of the heads' ages, and of their P(male));
    # heads not named keep those of --init-weights, else 1. Training never sees them (every head has its own loss),
    # only the scores and the shipped answer do. The paper weights its virtual outputs least in the loss and does
    # not say how it ensembles; docs/experiments/ensemble.md chooses them on the training faces.
    ensemble_age_weights: dict = field(default_factory=dict)
    ensemble_gender_weights: dict = field(default_factory=dict)

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
# the training loop


def train(config: TrainConfig, train_set: PreprocessedSet, val_set: PreprocessedSet, run_dir: str | os.PathLike,
          resume: bool = False, card: dict | None = None, progress: bool = True) -> dict:
    """Train, checkpointing every epoch; write `model.pt` + card, `metrics.json`, `predictions.npz` in run_dir."""
    run_dir = Path(run_dir)
    rank, world = distributed_setup()
    device = pick_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    if device.type == "cpu":
        keep_freed_memory()
    checkpoint_path = run_dir / "checkpoint.pt"
    state = load_checkpoint(checkpoint_path, config, train_set, device) if resume and checkpoint_path.is_file() \
        else None
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    seed_everything(config.seed)
    model = build_model(config).to(device).to(memory_format=torch.channels_last)
    if len(train_set) == 0:
        raise ValueError("the training set is empty")
    steps_per_epoch = max(1, len(train_set) // (config.batch_size * world))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = one_cycle(optimizer, config.lr, config.epochs * steps_per_epoch, config.warmup_fraction)
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
    if config.age_groups == "midpoint":
        train_set = dataclasses.replace(train_set, age_ranges=np.repeat(train_set.ages[:, None], 2, 1))
    elif config.age_groups != "interval":
        raise ValueError(f"age_groups {config.age_groups!r}: expected interval or midpoint")
    crops = torch.from_numpy(train_set.crops).to(device)
    ages = torch.from_numpy(train_set.ages).to(device)
    genders = torch.from_numpy(train_set.genders.astype(np.int64)).to(device)
    # Only sets with age-group labels take the interval loss (for year labels it is the same L1).
    age_ranges = torch.from_numpy(train_set.age_ranges).to(device) if train_set.has_intervals else None
    teachers = load_teachers(config.teacher, device) if config.teacher else []
    # Age bins whose teacher distribution the student learns (0: only the teachers' ages; the paper net's option,
    # the baselines have none).
    distill_bins = getattr(model, "age_bins", 0) if config.distill_age_distribution else 0
    cached, calibrations = registered_teacher_targets(config, train_set, distill_bins, progress and rank == 0)
    if calibrations is not None and rank == 0:
        (run_dir / "teacher_calibration.json").write_text(json.dumps(
            {name: c.to_json() for name, c in calibrations.items()}, indent=1) + "\n")
    if cached is not None:
        cached = tuple(torch.from_numpy(t).to(device) for t in cached)
    # Faces without an age label (CelebA) are binned by the teachers' age when balancing ages.
    known_ages = train_set.ages if cached is None else np.where(np.isfinite(train_set.ages), train_set.ages,
                                                                cached[0].cpu().numpy())
    sampling_weights = sampling_weights_for(train_set, known_ages, config)
    writer = tensorboard_writer(run_dir) if rank == 0 else None
    # What a resume must match; load_checkpoint already checked (and so computed) a resumed run's start.
    faces = data_fingerprint(train_set)
    start = state["start"] if state is not None and "start" in state else start_fingerprint(config)

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
        scored = len(val_set) and config.eval_every and (epoch + 1) % config.eval_every == 0
        metrics, _ = evaluate(model, val_set, device) if scored else ({}, None)
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
                                          "data": faces, "start": start})
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
                  "ensemble_weights": model.ensemble_weights(),
                  "metrics": {k: v for k, v in metrics.items() if k != "mae_by_decade"}, **(card or {})}
    save_weights(model.cpu().eval(), run_dir / "model.pt", model_card, crop_scale=config.crop_scale)
    return result


# --------------------------------------------------------------------------------------------------------------
# the loop's helpers


def build_model(config: TrainConfig) -> AgeGenderModel:
    """The network to train: newly initialised (from the global seed), or from config.init_weights, which must be
    the same architecture with the same constructor arguments; with config.reparam, in its branched training form."""
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
    model.set_ensemble_weights(config.ensemble_age_weights, config.ensemble_gender_weights)
    if config.reparam:
        # From --init-weights the new branches start at zero, so training starts from the weights' own function.
        expand(model, new_branches_start_at_zero=bool(config.init_weights))
    return model


def tensorboard_writer(run_dir: Path):
    """A TensorBoard SummaryWriter into run_dir/tensorboard; None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(run_dir / "tensorboard"))
    except ImportError:
        log.warning("tensorboard not installed: no TensorBoard logs")
        return None


def age_sampling_weights(ages: np.ndarray, power: float, bin_years: float = 5.0) -> torch.Tensor:
    """Per-face sampling weight (faces in its bin_years age bin)^-power, normalised to a mean of 1."""
    bins = np.floor(np.asarray(ages, np.float64) / bin_years).astype(np.int64)
    _, inverse, counts = np.unique(bins, return_inverse=True, return_counts=True)
    weights = counts[inverse].astype(np.float64) ** -float(power)
    return torch.from_numpy(weights / weights.mean())


def dataset_sampling_weights(sources: np.ndarray | None, weights: dict) -> torch.Tensor:
    """Per-face sampling weight: weights[its dataset] (1 for datasets not named), normalised to a mean of 1."""
    if sources is None:
        raise ValueError("dataset_weights: this training set does not say which dataset each face came from")
    present = np.unique(sources).tolist()
    unknown = sorted(set(weights) - set(present))
    if unknown:
        raise ValueError(f"dataset_weights: {', '.join(unknown)} not among the training datasets "
                         f"({', '.join(present)})")
    per_face = np.array([float(weights.get(source, 1.0)) for source in sources], np.float64)
    return torch.from_numpy(per_face / per_face.mean())


def sampling_weights_for(train_set: PreprocessedSet, known_ages: np.ndarray, config: TrainConfig
                         ) -> torch.Tensor | None:
    """Each face's chance of being drawn (age balance x dataset weight); None: every face once per epoch."""
    weights = None
    if config.age_balance:
        weights = age_sampling_weights(known_ages, config.age_balance)
    if config.dataset_weights:
        by_dataset = dataset_sampling_weights(train_set.sources, config.dataset_weights)
        weights = by_dataset if weights is None else weights * by_dataset
    return weights


def one_cycle(optimizer: torch.optim.Optimizer, lr: float, total_steps: int,
              warmup_fraction: float) -> torch.optim.lr_scheduler.OneCycleLR:
    """Warm-up to lr over warmup_fraction of the steps, then cosine annealing to lr / 4000."""
    # OneCycleLR divides by (warm-up steps - 1): a warm-up of exactly one step (10 steps at 0.1, a tiny run) would
    # raise ZeroDivisionError, so that one case warms up over 1.5 steps.
    if abs(warmup_fraction * total_steps - 1) < 1e-6:
        warmup_fraction = 1.5 / total_steps
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps,
                                               pct_start=warmup_fraction, div_factor=20, final_div_factor=200)


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


def distributed_setup() -> tuple[int, int]:
    """(rank, world size); initialises torch.distributed when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return int(os.environ.get("RANK", "0")), world


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed blocks of up to 32 MB for reuse (False where that is not glibc). By default it
    hands each activation tensor of a few MB back to the kernel when freed and page-faults a fresh one in at the
    next step: a fifth of a CPU training run's processor time went to the kernel. With this, CPU steps run ~10%
    faster with the same numbers bit for bit (docs/results.md, "Training on the 2-core CPU")."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries: keep their defaults
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    # Blocks under the mmap threshold come from the heap; the heap is trimmed only above the trim threshold.
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


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
                  flip: bool = False, transform=None):
    """Ensembled (age, P(male), age spread) for stored crops, without augmentation; flip: also the mirrored
    crops, averaged (test-time augmentation); transform: applied to each normalised input batch first (e.g. a
    seeded camera degradation, docs/camera_degraded.py)."""
    model.eval()
    ages, probs, spreads = [], [], []
    for start in range(0, len(crops), batch_size):
        batch = torch.from_numpy(crops[start:start + batch_size]).to(device)
        x = augment_batch(batch, None, enabled=False)
        if transform is not None:
            x = transform(x)
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
