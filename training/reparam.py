"""Structural re-parameterisation (RepVGG, Ding et al. 2021): train each conv of the paper net as several parallel
branches, then fold them back into the one conv it ships as.

Every `ConvBNAct` (k x k conv -> BN -> LeakyReLU) trains as the sum of
    k x k conv -> BN   (the original, "main" branch)
    1 x 1 conv -> BN   (where k > 1; samples the kernel's centre tap, so it lines up at any stride or dilation)
    BN alone           (identity, where the conv keeps channels and resolution)
before the activation. Convolution is linear, so after training (BNs in eval mode) the branches are one k x k
conv plus a bias, and `fuse` writes that back as a plain `ConvBNAct` (the BN holding the bias). The shipped
network, its parameter count and its FLOPs per face are exactly the paper net's; only training sees the extra
branches, which change how the same function class is optimised, not what it can represent.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from agegender_ros.model import ConvBNAct


class RepConvBNAct(nn.Module):
    """A `ConvBNAct` trained as parallel branches; `fused()` gives the equivalent `ConvBNAct`."""

    def __init__(self, unit: ConvBNAct, new_branches_start_at_zero: bool = True):
        super().__init__()
        conv, bn, act = unit[0], unit[1], unit[2]
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel, self.stride, self.dilation = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
        if conv.groups != 1 or conv.kernel_size[0] != conv.kernel_size[1] or conv.kernel_size[0] % 2 == 0:
            raise ValueError(f"cannot re-parameterise {conv}: needs an odd square kernel and groups=1")
        self.main = nn.Sequential(conv, bn)  # keeps the unit's weights, so --init-weights carry over
        self.pointwise = None
        if self.kernel > 1:
            # Stride 1 on a subsampled input rather than a strided 1x1 conv: the same taps, and torch 2.13's oneDNN
            # backward of a strided 1x1 conv with few input channels in channels_last corrupts the heap.
            self.pointwise = nn.Sequential(
                nn.Conv2d(self.in_channels, self.out_channels, 1, bias=False),
                nn.BatchNorm2d(self.out_channels))
        self.identity = nn.BatchNorm2d(self.out_channels) \
            if self.in_channels == self.out_channels and self.stride == 1 else None
        if new_branches_start_at_zero:
            # The new branches add nothing until training grows them: fine-tuning starts from the same function.
            for extra in (self.pointwise[1] if self.pointwise is not None else None, self.identity):
                if extra is not None:
                    nn.init.zeros_(extra.weight)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.main(x)
        if self.pointwise is not None:
            y = y + self.pointwise(x[:, :, ::self.stride, ::self.stride])
        if self.identity is not None:
            y = y + self.identity(x)
        return self.act(y)

    @torch.no_grad()
    def fused(self) -> ConvBNAct:
        """The single conv -> BN -> LeakyReLU that computes what this block computes in eval mode."""
        main_conv = self.main[0]
        centre = self.kernel // 2
        # Each branch as a k x k kernel with its BN: the 1 x 1 one at the centre tap, the identity as a unit kernel.
        branches = [(main_conv.weight, self.main[1])]
        if self.pointwise is not None:
            branches.append((nn.functional.pad(self.pointwise[0].weight, [centre] * 4), self.pointwise[1]))
        if self.identity is not None:
            unit_kernel = torch.zeros_like(main_conv.weight)
            channels = torch.arange(self.out_channels, device=unit_kernel.device)
            unit_kernel[channels, channels, centre, centre] = 1.0
            branches.append((unit_kernel, self.identity))
        kernel, bias = 0.0, 0.0
        for weight, bn in branches:
            weight, shift = fuse_conv_bn_weights(weight, None, bn.running_mean, bn.running_var, bn.eps, bn.weight,
                                                 bn.bias)
            kernel, bias = kernel + weight, bias + shift
        unit = ConvBNAct(self.in_channels, self.out_channels, self.kernel, self.stride, self.dilation)
        unit = unit.to(device=kernel.device, dtype=kernel.dtype)
        unit[0].weight.copy_(kernel)
        bn = unit[1]  # an identity BN (mean 0, var 1 - eps, scale 1) holding the bias
        bn.weight.fill_(1.0)
        bn.bias.copy_(bias)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
        return unit.train(self.training)


def _replace(model: nn.Module, kind: type, make) -> int:
    replaced = 0
    for name, child in list(model.named_children()):
        if isinstance(child, kind):
            setattr(model, name, make(child))
            replaced += 1
        else:
            replaced += _replace(child, kind, make)
    return replaced


def expand(model: nn.Module, new_branches_start_at_zero: bool = True) -> nn.Module:
    """Turn every `ConvBNAct` of the model into a multi-branch block, in place; returns the model."""
    if not _replace(model, ConvBNAct, lambda unit: RepConvBNAct(unit, new_branches_start_at_zero)):
        raise ValueError(f"{type(model).__name__} has no conv -> BN -> activation units to re-parameterise")
    return model


def fuse(model: nn.Module) -> nn.Module:
    """Fold every multi-branch block back into a `ConvBNAct` (from the BNs' running statistics), in place; returns
    the model."""
    _replace(model, RepConvBNAct, RepConvBNAct.fused)
    return model
