"""Forward passes on left-padded batches, and forward hooks that are always removed."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

Hook = Callable[..., Any]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only, so a left-padded row matches its unpadded self."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward(module: nn.Module, batch: dict[str, torch.Tensor], **kwargs: Any) -> Any:
    """Run a model (or its decoder) on a left-padded batch with padding-proof positions, no cache."""
    return module(**batch, position_ids=position_ids(batch["attention_mask"]), use_cache=False, **kwargs)


def layer_output(output: Any) -> torch.Tensor:
    """The hidden states of a module's output (decoder layers may return a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def replace_output(output: Any, new: torch.Tensor) -> Any:
    """``output`` with its hidden states replaced by ``new`` (the inverse of :func:`layer_output`)."""
    return (new, *output[1:]) if isinstance(output, tuple) else new


@contextmanager
def hooks(pairs: Sequence[tuple[nn.Module, Hook]], *, pre: bool = False) -> Iterator[None]:
    """Register forward (or forward-pre) hooks for the duration of a block; always removed."""
    handles = [m.register_forward_pre_hook(fn) if pre else m.register_forward_hook(fn) for m, fn in pairs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
