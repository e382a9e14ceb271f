"""How well a direction separates prompts it was not fit on: each prompt's projection on the
direction at its layer and position, against a threshold fit only on rosi's built-in training
prompts (the midpoint of the harmful and harmless class means), so nothing is fit on the prompts
measured."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rosi.direction.activations import activations_at
from rosi.direction.vector import Direction
from rosi.errors import DirectionError
from rosi.model.chat import ChatFormat
from rosi.model.loading import LoadedModel
from rosi.prompts import builtin


def separation(
    loaded: LoadedModel,
    direction: Direction,
    harmful: Sequence[str],
    harmless: Sequence[str],
    contrast: Sequence[str],
    batch_size: int = 32,
) -> dict[str, Any]:
    """The share of ``harmful`` prompts projected above the threshold, of ``harmless`` and
    ``contrast`` (look-alike) prompts below it, and the accuracies of harmful against each."""
    fmt = ChatFormat(loaded.tokenizer)
    layer, position = direction.layer, direction.position
    if layer is None or position is None:
        raise DirectionError("the direction has no layer and position to project at; give one extracted by rosi")
    s_hat = direction.unit

    def project(prompts: Sequence[str]) -> torch.Tensor:
        return activations_at(loaded.model, fmt, list(prompts), layer, position, batch_size=batch_size) @ s_hat

    threshold = float(
        (project(builtin("harmful", "train").instructions).mean() + project(builtin("harmless", "train").instructions).mean()) / 2
    )
    ph, pb, pc = project(harmful), project(harmless), project(contrast)
    above = int((ph > threshold).sum())
    below, below_c = int((pb <= threshold).sum()), int((pc <= threshold).sum())
    return {
        "layer": layer,
        "position": position,
        "threshold": round(threshold, 3),
        "accuracy_harmful_vs_harmless": (above + below) / (len(ph) + len(pb)),
        "harmful_above": above / len(ph),
        "harmless_below": below / len(pb),
        "contrast_below": below_c / len(pc),
        "accuracy_harmful_vs_contrast": (above + below_c) / (len(ph) + len(pc)),
        "n": {"harmful": len(ph), "harmless": len(pb), "contrast": len(pc)},
    }
