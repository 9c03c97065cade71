"""The paper's multi-task age/gender network (~99.2k parameters, 64x64 RGB input) and the model registry.

Layout, following the paper's text (its figure did not survive, so channel counts and strides are ours, chosen for
the parameter budget and to stay cheap on a Jetson Nano / 2-core CPU):

    input 3x64x64
      ├─ stem_fine     3x3 conv, stride 2 ─┐
      ├─ stem_wide     5x5 conv, stride 2 ─┼─ concat -> stem features 48x32x32   (each conv -> BN -> LeakyReLU)
      └─ stem_dilated  3x3 conv, dilation 2, stride 2 ─┘
           │
           ├─ low_level branch: 6 convs -> pooled -> FC -> (age, gender)             "low-level" pair
           └─ shared conv -> 16x16
                ├─ gender branch (2 convs)  -> pooled -> FC -> gender               "virtual" gender
                ├─ age branch (4 convs)     -> pooled -> FC -> age                  "virtual" age
                └─ top: concat(gender, age features) -> 2 convs -> dropout -> FC -> FC -> (age, gender)  "final" pair

`forward` returns all six raw outputs (the training loss needs each one); `predict` returns the ensemble used at
inference: the weighted mean of the three ages and of the three P(male) (equal weights unless configured), plus
the spread of the three ages as an uncertainty.

Every model in the registry (`create_model`) follows the same contract, so training, export and the backends
never special-case one: `forward(x) -> dict[str, Tensor]` with keys `<head>_age` (years, shape N) and/or
`<head>_gender` (logit of P(male), shape N), and `predict(x) -> (age, p_male, age_std)`.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

INPUT_SIZE = 64
# Inputs are RGB in [0, 1], normalised per channel with these (ImageNet) statistics; recorded in the model card.
MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)
# Age regressors output a raw value r; age = AGE_OFFSET + AGE_SCALE * r keeps r near unit scale for training.
AGE_OFFSET = 35.0
AGE_SCALE = 20.0

HEADS = ("final", "virtual", "low")
# Centres of the first and last age bin (years) when a model predicts age as a distribution over bins.
AGE_BINS_RANGE = (0.0, 100.0)


def age_bin_centres(bins: int, device=None) -> torch.Tensor:
    """The ages (years) the K bins of a label-distribution age output stand for, evenly over AGE_BINS_RANGE."""
    return torch.linspace(AGE_BINS_RANGE[0], AGE_BINS_RANGE[1], bins, device=device)


class ConvBNAct(nn.Sequential):
    """conv -> BatchNorm -> LeakyReLU, the paper's unit."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, dilation: int = 1):
        padding = dilation * (kernel - 1) // 2
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out),
            nn.LeakyReLU(0.1, inplace=True),
        )


