"""Weight averaging ("model soup", Wortsman et al., ICML 2022): one network whose every weight is the mean of that
weight in several fine-tunings of the same start.

Fine-tunings that share a start stay in one basin of the loss, so their mean is a network of its own, with the
architecture, parameters and speed of each ingredient, that usually scores better than the ingredients' average
(docs/experiments/fairface.md, "Weight averaging"). Networks trained from different starts cannot be averaged this
way (their channels are not in the same order), so `average_cards` refuses them. BatchNorm's running statistics
are averaged like the weights.
"""
from __future__ import annotations

import torch

# What a soup's ingredients must share for their mean to be a network with the card of each.
SHARED_FIELDS = ("architecture", "model_args", "crop", "ensemble_weights", "splits", "detector_for_crops")
# Card fields measured on one network: the soup measures its own.
MEASURED_FIELDS = ("metrics", "metrics_per_dataset", "metrics_unseen", "sha256", "params", "flops_per_face")


class SoupError(ValueError):
    pass


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of each floating-point tensor over the state dicts; integer buffers (BatchNorm's batch counters)
    are taken from the first."""
    if not states:
        raise SoupError("a soup needs at least one weights file")
    keys = list(states[0])
    for index, state in enumerate(states[1:], 1):
        if list(state) != keys or any(state[k].shape != states[0][k].shape for k in keys):
            raise SoupError(f"ingredient {index + 1} has other tensors than the first (another architecture)")
    return {k: torch.stack([s[k] for s in states]).mean(0) if states[0][k].is_floating_point() else states[0][k]
            for k in keys}


def average_cards(paths: list[str], cards: list[dict]) -> dict:
    """The soup's card: what its ingredients share, and a recipe naming each ingredient (its file, sha256 and
    recipe). Ingredients that differ in a shared field, or started from different weights, are refused."""
    first = cards[0]
    for path, card in zip(paths[1:], cards[1:]):
        for field in SHARED_FIELDS:
            if card.get(field) != first.get(field):
                raise SoupError(f"{path}: its {field} differs from {paths[0]}'s, so the two cannot be averaged")
        start, first_start = ((c.get("recipe") or {}).get("init_weights") for c in (card, first))
        if start != first_start:
            raise SoupError(f"{path} started from {start or 'random initialisation'} and {paths[0]} from "
                            f"{first_start or 'random initialisation'}: only fine-tunings of the same start "
                            f"can be averaged")
    licences = list(dict.fromkeys(c.get("licence", "?") for c in cards))
    card = {k: v for k, v in first.items() if k not in MEASURED_FIELDS}
    card["licence"] = " ".join(licences)
    card["recipe"] = {"weight_average_of": [{"weights": str(path), "sha256": c.get("sha256"),
                                             "recipe": c.get("recipe")} for path, c in zip(paths, cards)]}
    return card
