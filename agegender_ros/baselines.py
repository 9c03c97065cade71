"""The comparison networks the paper quotes (its Tables 3 and 5), rebuilt in PyTorch under the registry contract.

    ssrnet        SSR-Net (Yang et al., IJCAI 2018)                  40.9k params   (age part; + 49 for gender)
    mobilenet_v1  MobileNet-V1, alpha 0.25, regression head         226.3k params   (age part; + 33 for gender)
    densenet      DenseNet, depth 19, growth rate 12, regression    242.0k params   (age part; + 33 for gender)

The paper took these numbers from SSR-Net's comparison, whose models are Keras: `SSRNET_model.py`, `TYY_model.py`
and `densenet.py` of the official SSR-Net repository (shamangary/SSR-Net). The networks here follow that code layer
by layer. Keras counts BatchNorm's moving mean and variance as (non-trainable) parameters, torch keeps them as
buffers, so `count_parameters` is lower than the quoted figure by twice the number of BatchNorm channels;
`reference_parameter_count(model)` adds them back and reproduces the quoted figures exactly (40,915 / 226,309 /
242,009) for the age part.

Each model adds the smallest gender path that gives the multi-task comparison a P(male): the modules named in
`gender_modules` (left out by `age_parameter_count`). The quoted networks are single-task age regressors.

Common choices, so every registry model trains under one recipe: BatchNorm keeps torch's momentum (0.1, where
Keras used 0.99); weights start as Keras initialised them (Glorot-uniform kernels and zero biases, He-normal for
DenseNet's convolutions), since SSR-Net's ReLU-gated stage distributions are sensitive to it. The regressors'
outputs go through `AgeGenderModel.to_age` (35 + 20 r years) like the paper network's; SSR-Net's soft stagewise
regression yields years directly.
"""
from __future__ import annotations

import torch
from torch import nn

from .model_base import AgeGenderModel, register_model

__all__ = [
    "SSRNet",
    "MobileNetV1",
    "DenseNet",
    "age_parameter_count",
    "reference_parameter_count",
]


# --- parameter accounting --------------------------------------------------------------------------------------

def _gender_parameter_ids(model: nn.Module) -> set[int]:
    ids: set[int] = set()
    for name in getattr(model, "gender_modules", ()):
        ids.update(id(p) for p in model.get_submodule(name).parameters())
    return ids


def age_parameter_count(model: nn.Module) -> int:
    """Trainable parameters outside the model's gender-only modules (`model.gender_modules`)."""
    gender = _gender_parameter_ids(model)
    return sum(p.numel() for p in model.parameters() if id(p) not in gender)


def reference_parameter_count(model: nn.Module, age_only: bool = True) -> int:
    """Parameters as Keras counts them (BatchNorm moving mean/variance included): comparable to quoted figures."""
    trainable = age_parameter_count(model) if age_only else sum(p.numel() for p in model.parameters())
    bn_stats = sum(
        m.running_mean.numel() + m.running_var.numel()
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
    )
    return trainable + bn_stats


def _keras_init(module: nn.Module, conv_init: str = "glorot_uniform") -> None:
    """Keras's default initialisation: Glorot-uniform (or He-normal) kernels, zero biases, BN gamma 1 / beta 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            if conv_init == "he_normal":
                # Keras he_normal: truncated normal, std sqrt(2 / fan_in).
                fan_in = m.weight[0].numel()
                std = (2.0 / fan_in) ** 0.5
                nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)
            else:
                # Keras counts a depthwise kernel's fans per channel: in = k*k, out = k*k (depth multiplier 1),
                # which is what torch's fan computation gives for groups == channels as well.
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --- SSR-Net ---------------------------------------------------------------------------------------------------

class _ConvBN(nn.Sequential):
    """Keras `Conv2D(c, 3x3)` (valid padding, with bias) -> BatchNorm -> activation, as in SSR-Net's streams."""

    def __init__(self, c_in: int, c_out: int, act: nn.Module):
        super().__init__(nn.Conv2d(c_in, c_out, 3), nn.BatchNorm2d(c_out), act)


