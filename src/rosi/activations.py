"""Mean residual-stream activations at the post-instruction positions, for every layer.

Forward hooks on the decoder layers keep only the last ``n_positions`` tokens of each layer's
output and add them to float64 running sums; no full hidden states are ever held. Prompts are
left-padded with explicit position ids, so padding does not change the result.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from rosi.architecture import architecture_map
from rosi.chat import ChatFormat, check_suffix


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only, so a left-padded row matches its unpadded self."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward(module: nn.Module, batch: dict[str, torch.Tensor], **kwargs: object) -> object:
    """Run a model (or its decoder) on a left-padded batch with padding-proof positions, no cache."""
    return module(**batch, position_ids=position_ids(batch["attention_mask"]), use_cache=False, **kwargs)


def layer_output(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # type: ignore[index,return-value]


@contextmanager
def hooks(pairs: list[tuple[nn.Module, object]], *, pre: bool = False) -> Iterator[None]:
    """Register forward (or forward-pre) hooks for the duration of a block; always removed."""
    handles = [m.register_forward_pre_hook(fn) if pre else m.register_forward_hook(fn) for m, fn in pairs]  # type: ignore[arg-type]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def mean_outputs(
    model: nn.Module,
    fmt: ChatFormat,
    instructions: list[str] | tuple[str, ...],
    n_positions: int,
    modules: Mapping[str, nn.Module],
    *,
    inputs: Mapping[str, nn.Module] | None = None,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "activations",
) -> dict[str, torch.Tensor]:
    """float64 ``[n_positions, hidden]`` per named module: the mean of its output at each of the
    last ``n_positions`` prompt tokens; for the modules named in ``inputs`` (names must differ
    from those in ``modules``), the mean of their input instead. One pass over the prompts
    serves every module."""
    device = next(model.parameters()).device
    sums: dict[str, torch.Tensor] = {}
    suffix = fmt.post_instruction_ids()

    inputs = inputs or {}
    clash = set(inputs) & set(modules)
    if clash:
        raise ValueError(f"name {sorted(clash)[0]!r} is used for an output and an input")

    def add(name: str, value: torch.Tensor) -> None:
        part = value[:, -n_positions:, :].to(torch.float64).sum(dim=0)
        sums[name] = part if name not in sums else sums[name] + part

    def keep(name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            add(name, layer_output(output))

        return hook

    def keep_input(name: str):
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            add(name, args[0])

        return hook

    with (
        hooks([(module, keep(name)) for name, module in modules.items()]),
        hooks([(module, keep_input(name)) for name, module in inputs.items()], pre=True),
    ):
        n_batches = -(-len(instructions) // batch_size)
        for batch in tqdm(fmt.batches(instructions, batch_size, device), total=n_batches, desc=desc, unit="batch", disable=not progress):
            check_suffix(batch, suffix[-n_positions:])
            forward(model.base_model, batch)
    missing = [name for name in (*modules, *inputs) if name not in sums]
    if missing:
        raise RuntimeError(f"module {missing[0]!r} never ran in the forward pass")
    return {name: (sums[name] / len(instructions)).cpu() for name in (*modules, *inputs)}


def mean_activations(
    model: nn.Module,
    fmt: ChatFormat,
    instructions: list[str] | tuple[str, ...],
    n_positions: int,
    *,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "activations",
) -> torch.Tensor:
    """float64 tensor ``[num_layers, n_positions, hidden]``: the mean output of each layer at
    each of the last ``n_positions`` prompt tokens."""
    layers = architecture_map(model).layer_modules(model)
    means = mean_outputs(
        model,
        fmt,
        instructions,
        n_positions,
        {str(i): m for i, m in enumerate(layers)},
        batch_size=batch_size,
        progress=progress,
        desc=desc,
    )
    return torch.stack([means[str(i)] for i in range(len(layers))])


@torch.no_grad()
def activations_at(
    model: nn.Module, fmt: ChatFormat, instructions: list[str] | tuple[str, ...], layer: int, position: int, *, batch_size: int = 32
) -> torch.Tensor:
    """float32 ``[n, hidden]``: each prompt's residual stream after ``layer`` at ``position`` (negative)."""
    arch = architecture_map(model)
    module = arch.layer_modules(model)[layer]
    device = next(model.parameters()).device
    rows: list[torch.Tensor] = []

    def keep(m: nn.Module, args: object, output: object) -> None:
        rows.append(layer_output(output)[:, position, :].float().cpu())

    with hooks([(module, keep)]):
        for batch in fmt.batches(instructions, batch_size, device):
            forward(model.base_model, batch)
    return torch.cat(rows)