def _pool(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class AgeGenderModel(nn.Module):
    """Base class fixing the output contract; subclasses implement `forward`."""

    # Heads this model produces, in the order their members are ensembled by `predict`.
    heads: tuple[str, ...] = ("final",)

    def __init__(self, ensemble_weights: dict[str, float] | None = None):
        super().__init__()
        weights = ensemble_weights or {}
        self.register_buffer(
            "ensemble_age_weights", torch.tensor([float(weights.get(h, 1.0)) for h in self.heads]), persistent=True
        )
        self.register_buffer(
            "ensemble_gender_weights", torch.tensor([float(weights.get(h, 1.0)) for h in self.heads]), persistent=True
        )

    @staticmethod
    def to_age(raw: torch.Tensor) -> torch.Tensor:
        return AGE_OFFSET + AGE_SCALE * raw.squeeze(-1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return ensemble(self(x), self.heads, self.ensemble_age_weights, self.ensemble_gender_weights)


def ensemble(
    outputs: dict[str, torch.Tensor],
    heads: tuple[str, ...],
    age_weights: torch.Tensor,
    gender_weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted mean of the heads' ages and P(male); the ages' (unweighted) standard deviation as uncertainty.

    A head that lacks an output (e.g. the gender-only virtual head has no age) is left out of that mean.
    """
    ages, age_w, probs, prob_w = [], [], [], []
    for i, head in enumerate(heads):
        if f"{head}_age" in outputs:
            ages.append(outputs[f"{head}_age"])
            age_w.append(age_weights[i])
        if f"{head}_gender" in outputs:
            probs.append(torch.sigmoid(outputs[f"{head}_gender"]))
            prob_w.append(gender_weights[i])
    age_stack, p_stack = torch.stack(ages, 1), torch.stack(probs, 1)
    aw, pw = torch.stack(age_w), torch.stack(prob_w)
    age = (age_stack * aw).sum(1) / aw.sum()
    p_male = (p_stack * pw).sum(1) / pw.sum()
    age_std = age_stack.std(1, unbiased=False)  # 0 for a single-head model
    return age.clamp(0.0, 100.0), p_male, age_std


class PaperNet(AgeGenderModel):
    """The paper's network: three stems, gender/age branches with virtual outputs, fusion top, low-level branch."""

    heads = HEADS

    def __init__(self, dropout: float = 0.2, ensemble_weights: dict[str, float] | None = None, age_bins: int = 0):
        super().__init__(ensemble_weights)
        # age_bins = 0: each age output is one regressed value. age_bins = K: each age output is the expectation of
        # a softmax over K age bins (label-distribution learning); still one age per head, so the paper's six
        # outputs stay, and the trainer also sees each head's bin logits (`<head>_age_logits`).
        self.age_bins = int(age_bins)
        age_width = max(1, self.age_bins)
        if self.age_bins:
            self.register_buffer("age_bin_centres", age_bin_centres(age_bins), persistent=False)
        # Three stems that see the face differently: fine detail, wider context, and a dilated view with a 5x5
        # reach at 3x3 cost. All stride 2: the budget of <= 60 MFLOP per face needs early downsampling.
        self.stem_fine = ConvBNAct(3, 16, 3, stride=2)
        self.stem_wide = ConvBNAct(3, 16, 5, stride=2)
        self.stem_dilated = ConvBNAct(3, 16, 3, stride=2, dilation=2)
        stem_channels = 48

        # Low-level branch: 6 convolutions straight on the stem features, then FC -> (age, gender).
        self.low_level = nn.Sequential(
            ConvBNAct(stem_channels, 16, 3, stride=2),  # 16x16
            ConvBNAct(16, 16, 3),
            ConvBNAct(16, 24, 3, stride=2),  # 8x8
            ConvBNAct(24, 24, 3),
            ConvBNAct(24, 32, 3, stride=2),  # 4x4
            ConvBNAct(32, 32, 1),
        )
        self.low_head = nn.Linear(32, age_width + 1)

        self.shared = ConvBNAct(stem_channels, 24, 3, stride=2)  # 16x16
        # Gender is the easier task: a shallow branch.
        self.gender_branch = nn.Sequential(ConvBNAct(24, 24, 3, stride=2), ConvBNAct(24, 24, 3))  # 8x8
        self.gender_virtual = nn.Linear(24, 1)
        # Age is harder: more convolutions.
        self.age_branch = nn.Sequential(
            ConvBNAct(24, 24, 3),
            ConvBNAct(24, 32, 3, stride=2),  # 8x8
            ConvBNAct(32, 32, 3),
            ConvBNAct(32, 32, 3),
        )
        self.age_virtual = nn.Linear(32, age_width)

        # Top: fuse both branches with a few simple convs, dropout and fully connected layers.
        self.top = nn.Sequential(
            ConvBNAct(56, 44, 1),
            ConvBNAct(44, 40, 3, stride=2),  # 4x4
        )
        self.top_fc = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(40, 32),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Dropout(dropout / 2),
            nn.Linear(32, age_width + 1),
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        stems = torch.cat([self.stem_fine(x), self.stem_wide(x), self.stem_dilated(x)], 1)
        low = self.low_head(_pool(self.low_level(stems)))
        shared = self.shared(stems)
        gender_features = self.gender_branch(shared)
        age_features = self.age_branch(shared)
        final = self.top_fc(_pool(self.top(torch.cat([gender_features, age_features], 1))))
        outputs = {"final_gender": final[:, -1], "low_gender": low[:, -1],
                   "virtual_gender": self.gender_virtual(_pool(gender_features)).squeeze(-1)}
        for head, age_raw in (("final", final[:, :-1]), ("virtual", self.age_virtual(_pool(age_features))),
                              ("low", low[:, :-1])):
            if self.age_bins:
                outputs[f"{head}_age"] = (torch.softmax(age_raw, 1) * self.age_bin_centres).sum(1)
                outputs[f"{head}_age_logits"] = age_raw
            else:
                outputs[f"{head}_age"] = self.to_age(age_raw)
        return outputs


# --- registry (one place that maps a name to a constructor; baselines register themselves on import) -------------

_REGISTRY: dict[str, Callable[..., AgeGenderModel]] = {}


def register_model(name: str):
    def add(constructor: Callable[..., AgeGenderModel]):
        _REGISTRY[name] = constructor
        return constructor

    return add


register_model("paper")(PaperNet)


def available_models() -> list[str]:
    from . import baselines  # noqa: F401  (registers the comparison models)

    return sorted(_REGISTRY)


def create_model(name: str = "paper", **kwargs) -> AgeGenderModel:
    names = available_models()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(names)}")
    return _REGISTRY[name](**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops_per_face(model: nn.Module) -> float:
    """FLOPs (2 x multiply-adds) of one forward pass on one 64x64 face, measured by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE))
    model.train(was_training)
    return float(counter.get_total_flops())


# --- input normalisation (the one definition used by inference backends and by training) -----------------------

def normalise_crops(crops_bgr: "np.ndarray") -> "np.ndarray":
    """N x 64 x 64 x 3 BGR uint8 crops -> N x 3 x 64 x 64 float32 network input (RGB, [0,1], mean/std)."""
    import numpy as np

    rgb = crops_bgr[..., ::-1].astype(np.float32) / 255.0
    rgb = (rgb - np.asarray(MEAN_RGB, np.float32)) / np.asarray(STD_RGB, np.float32)
    return np.ascontiguousarray(rgb.transpose(0, 3, 1, 2))


def normalise_crops_tensor(crops_bgr: torch.Tensor) -> torch.Tensor:
    """Torch twin of `normalise_crops` for uint8 N x H x W x 3 BGR tensors already on the training device."""
    rgb = crops_bgr.flip(-1).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN_RGB, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(STD_RGB, device=rgb.device).view(1, 3, 1, 1)
    return (rgb - mean) / std
