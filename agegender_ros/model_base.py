"""What every network of the registry shares: the output contract (`AgeGenderModel`), the ensemble of its heads,
and the registry that maps a model name to its constructor.

Dependencies run one way: `model.py` (the paper network, `create_model`) and `baselines.py` (the comparison
networks) both import this module; `model.py` imports `baselines.py` so that every model is registered; nothing here
imports either of them.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .model_io import AGE_OFFSET, AGE_SCALE


class AgeGenderModel(nn.Module):
    """Base class fixing the output contract; subclasses implement `forward`."""

    # Heads this model produces, in the order their members are ensembled by `predict`.
    heads: tuple[str, ...] = ("final",)

    def __init__(self, ensemble_weights: dict[str, float] | None = None):
        super().__init__()
        self.register_buffer("ensemble_age_weights", torch.ones(len(self.heads)), persistent=True)
        self.register_buffer("ensemble_gender_weights", torch.ones(len(self.heads)), persistent=True)
        self.set_ensemble_weights(ensemble_weights, ensemble_weights)

    def set_ensemble_weights(self, age: dict[str, float] | None = None,
                             gender: dict[str, float] | None = None) -> None:
        """Each head's weight in `predict`'s mean of ages and of P(male); heads not named keep theirs. The weights
        are buffers: they travel in the weights file and into every export."""
        for kind, weights, buffer in (("age", age, self.ensemble_age_weights),
                                      ("gender", gender, self.ensemble_gender_weights)):
            new = buffer.detach().clone()
            for head, weight in (weights or {}).items():
                if head not in self.heads:
                    raise ValueError(f"ensemble {kind} weights: no head {head!r} (heads: {', '.join(self.heads)})")
                if not float(weight) >= 0:
                    raise ValueError(f"ensemble {kind} weights: {head}={weight}, expected a weight >= 0")
                new[self.heads.index(head)] = float(weight)
            if not new.sum() > 0:
                raise ValueError(f"ensemble {kind} weights: at least one head needs a positive weight")
            buffer.copy_(new)

    def ensemble_weights(self) -> dict[str, dict[str, float]]:
        """{"age": {head: weight}, "gender": {...}}, as `predict` uses them (for model cards)."""
        return {kind: {head: round(float(w), 6) for head, w in zip(self.heads, buffer)}
                for kind, buffer in (("age", self.ensemble_age_weights), ("gender", self.ensemble_gender_weights))}

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
    # Unweighted on purpose: the disagreement of every head, those with little or no weight in the answer included,
    # flags the faces whose answer is far off better than a spread weighted as the answer (experiments/ensemble.md).
    age_std = age_stack.std(1, unbiased=False)  # 0 for a single-head model
    return age.clamp(0.0, 100.0), p_male, age_std



# --- registry: name -> constructor. Models register themselves when their module is imported; `model.py` imports
# every model module, and `model.create_model` / `model.available_models` read this registry. -------------------

_REGISTRY: dict[str, Callable[..., AgeGenderModel]] = {}


def register_model(name: str):
    def add(constructor: Callable[..., AgeGenderModel]):
        _REGISTRY[name] = constructor
        return constructor

    return add
