"""Forward passes on left-padded batches, and forward hooks that are always removed."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import transformers.generation.utils as _generation_utils
from torch import nn

Hook = Callable[..., Any]
# transformers renamed the models' and generate's cache argument (``past_key_values`` -> ``cache``) within 5.x
CACHE_KWARG = "cache" if "cache" in getattr(_generation_utils, "ALL_CACHE_NAMES", ()) else "past_key_values"


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only, so a left-padded row matches its unpadded self."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward(module: nn.Module, batch: dict[str, Any], **kwargs: Any) -> Any:
    """Run a model (or its decoder) on a left-padded batch with padding-proof positions, no cache;
    or on a batch whose shared prefix is cached (:func:`rosi.model.generation.shared_prefix_batches`:
    its cache under :data:`CACHE_KWARG`), only the tokens after the prefix, at the positions the
    whole attention mask gives them (the rows' last positions line up either way)."""
    mask = batch["attention_mask"]
    cache = batch.get(CACHE_KWARG)
    if cache is None:
        return module(**batch, position_ids=position_ids(mask), use_cache=False, **kwargs)
    p = cache.get_seq_length()
    own = {"input_ids": batch["input_ids"][:, p:], "attention_mask": mask, "position_ids": position_ids(mask)[:, p:], CACHE_KWARG: cache}
    return module(**own, **kwargs)


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
    """Where a model's inputs go: its parameters' device, or for a model spread over devices by
    accelerate (``device_map``) the device of its first part (the CPU for offloaded parts)."""
    device = next(model.parameters()).device
    if device.type != "meta":
        return device
    placement = getattr(model, "hf_device_map", None) or {}
    first = next(iter(placement.values()), "cpu")
    if isinstance(first, int):
        return torch.device("cuda", first)
    return torch.device("cpu" if first in ("cpu", "disk") else str(first))


def offloaded(param: torch.Tensor) -> bool:
    """A parameter accelerate keeps off the module (on the CPU or on disk) and brings in per call."""
    return param.device.type == "meta"


def stored_weight(model: nn.Module, module_name: str, attribute: str = "weight") -> torch.Tensor:
    """A parameter's values, also for a module whose weights accelerate offloaded (read through its hook)."""
    module = model.get_submodule(module_name)
    tensor = getattr(module, attribute)
    if not offloaded(tensor):
        return tensor.detach()
    hook = getattr(module, "_hf_hook", None)
    weights = getattr(hook, "weights_map", None)
    if weights is None:
        raise RuntimeError(f"{module_name}.{attribute} is on the meta device and no offload hook holds its values")
    return weights[attribute].detach()
