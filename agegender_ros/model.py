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
inference: the weighted mean of the three ages and of the three P(male) (each head's weight a buffer stored with
the weights: `set_ensemble_weights`, `agegender train --ensemble-age-weights/--ensemble-gender-weights`; equal
unless set), plus the spread of the three ages as an uncertainty.

Every model in the registry (`create_model`) follows the same contract, so training, export and the backends
never special-case one: `forward(x) -> dict[str, Tensor]` with keys `<head>_age` (years, shape N) and/or
`<head>_gender` (logit of P(male), shape N), and `predict(x) -> (age, p_male, age_std)`.
"""
from __future__ import annotations

import torch
from torch import nn

from . import baselines  # noqa: F401  (registers the comparison models; it imports model_base, never this module)
from .model_base import _REGISTRY, AgeGenderModel, ensemble, register_model  # noqa: F401  (re-exported)
# The torch-free input/output contract (used by the runtime without torch), re-exported for training and export.
from .model_io import AGE_OFFSET, AGE_SCALE, INPUT_SIZE, MEAN_RGB, STD_RGB, normalise_crops  # noqa: F401

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


class PaperNet(AgeGenderModel):
    """The paper's network: three stems, gender/age branches with virtual outputs, fusion top, low-level branch."""

    heads = HEADS

    def __init__(self, dropout: float = 0.2, ensemble_weights: dict[str, float] | None = None, age_bins: int = 0,
                 width: float = 1.0):
        super().__init__(ensemble_weights)
        # width multiplies every layer's channels (1: the paper's ~99.2k-parameter net; 2: about 4x the parameters
        # and FLOPs), for capacity studies. The default weights use 1.
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")

        def ch(channels: int) -> int:
            return max(1, int(round(channels * width)))

        # age_bins = 0: each age output is one regressed value. age_bins = K: each age output is the expectation of
        # a softmax over K age bins (label-distribution learning); still one age per head, so the paper's six
        # outputs stay, and the trainer also sees each head's bin logits (`<head>_age_logits`).
        self.age_bins = int(age_bins)
        age_width = max(1, self.age_bins)
        if self.age_bins:
            self.register_buffer("age_bin_centres", age_bin_centres(age_bins), persistent=False)
        # Three stems that see the face differently: fine detail, wider context, and a dilated view with a 5x5
        # reach at 3x3 cost. All stride 2: the budget of <= 60 MFLOP per face needs early downsampling.
        self.stem_fine = ConvBNAct(3, ch(16), 3, stride=2)
        self.stem_wide = ConvBNAct(3, ch(16), 5, stride=2)
        self.stem_dilated = ConvBNAct(3, ch(16), 3, stride=2, dilation=2)
        stem_channels = 3 * ch(16)

        # Low-level branch: 6 convolutions straight on the stem features, then FC -> (age, gender).
        self.low_level = nn.Sequential(
            ConvBNAct(stem_channels, ch(16), 3, stride=2),  # 16x16
            ConvBNAct(ch(16), ch(16), 3),
            ConvBNAct(ch(16), ch(24), 3, stride=2),  # 8x8
            ConvBNAct(ch(24), ch(24), 3),
            ConvBNAct(ch(24), ch(32), 3, stride=2),  # 4x4
            ConvBNAct(ch(32), ch(32), 1),
        )
        self.low_head = nn.Linear(ch(32), age_width + 1)

        self.shared = ConvBNAct(stem_channels, ch(24), 3, stride=2)  # 16x16
        # Gender is the easier task: a shallow branch.
        self.gender_branch = nn.Sequential(ConvBNAct(ch(24), ch(24), 3, stride=2),  # 8x8
                                           ConvBNAct(ch(24), ch(24), 3))
        self.gender_virtual = nn.Linear(ch(24), 1)
        # Age is harder: more convolutions.
        self.age_branch = nn.Sequential(
            ConvBNAct(ch(24), ch(24), 3),
            ConvBNAct(ch(24), ch(32), 3, stride=2),  # 8x8
            ConvBNAct(ch(32), ch(32), 3),
            ConvBNAct(ch(32), ch(32), 3),
        )
        self.age_virtual = nn.Linear(ch(32), age_width)

        # Top: fuse both branches with a few simple convs, dropout and fully connected layers.
        self.top = nn.Sequential(
            ConvBNAct(ch(24) + ch(32), ch(44), 1),
            ConvBNAct(ch(44), ch(40), 3, stride=2),  # 4x4
        )
        self.top_fc = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(ch(40), ch(32)),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Dropout(dropout / 2),
            nn.Linear(ch(32), age_width + 1),
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


# --- registry (model_base.py holds it; importing `baselines` above registered the comparison models) ------------

register_model("paper")(PaperNet)


def available_models() -> list[str]:
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


# --- input normalisation: `normalise_crops` (numpy, model_io.py) for inference, its torch twin for training ----

def normalise_crops_tensor(crops_bgr: torch.Tensor) -> torch.Tensor:
    """Torch twin of `normalise_crops` for uint8 N x H x W x 3 BGR tensors already on the training device."""
    rgb = crops_bgr.flip(-1).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN_RGB, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(STD_RGB, device=rgb.device).view(1, 3, 1, 1)
    return (rgb - mean) / std
