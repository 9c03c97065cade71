"""The trainer: the paper's 6-term loss, AdamW + one-cycle schedule, on-device augmentation, exact resume, DDP.

Data live in memory as uint8 80x80 crops (see cache.py) on the training device; each step samples a batch,
augments it on the device (flip, shift/scale/rotation in one affine resample to 64x64, colour jitter, some
greyscale) and normalises it with the runtime's own constants. Every epoch's shuffle, augmentation and dropout are
seeded by (seed, epoch), so a run resumed from its last checkpoint replays exactly what an uninterrupted run does.

Multi-GPU / multi-machine: start with `torchrun --nproc-per-node N -m training.cli train ...`; each rank takes
its share of every epoch's permutation and DistributedDataParallel averages gradients. Only rank 0 writes.
"""
from __future__ import annotations

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

from agegender_ros.model import HEADS, AgeGenderModel, create_model, normalise_crops_tensor
from agegender_ros.weights import load_model, save_weights

from .cache import CONTEXT, PreprocessedSet
from .metrics import age_gender_metrics

log = logging.getLogger(__name__)

# The paper: small weights for the two virtual outputs, larger for the low-level pair, largest for the final pair.
DEFAULT_LOSS_WEIGHTS = {"final": 1.0, "low": 0.5, "virtual": 0.25}


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
    threads: int = 0  # CPU threads (0: torch default)
    device: str = "auto"
    amp: bool = True  # on CUDA only
    init_weights: str = ""  # start from these weights (e.g. FG-NET LOPO: pretrain elsewhere, fine-tune per fold)


# --------------------------------------------------------------------------------------------------------------
# augmentation (on the device, batched)


def augment_batch(crops: torch.Tensor, generator: torch.Generator | None, enabled: bool,
                  grayscale_p: float = 0.1) -> torch.Tensor:
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
    return x.contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------------------------------------------
# loss


def multitask_loss(outputs: dict[str, torch.Tensor], ages: torch.Tensor, genders: torch.Tensor,
                   config: TrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum over heads of age L1 (MAE) and gender BCE; faces with unknown gender (-1) skip the BCE."""
    known = genders >= 0
    total = torch.zeros((), device=ages.device)
    parts = {}
    for head in HEADS:
        weight = float(config.loss_weights.get(head, 0.0))
        if f"{head}_age" in outputs:
            loss = F.l1_loss(outputs[f"{head}_age"], ages) * config.age_loss_scale
            total = total + weight * loss
            parts[f"{head}_age"] = float(loss.detach())
        if f"{head}_gender" in outputs and known.any():
            loss = F.binary_cross_entropy_with_logits(outputs[f"{head}_gender"][known], genders[known].float())
            total = total + weight * loss
            parts[f"{head}_gender"] = float(loss.detach())
    return total, parts


# --------------------------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def predict_crops(model: AgeGenderModel, crops: np.ndarray, device: torch.device, batch_size: int = 512):
    """Ensembled (age, P(male), age spread) for stored crops, without augmentation."""
    model.eval()
    ages, probs, spreads = [], [], []
    for start in range(0, len(crops), batch_size):
        batch = torch.from_numpy(crops[start:start + batch_size]).to(device)
        age, p_male, spread = model.predict(augment_batch(batch, None, enabled=False))
        ages.append(age.float().cpu()), probs.append(p_male.float().cpu()), spreads.append(spread.float().cpu())
    if not ages:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    return torch.cat(ages).numpy(), torch.cat(probs).numpy(), torch.cat(spreads).numpy()


def evaluate(model: AgeGenderModel, data: PreprocessedSet, device: torch.device) -> tuple[dict, dict]:
    """(metrics, predictions) of the model on a preprocessed set."""
    age, p_male, spread = predict_crops(model, data.crops, device)
    metrics = age_gender_metrics(data.ages, age, data.genders, p_male)
    metrics["detected"] = int(data.detected.sum())
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
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    seed_everything(config.seed)
    model = create_model(config.model)
    if config.init_weights:
        pretrained, card = load_model(config.init_weights)
        if card["architecture"] != config.model:
            raise ValueError(f"--init-weights {config.init_weights} is a {card['architecture']!r} model, "
                             f"not {config.model!r}")
        model.load_state_dict(pretrained.state_dict())
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
    checkpoint_path = run_dir / "checkpoint.pt"
    if resume and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, start_epoch = state["history"], state["epoch"] + 1
        if rank == 0:
            log.info("resumed %s at epoch %d", checkpoint_path, start_epoch)
    elif resume:
        log.warning("--resume: no checkpoint at %s, starting from scratch", checkpoint_path)

    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    crops = torch.from_numpy(train_set.crops).to(device)
    ages = torch.from_numpy(train_set.ages).to(device)
    genders = torch.from_numpy(train_set.genders.astype(np.int64)).to(device)
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
        permutation = torch.randperm(len(train_set), generator=generator)
        permutation = permutation[: steps_per_epoch * config.batch_size * world][rank::world].to(device)
        train_model.train()
        started, seen, loss_sum = time.time(), 0, 0.0
        steps = range(steps_per_epoch)
        if progress and rank == 0:
            from tqdm import tqdm

            steps = tqdm(steps, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", leave=False)
        for step in steps:
            index = permutation[step * config.batch_size:(step + 1) * config.batch_size]
            x = augment_batch(crops[index], generator, config.augment, config.grayscale_p)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                outputs = train_model(x)
            loss, parts = multitask_loss({k: v.float() for k, v in outputs.items()}, ages[index], genders[index],
                                         config)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
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
                 **{k: v for k, v in metrics.items() if k != "mae_by_decade"}}
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
                                          "epoch": epoch, "history": history, "config": asdict(config)})
    if writer:
        writer.close()
    if rank != 0:
        return {}
    metrics, predictions = evaluate(model, val_set, device) if len(val_set) else ({}, None)
    if predictions is not None:
        np.savez(run_dir / "predictions.npz", **predictions)
    result = {"config": asdict(config), "metrics": metrics, "history": history,
              "train_images": len(train_set), "val_images": len(val_set)}
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    model_card = {"architecture": config.model, "model_args": {},
                  "metrics": {k: v for k, v in metrics.items() if k != "mae_by_decade"}, **(card or {})}
    save_weights(model.cpu().eval(), run_dir / "model.pt", model_card)
    return result
