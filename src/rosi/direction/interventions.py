"""Runtime interventions along a direction, for scoring candidates: hooks, never weight changes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from rosi.model.architecture import architecture_map
from rosi.model.hooks import hooks, layer_output, replace_output


@contextmanager
def ablated(model: nn.Module, direction: torch.Tensor) -> Iterator[None]:
    """Project ``direction`` out of every write to the residual stream (and so out of the stream)."""
    r_hat = direction / direction.norm()
    points = architecture_map(model).write_points(model)
    cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def project(module: nn.Module, args: Any, output: Any) -> Any:
        out = layer_output(output)
        r = cache.setdefault((out.device, out.dtype), r_hat.to(device=out.device, dtype=out.dtype))
        return replace_output(output, out - (out @ r).unsqueeze(-1) * r)

    with hooks([(m, project) for m in points]):
        yield


@contextmanager
def added(model: nn.Module, layer: int, vector: torch.Tensor) -> Iterator[None]:
    """Add ``vector`` to the residual stream after decoder layer ``layer``, at every position."""
    module = architecture_map(model).layer_modules(model)[layer]

    def add(m: nn.Module, args: Any, output: Any) -> Any:
        out = layer_output(output)
        return replace_output(output, out + vector.to(device=out.device, dtype=out.dtype))

    with hooks([(module, add)]):
        yield