class _SSRStage(nn.Module):
    """One SSR-Net fusion block: stage distribution p (s bins), index shifts eta (s), range scale delta (1).

    Both streams' feature maps go through a 1x1 conv (10 channels, ReLU), an optional pooling (max for the Tanh
    stream, average for the ReLU stream) and flatten. Their product gives delta (Dense 1, tanh). Dropout + Dense(s,
    ReLU) on each, multiplied, -> Dense(2s, ReLU) -> p = Dense(s, ReLU) and eta = Dense(s, tanh). Note that p is
    ReLU-activated, not softmax-normalised, exactly as in the official code.
    """

    def __init__(self, s_channels: int, x_channels: int, features: int, bins: int, pool: int, dropout: float):
        super().__init__()
        self.s_reduce = nn.Sequential(nn.Conv2d(s_channels, 10, 1), nn.ReLU())
        self.x_reduce = nn.Sequential(nn.Conv2d(x_channels, 10, 1), nn.ReLU())
        self.s_pool = nn.MaxPool2d(pool) if pool > 1 else nn.Identity()
        self.x_pool = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.s_mix = nn.Linear(features, bins)
        self.x_mix = nn.Linear(features, bins)
        self.delta = nn.Linear(features, 1)
        self.feature = nn.Linear(bins, 2 * bins)
        self.prob = nn.Linear(2 * bins, bins)
        self.shift = nn.Linear(2 * bins, bins)

    def forward(self, s: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = torch.flatten(self.s_pool(self.s_reduce(s)), 1)
        x = torch.flatten(self.x_pool(self.x_reduce(x)), 1)
        delta = torch.tanh(self.delta(s * x)).squeeze(-1)
        mixed = torch.relu(self.s_mix(self.dropout(s))) * torch.relu(self.x_mix(self.dropout(x)))
        feature = torch.relu(self.feature(mixed))
        return torch.relu(self.prob(feature)), torch.tanh(self.shift(feature)), delta


@register_model("ssrnet")
class SSRNet(AgeGenderModel):
    """SSR-Net: Soft Stagewise Regression Network (Yang, Huang, Lin, Hsiu, Chuang; IJCAI 2018), plus a gender logit.

    Faithful to the official Keras model (`SSR_net` in shamangary/SSR-Net `SSRNET_model.py`, stage_num [3, 3, 3],
    lambda_local = lambda_d = 0.25 as in its training script):

    * Two streams of four 3x3 valid convs (with bias) -> BN -> activation: 32 channels, ReLU, 2x2 average pooling
      between convs; and 16 channels, Tanh, 2x2 max pooling. On 64x64: 62 -> 31 -> 29 -> 14 -> 12 -> 6 -> 4.
    * Three fusion blocks (`_SSRStage`), coarse to fine: stage 1 on the final 4x4 maps, stage 2 on the 14x14 maps
      after the 2nd pooling (pooled 4x4 -> 3x3), stage 3 on the 31x31 maps after the 1st pooling (pooled 8x8 -> 3x3).
      Each gives the stage distribution p_k (ReLU), per-bin index shifts eta_k (tanh) and a range scale Delta_k (tanh).
    * Soft stagewise regression, as the official `merge_age`:
      age = V * sum_k [ sum_i (i + lambda_local * eta_k,i) * p_k,i ] / prod_{j<=k} s_j * (1 + lambda_d * Delta_j),
      i = 0..s_k-1, with V = 101 (the value hard-coded in the official code; `age_range` changes it).
    * Dropout 0.2 before each stage's Dense(s) layers, as in the official code.

    Gender (not in the age model): a linear logit on the globally average-pooled final maps of both streams
    (32 + 16 features -> 1): 49 parameters. Chosen over a second stagewise head sharing the streams (the authors'
    gender variant is the same net with V = 1), which would add ~4.1k parameters (+10%) and dilute the comparison,
    which is about the age part. `gender_modules` names it.

    Sizing: nothing to choose, the official layout. Parameters measured: 40,531 trainable in the age part
    (40,915 counting BN moving statistics as Keras does = the quoted 40.9k), 40,580 in total with the gender logit.
    """

    heads = ("final",)
    gender_modules = ("gender_head",)

    def __init__(self, stage_num: tuple[int, int, int] = (3, 3, 3), lambda_local: float = 0.25,
                 lambda_d: float = 0.25, age_range: float = 101.0, dropout: float = 0.2,
                 ensemble_weights: dict[str, float] | None = None):
        super().__init__(ensemble_weights)
        if len(stage_num) != 3:
            raise ValueError("SSR-Net has three stages")
        self.stage_num = tuple(int(s) for s in stage_num)
        self.lambda_local = float(lambda_local)
        self.lambda_d = float(lambda_d)
        self.age_range = float(age_range)

        self.x1, self.x2 = _ConvBN(3, 32, nn.ReLU()), _ConvBN(32, 32, nn.ReLU())
        self.x3, self.x4 = _ConvBN(32, 32, nn.ReLU()), _ConvBN(32, 32, nn.ReLU())
        self.s1, self.s2 = _ConvBN(3, 16, nn.Tanh()), _ConvBN(16, 16, nn.Tanh())
        self.s3, self.s4 = _ConvBN(16, 16, nn.Tanh()), _ConvBN(16, 16, nn.Tanh())
        self.avg_pool, self.max_pool = nn.AvgPool2d(2), nn.MaxPool2d(2)

        # Flattened feature sizes for a 64x64 input: 4x4x10, 3x3x10 (14 // 4), 3x3x10 (31 // 8).
        self.stage1 = _SSRStage(16, 32, 160, self.stage_num[0], pool=1, dropout=dropout)
        self.stage2 = _SSRStage(16, 32, 90, self.stage_num[1], pool=4, dropout=dropout)
        self.stage3 = _SSRStage(16, 32, 90, self.stage_num[2], pool=8, dropout=dropout)

        self.gender_head = nn.Linear(32 + 16, 1)
        for k, s in enumerate(self.stage_num):
            self.register_buffer(f"bin_index{k + 1}", torch.arange(s, dtype=torch.float32), persistent=False)
        _keras_init(self)

    def stagewise(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Stage outputs (p1..p3, eta1..eta3, delta1..delta3) and the two streams' pooled final features."""
        x_l1 = self.avg_pool(self.x1(x))
        x_l2 = self.avg_pool(self.x2(x_l1))
        x_fin = self.x4(self.avg_pool(self.x3(x_l2)))
        s_l1 = self.max_pool(self.s1(x))
        s_l2 = self.max_pool(self.s2(s_l1))
        s_fin = self.s4(self.max_pool(self.s3(s_l2)))
        out: dict[str, torch.Tensor] = {}
        for k, (stage, s, xx) in enumerate(
            ((self.stage1, s_fin, x_fin), (self.stage2, s_l2, x_l2), (self.stage3, s_l1, x_l1)), 1
        ):
            out[f"p{k}"], out[f"eta{k}"], out[f"delta{k}"] = stage(s, xx)
        pooled = torch.cat([x_fin.mean((2, 3)), s_fin.mean((2, 3))], 1)
        return out, pooled

    def merge_age(self, stages: dict[str, torch.Tensor]) -> torch.Tensor:
        """The soft stagewise regression of the official `merge_age` (years, shape N)."""
        age = torch.zeros_like(stages["delta1"])
        width = torch.ones_like(age)
        for k, s in enumerate(self.stage_num, 1):
            width = width * (s * (1.0 + self.lambda_d * stages[f"delta{k}"]))
            index = getattr(self, f"bin_index{k}") + self.lambda_local * stages[f"eta{k}"]
            age = age + (index * stages[f"p{k}"]).sum(1) / width
        return self.age_range * age

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        stages, pooled = self.stagewise(x)
        return {"final_age": self.merge_age(stages), "final_gender": self.gender_head(pooled).squeeze(-1)}


# --- MobileNet-V1 ----------------------------------------------------------------------------------------------

class _ConvBNReLU6(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU6(inplace=True),
        )


class _DepthwiseSeparable(nn.Sequential):
    """3x3 depthwise conv -> BN -> ReLU6 -> 1x1 pointwise conv -> BN -> ReLU6 (MobileNet-V1's block)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__(_ConvBNReLU6(c_in, c_in, 3, stride, groups=c_in), _ConvBNReLU6(c_in, c_out, 1))


@register_model("mobilenet_v1")
class MobileNetV1(AgeGenderModel):
    """MobileNet-V1 (Howard et al., arXiv 1704.04861, 2017) as SSR-Net's comparison used it, plus a gender logit.

    SSR-Net's `TYY_MobileNet_reg`: Keras `MobileNet(alpha=0.25, depth_multiplier=1, include_top=False)` on 64x64
    (a 3x3 stride-2 conv then 13 depthwise-separable blocks, channels 32-64-128-128-256-256-512x6-1024-1024 times
    alpha, stride 2 at blocks 2, 4, 6, 12 -> 2x2x256), then a 1x1 conv to 20 channels (ReLU), flatten (80),
    dropout 0.2, Dense(32, ReLU) and Dense(1) -> age via `to_age`. Gender: Dense(32 -> 1) on the same 32 features,
    33 parameters (`gender_modules`).

    Sizing: the width multiplier alpha = 0.25 the comparison used (`alpha` changes it). Parameters measured:
    220,837 trainable in the age part (226,309 counting BN moving statistics as Keras does = the quoted 226.3k),
    220,870 in total with the gender logit.
    """

    heads = ("final",)
    gender_modules = ("gender_head",)
    # (output channels at alpha 1, stride) of the 13 depthwise-separable blocks.
    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
              (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

    def __init__(self, alpha: float = 0.25, dropout: float = 0.2, ensemble_weights: dict[str, float] | None = None):
        super().__init__(ensemble_weights)
        c = int(32 * alpha)
        layers: list[nn.Module] = [_ConvBNReLU6(3, c, 3, stride=2)]
        for width, stride in self.BLOCKS:
            layers.append(_DepthwiseSeparable(c, int(width * alpha), stride))
            c = int(width * alpha)
        self.features = nn.Sequential(*layers)  # 64x64 -> 2x2
        self.reduce = nn.Sequential(nn.Conv2d(c, 20, 1), nn.ReLU(inplace=True))
        self.feat = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(20 * 2 * 2, 32), nn.ReLU(inplace=True))
        self.age_head = nn.Linear(32, 1)
        self.gender_head = nn.Linear(32, 1)
        _keras_init(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.feat(self.reduce(self.features(x)))
        return {"final_age": self.to_age(self.age_head(feat)), "final_gender": self.gender_head(feat).squeeze(-1)}


# --- DenseNet --------------------------------------------------------------------------------------------------

class _DenseLayer(nn.Module):
    """BN -> ReLU -> 3x3 conv (growth-rate channels), output concatenated to the input."""

    def __init__(self, c_in: int, growth_rate: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), nn.Conv2d(c_in, growth_rate, 3, padding=1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


class _Transition(nn.Sequential):
    """BN -> ReLU -> 1x1 conv (no compression) -> 2x2 average pooling."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), nn.Conv2d(c_in, c_out, 1, bias=False), nn.AvgPool2d(2)
        )


@register_model("densenet")
class DenseNet(AgeGenderModel):
    """DenseNet (Huang et al., CVPR 2017) as SSR-Net's comparison used it, plus a gender logit.

    SSR-Net's `TYY_DenseNet_reg` with depth 19 over its `densenet.py` (titu1994's Keras DenseNet, defaults): a 3x3
    conv to 2 x growth channels, 3 dense blocks of (depth - 4) / 3 = 5 BN-ReLU-conv3x3 layers each (growth rate 12,
    no bottleneck), BN-ReLU-conv1x1-avgpool transitions without compression (64 -> 32 -> 16), a final BN-ReLU and
    global average pooling (204 features), then Dense(128, ReLU), dropout 0.2, Dense(32, ReLU) and Dense(1) -> age
    via `to_age`. Gender: Dense(32 -> 1) on the same 32 features, 33 parameters (`gender_modules`).

    Sizing: of the two depths SSR-Net's repository trained (13 and 19), depth 19 is the one whose size matches the
    quoted 242k (depth 13 is 108k). Parameters measured: 237,905 trainable in the age part (242,009 counting BN
    moving statistics as Keras does = the quoted 242k), 237,938 in total with the gender logit.
    """

    heads = ("final",)
    gender_modules = ("gender_head",)

    def __init__(self, depth: int = 19, growth_rate: int = 12, dropout: float = 0.2,
                 ensemble_weights: dict[str, float] | None = None):
        super().__init__(ensemble_weights)
        if (depth - 4) % 3:
            raise ValueError("DenseNet depth must be 3 N + 4")
        per_block = (depth - 4) // 3
        c = 2 * growth_rate
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, padding=1, bias=False)]
        for block in range(3):
            for _ in range(per_block):
                layers.append(_DenseLayer(c, growth_rate))
                c += growth_rate
            if block < 2:
                layers.append(_Transition(c, c))
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.feat = nn.Sequential(
            nn.Linear(c, 128), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(128, 32), nn.ReLU(inplace=True)
        )
        self.age_head = nn.Linear(32, 1)
        self.gender_head = nn.Linear(32, 1)
        _keras_init(self, conv_init="he_normal")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.feat(self.features(x))
        return {"final_age": self.to_age(self.age_head(feat)), "final_gender": self.gender_head(feat).squeeze(-1)}
