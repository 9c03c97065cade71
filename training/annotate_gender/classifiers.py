"""The annotation tool's gender classifiers: names -> networks, a gender-only training loop, prediction.

A classifier is named by one of
- a preset below (timm definitions, narrowed so that the default set trains on a 2-core CPU in about an hour),
- the paper's four: `inception_v3`, `xception` (timm's `legacy_xception`, Chollet's original), `resnet50`,
  `densenet201` (full size, from scratch: no pretrained weights can be downloaded here),
- any other timm model name (`timm:NAME` forces timm),
- one of our registry nets (`paper`, `ssrnet`, `mobilenet_v1`, `densenet`; `ours:NAME` forces the registry),
  whose `final_gender` output is the classifier's logit.

Every classifier sees our 64x64 training/inference crops (training.cache's stored crop, augmented on the device by
training.augment.augment_batch). A network that cannot run at 64 px (timm's inception_v3 needs 75) gets its input
upsampled to the smallest size it accepts; the size is stored with the weights.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.augment import augment_batch
from training.checkpoints import save_checkpoint
from training.train import pick_device, seed_everything

log = logging.getLogger(__name__)

CROP_SIZE = 64  # what augment_batch produces (the paper's input size)
PROBE_SIZES = (64, 75, 96, 128, 160, 224)


def _xception41_width(divisor: int) -> list[dict]:
    """timm's xception41 block configuration with every block width divided (the 32/64-channel stem is fixed)."""
    def c(width: int) -> int:
        return max(8, width // divisor)

    return [
        dict(in_chs=64, out_chs=c(128), stride=2),
        dict(in_chs=c(128), out_chs=c(256), stride=2),
        dict(in_chs=c(256), out_chs=c(728), stride=2),
        *([dict(in_chs=c(728), out_chs=c(728), stride=1)] * 8),
        dict(in_chs=c(728), out_chs=(c(728), c(1024), c(1024)), stride=2),
        dict(in_chs=c(1024), out_chs=(c(1536), c(1536), c(2048)), stride=1, no_skip=True, start_with_relu=False),
    ]


@dataclass(frozen=True)
class Preset:
    timm_name: str
    kwargs: dict
    about: str


# Narrowed members of the paper's families (timm definitions), sized for a 2-core CPU at 64x64.
PRESETS: dict[str, Preset] = {
    "resnet50_half": Preset("resnet50", dict(channels=(32, 64, 128, 256), stem_width=32, base_width=32,
                                             drop_rate=0.2),
                            "ResNet-50 (50 layers, bottlenecks) with every width halved"),
    "densenet201_k12": Preset("densenet201", dict(growth_rate=12, drop_rate=0.2),
                              "DenseNet-201 (blocks 6/12/48/32) with growth rate 12 instead of 32"),
    "xception41_quarter": Preset("xception41", dict(block_cfg=_xception41_width(4), drop_rate=0.2),
                                 "aligned Xception-41 (timm's configurable Xception) with block widths / 4"),
    "inception_next_atto": Preset("inception_next_atto", dict(drop_rate=0.2),
                                  "InceptionNeXt-atto (timm's smallest Inception-family net; inception_v3 has no "
                                  "width setting and needs >= 75 px)"),
    "resnet50_quarter": Preset("resnet50", dict(channels=(16, 32, 64, 128), stem_width=16, base_width=16),
                               "ResNet-50 with every width / 4 (a tiny, fast member for quick checks)"),
}
PAPER_SET = ("inception_v3", "xception", "resnet50", "densenet201")
PAPER_ALIASES = {"xception": "legacy_xception"}  # the paper's Xception is Chollet's, timm's legacy_xception
DEFAULT_SET = ("resnet50_half", "densenet201_k12", "xception41_quarter", "inception_next_atto")


def _registry_names() -> list[str]:
    from agegender_ros.model import available_models

    return available_models()


def resolve(name: str) -> tuple[str, str, dict]:
    """(kind "timm" | "ours", model name, kwargs) for a classifier name; ValueError naming the options."""
    if name.startswith("ours:"):
        base = name[5:]
        if base not in _registry_names():
            raise ValueError(f"{name}: not one of our models ({', '.join(_registry_names())})")
        return "ours", base, {}
    if name.startswith("timm:"):
        return "timm", name[5:], {}
    if name in PRESETS:
        return "timm", PRESETS[name].timm_name, dict(PRESETS[name].kwargs)
    if name in PAPER_ALIASES:
        return "timm", PAPER_ALIASES[name], {}
    if name in _registry_names():
        return "ours", name, {}
    return "timm", name, {}


class GenderClassifier(nn.Module):
    """Backbone -> one logit of P(male); upsamples the 64x64 crop where the backbone needs more."""

    def __init__(self, name: str, backbone: nn.Module, kind: str, input_size: int = CROP_SIZE):
        super().__init__()
        self.name, self.kind, self.input_size = name, kind, int(input_size)
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        out = self.backbone(x)
        if self.kind == "ours":
            return out["final_gender"]
        return out.reshape(-1)


def _smallest_input(backbone: nn.Module) -> int:
    was_training = backbone.training
    backbone.eval()
    try:
        for size in PROBE_SIZES:
            try:
                with torch.no_grad():
                    backbone(torch.zeros(1, 3, size, size))
                return size
            except RuntimeError:
                continue
    finally:
        backbone.train(was_training)
    raise ValueError(f"the network runs at none of the input sizes {PROBE_SIZES}")


def build(name: str, input_size: int | None = None) -> GenderClassifier:
    """A freshly initialised classifier (no pretrained weights). ValueError for an unknown name."""
    kind, base, kwargs = resolve(name)
    if kind == "ours":
        from agegender_ros.model import create_model

        return GenderClassifier(name, create_model(base), "ours", input_size or CROP_SIZE)
    from .timm_import import import_timm

    timm = import_timm()
    if not timm.is_model(base):
        hint = f"presets: {', '.join(PRESETS)}; paper: {', '.join(PAPER_SET)}; ours: {', '.join(_registry_names())}"
        raise ValueError(f"unknown classifier {name!r}: not a preset, one of our models or a timm model ({hint})")
    backbone = timm.create_model(base, pretrained=False, num_classes=1, **kwargs)
    return GenderClassifier(name, backbone, "timm", input_size or _smallest_input(backbone))


def describe(name: str) -> str:
    kind, base, kwargs = resolve(name)
    if name in PRESETS:
        return f"timm {base}: {PRESETS[name].about}"
    return f"{'our registry' if kind == 'ours' else 'timm'} {base}" + (" (full size)" if name in PAPER_SET else "")


# --------------------------------------------------------------------------------------------------------------
# training


@dataclass
class ClassifierConfig:
    name: str
    epochs: int = 15
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.1
    seed: int = 0
    augment: bool = True
    grayscale_p: float = 0.1
    device: str = "auto"
    threads: int = 0
    # The seed of the 80/20 split of a dataset without an official one (which faces train, which validate).
    split_seed: int = 0

    # What a resumed or skipped run must share with the run that wrote the checkpoint / weights.
    IDENTITY = ("name", "epochs", "batch_size", "lr", "weight_decay", "warmup_fraction", "seed", "augment",
                "grayscale_p", "split_seed")

    def key(self) -> dict:
        return {k: getattr(self, k) for k in self.IDENTITY}

    def asdict(self) -> dict:
        return asdict(self)


def stored_key(state: dict) -> dict:
    """The configuration a checkpoint or weight file was written with. Those written before split_seed was kept
    drew their split with the training seed."""
    key = dict(state.get("key") or {})
    key.setdefault("split_seed", key.get("seed"))
    return key


def classifier_dir(workdir: Path, name: str) -> Path:
    return Path(workdir) / "classifiers" / name.replace(":", "_").replace("/", "_")


def finished(workdir: Path, config: ClassifierConfig) -> bool:
    """The classifier's final weights exist and were trained with this configuration."""
    path = classifier_dir(workdir, config.name) / "model.pt"
    if not path.is_file():
        return False
    state = torch.load(path, map_location="cpu", weights_only=False)
    return stored_key(state) == config.key()


@torch.no_grad()
def predict(model: GenderClassifier, crops: np.ndarray, device: torch.device, batch_size: int = 256,
            progress: str | None = None) -> np.ndarray:
    """P(male) for stored uint8 crops (N x 80 x 80 x 3 BGR), unaugmented (the inference crop)."""
    model.eval()
    starts = range(0, len(crops), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=progress, unit="batch", leave=False)
    out = []
    for start in starts:
        batch = torch.from_numpy(np.ascontiguousarray(crops[start:start + batch_size])).to(device)
        out.append(torch.sigmoid(model(augment_batch(batch, None, enabled=False)).float()).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def train_classifier(config: ClassifierConfig, train_crops: np.ndarray, train_genders: np.ndarray,
                     val_crops: np.ndarray, val_genders: np.ndarray, out_dir: Path, resume: bool = False,
                     progress: bool = True) -> dict:
    """Gender-only training (BCE on one logit), checkpointing every epoch; resumes exactly from the checkpoint.

    Everything random in an epoch (shuffle, augmentation, dropout) derives from (seed, epoch), as in
    training.train, so an interrupted and resumed run ends where an uninterrupted one does.
    Writes model.pt (weights + name + input size + config), metrics.json and val_predictions.npz to out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    known = train_genders >= 0
    train_crops, train_genders = train_crops[known], train_genders[known]
    if len(train_crops) == 0:
        raise ValueError("no training faces with a known gender")
    device = pick_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    model = build(config.name).to(device).to(memory_format=torch.channels_last)
    batch_size = min(config.batch_size, len(train_crops))
    steps_per_epoch = max(1, len(train_crops) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch,
        pct_start=config.warmup_fraction, div_factor=20, final_div_factor=200)
    checkpoint_path = out_dir / "checkpoint.pt"
    history: list[dict] = []
    start_epoch = 0
    if resume and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if stored_key(state) != config.key():
            changed = sorted(k for k in config.key() if stored_key(state).get(k) != config.key()[k])
            raise ValueError(f"{checkpoint_path} was written with other settings ({', '.join(changed)} differ); "
                             "train without --resume to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start_epoch = state["history"], state["epoch"] + 1
        log.info("%s: resumed at epoch %d", config.name, start_epoch + 1)
    (out_dir / "config.json").write_text(json.dumps(config.asdict(), indent=2) + "\n")

    crops = torch.from_numpy(train_crops).to(device)
    labels = torch.from_numpy(train_genders.astype(np.float32)).to(device)
    epochs = range(start_epoch, config.epochs)
    for epoch in epochs:
        epoch_seed = config.seed * 100_003 + epoch
        torch.manual_seed(epoch_seed)
        generator = torch.Generator().manual_seed(epoch_seed)
        permutation = torch.randperm(len(crops), generator=generator)[: steps_per_epoch * batch_size].to(device)
        model.train()
        started, loss_sum, correct = time.time(), 0.0, 0
        steps = range(steps_per_epoch)
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc=f"{config.name} epoch {epoch + 1}/{config.epochs}", unit="step", leave=False)
        for step in steps:
            index = permutation[step * batch_size:(step + 1) * batch_size]
            x = augment_batch(crops[index], generator, config.augment, config.grayscale_p)
            logits = model(x).float()
            loss = F.binary_cross_entropy_with_logits(logits, labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(index)
            correct += int(((logits.detach() >= 0) == (labels[index] >= 0.5)).sum())
        seen = steps_per_epoch * batch_size
        entry = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                 "seconds": time.time() - started}
        history.append(entry)
        log.info("%s epoch %d: %s", config.name, epoch + 1, json.dumps(entry))
        save_checkpoint(checkpoint_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                          "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history,
                                          "key": config.key()})

    p_male = predict(model, val_crops, device, progress=f"{config.name} val" if progress else None)
    known_val = val_genders >= 0
    metrics = {"val_n": int(known_val.sum()),
               "val_acc": float(np.mean((p_male[known_val] >= 0.5) == (val_genders[known_val] == 1)))
               if known_val.any() else None,
               "train_n": int(len(train_crops)), "params": int(sum(p.numel() for p in model.parameters())),
               "input_size": model.input_size, "train_seconds": float(sum(h["seconds"] for h in history))}
    np.savez(out_dir / "val_predictions.npz", p_male=p_male, gender_true=val_genders)
    result = {"name": config.name, "about": describe(config.name), "config": config.asdict(), "metrics": metrics,
              "history": history}
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    save_checkpoint(out_dir / "model.pt", {"name": config.name, "input_size": model.input_size,
                                           "state_dict": model.cpu().state_dict(), "key": config.key(),
                                           "metrics": metrics})
    return result


def load(path: Path) -> GenderClassifier:
    """A trained classifier from its model.pt."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = build(state["name"], input_size=state["input_size"])
    model.load_state_dict(state["state_dict"])
    return model.eval()
