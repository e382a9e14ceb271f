"""Mean activations at the post-instruction positions, in one pass over the prompts.

Forward hooks keep only the last ``n_positions`` tokens of what each hooked module writes (or,
for forward-pre hooks, reads) and add them to float64 running sums; no full hidden states are
ever held. Prompts are left-padded with explicit position ids, so padding and batch size do not
change the result.

:func:`collect_activations` gathers what a run needs, as an :class:`Activations` value: every
decoder layer's output (the residual stream the direction is read from) and, in the same passes,
the outputs of the measurable residual writers (for choosing which to edit) and optionally their
inputs (for read-out methods such as ``probe``).

:func:`collect_samples` keeps single prompts instead of means, at one position only: each chosen
writer's input and each decoder layer's output per prompt, for harmful, harmless and look-alike
prompts (a :class:`PromptSamples`), so read-outs can be fit to the prompts (``gate``) rather than
to two means. Its memory is ``prompts * (sum of the writers' input sizes + layers * hidden) * 4``
bytes (:meth:`PromptSamples.nbytes`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from rosi.model.architecture import architecture_map
from rosi.model.chat import ChatFormat, check_suffix
from rosi.model.costs import count_forward
from rosi.model.generation import prompt_batches
from rosi.model.hooks import Hook, device_of, forward, hooks, layer_output
from rosi.model.writers import CausalLM


@dataclass(frozen=True)
class Activations:
    """Mean activations of one prompt set (float64, on the CPU). Positions index the last
    ``positions`` prompt tokens: ``-1`` is the last."""

    n_prompts: int
    layers: torch.Tensor  # [num_layers, positions, hidden]: each decoder layer's output
    writer_outputs: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter name -> [positions, hidden]
    writer_inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter name -> [positions, in]

    @property
    def positions(self) -> int:
        return int(self.layers.shape[1])

    def outputs_at(self, position: int) -> dict[str, torch.Tensor]:
        """Each measured writer's mean output at one position (``[hidden]``)."""
        return {name: v[self._index(position)] for name, v in self.writer_outputs.items()}

    def inputs_at(self, position: int) -> dict[str, torch.Tensor]:
        """Each measured writer's mean input at one position (``[in]``); empty unless inputs were read."""
        return {name: v[self._index(position)] for name, v in self.writer_inputs.items()}

    def _index(self, position: int) -> int:
        if not -self.positions <= position < 0:
            raise IndexError(f"position {position} is outside the {self.positions} measured positions (-{self.positions}..-1)")
        return position + self.positions


@dataclass(frozen=True)
class ActivationPair:
    """The harmful and the harmless prompts' :class:`Activations`, measured the same way."""

    harmful: Activations
    harmless: Activations

    def differences(self) -> torch.Tensor:
        """float64 ``[num_layers, positions, hidden]``: every candidate direction, harmful minus harmless."""
        return self.harmful.layers - self.harmless.layers

    def direction_at(self, layer: int, position: int) -> torch.Tensor:
        """The difference of means at one (layer, position), float32."""
        index = self.harmful._index(position)
        return (self.harmful.layers[layer, index] - self.harmless.layers[layer, index]).float()


def collect_activations(
    model: CausalLM,
    fmt: ChatFormat,
    instructions: Sequence[str],
    n_positions: int,
    *,
    writers: Mapping[str, nn.Module] | None = None,
    read_inputs: bool = False,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "activations",
) -> Activations:
    """The mean output of every decoder layer and of each of ``writers`` (parameter name ->
    module), and with ``read_inputs`` the writers' mean inputs, at the last ``n_positions``
    prompt tokens."""
    return _collect_activations(model, fmt, instructions, n_positions, dict(writers or {}), read_inputs, batch_size, progress, desc, ())


def _collect_activations(
    model: CausalLM,
    fmt: ChatFormat,
    instructions: Sequence[str],
    n_positions: int,
    writers: Mapping[str, nn.Module],
    read_inputs: bool,
    batch_size: int,
    progress: bool,
    desc: str,
    extra: Sequence[_Tap],
) -> Activations:
    """:func:`collect_activations`, with ``extra`` taps served by the same pass."""
    layer_modules = list(architecture_map(model).layer_modules(model))
    outputs, inputs = _hooked_means(
        model,
        fmt,
        instructions,
        n_positions,
        [*layer_modules, *writers.values()],
        list(writers.values()) if read_inputs else [],
        batch_size=batch_size,
        progress=progress,
        desc=desc,
        extra=extra,
    )
    n_layers = len(layer_modules)
    return Activations(
        n_prompts=len(instructions),
        layers=torch.stack(outputs[:n_layers]),
        writer_outputs=dict(zip(writers, outputs[n_layers:], strict=True)),
        writer_inputs=dict(zip(writers, inputs, strict=True)) if read_inputs else {},
    )


def mean_outputs(
    model: CausalLM,
    fmt: ChatFormat,
    instructions: Sequence[str],
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
    from those in ``modules``), the mean of their input instead. One pass serves every module."""
    inputs = inputs or {}
    clash = set(inputs) & set(modules)
    if clash:
        raise ValueError(f"name {sorted(clash)[0]!r} is used for an output and an input")
    outs, ins = _hooked_means(
        model,
        fmt,
        instructions,
        n_positions,
        list(modules.values()),
        list(inputs.values()),
        batch_size=batch_size,
        progress=progress,
        desc=desc,
    )
    return {**dict(zip(modules, outs, strict=True)), **dict(zip(inputs, ins, strict=True))}


def mean_activations(
    model: CausalLM, fmt: ChatFormat, instructions: Sequence[str], n_positions: int, *, batch_size: int = 32, progress: bool = False
) -> torch.Tensor:
    """float64 ``[num_layers, n_positions, hidden]``: the mean output of each decoder layer at
    each of the last ``n_positions`` prompt tokens."""
    return collect_activations(model, fmt, instructions, n_positions, batch_size=batch_size, progress=progress).layers


def _hooked_means(
    model: CausalLM,
    fmt: ChatFormat,
    instructions: Sequence[str],
    n_positions: int,
    outputs: Sequence[nn.Module],
    inputs: Sequence[nn.Module],
    *,
    batch_size: int,
    progress: bool,
    desc: str,
    extra: Sequence[_Tap] = (),
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Mean outputs of ``outputs`` and mean inputs of ``inputs`` (float64 ``[n_positions, dim]``,
    on the CPU), in the order given; the ``extra`` taps served by the same pass."""
    out_sums, in_sums = [_Sums(n_positions) for _ in outputs], [_Sums(n_positions) for _ in inputs]
    taps = [_Tap(m, False, s.add) for m, s in zip(outputs, out_sums, strict=True)]
    taps += [_Tap(m, True, s.add) for m, s in zip(inputs, in_sums, strict=True)]
    taps += extra
    _hooked_pass(model, fmt, instructions, n_positions, taps, batch_size=batch_size, progress=progress, desc=desc)
    n = len(instructions)
    return [s.mean(n) for s in out_sums], [s.mean(n) for s in in_sums]


@dataclass(frozen=True)
class _Tap:
    """What a hooked pass keeps of one module: its output, or (``reads``) its input, handed to ``keep``."""

    module: nn.Module
    reads: bool
    keep: Callable[[torch.Tensor], None]


class _Sums:
    """A float64 running sum over prompts of the last ``n_positions`` tokens of what a tap sees."""

    def __init__(self, n_positions: int) -> None:
        self.n_positions = n_positions
        self.total: torch.Tensor | None = None

    def add(self, value: torch.Tensor) -> None:
        part = value[:, -self.n_positions :, :].to(torch.float64).sum(dim=0)
        self.total = part if self.total is None else self.total + part

    def mean(self, n: int) -> torch.Tensor:
        if self.total is None:
            raise RuntimeError("a hooked module never ran in the forward pass")
        return (self.total / n).cpu()


class _Rows:
    """Each of ``n`` prompts' value at one (negative) position, float32 on the CPU, written into one
    tensor allocated at the first batch (kept rows allocated batch by batch, between a long
    prompt batch's large temporaries, fragmented the heap: a float32 realign grew by gigabytes)."""

    def __init__(self, position: int, n: int) -> None:
        self.position, self.n, self.filled = position, n, 0
        self.out: torch.Tensor | None = None

    def add(self, value: torch.Tensor) -> None:
        row = value[:, self.position, :]
        if self.out is None:
            self.out = torch.empty(self.n, row.shape[-1], dtype=torch.float32)
        self.out[self.filled : self.filled + row.shape[0]].copy_(row)
        self.filled += row.shape[0]

    def rows(self) -> torch.Tensor:
        if self.out is None or self.filled != self.n:
            raise RuntimeError(f"a hooked module saw {self.filled} of {self.n} prompts")
        return self.out


@torch.no_grad()
def _hooked_pass(
    model: CausalLM,
    fmt: ChatFormat,
    instructions: Sequence[str],
    own: int,
    taps: Sequence[_Tap],
    *,
    batch_size: int,
    progress: bool,
    desc: str,
) -> None:
    """One forward pass over ``instructions`` that hands every tap what its module writes (or
    reads), batch by batch; the last ``own`` tokens (the positions read) are every row's own."""
    suffix = fmt.post_instruction_ids()
    n_batches = -(-len(instructions) // batch_size)
    # the chat template's shared system turn once (before the hooks: only the read positions count)
    batches = prompt_batches(model, fmt, instructions, batch_size, device_of(model), own=own)
    outputs = [(t.module, _output_hook(t.keep)) for t in taps if not t.reads]
    inputs = [(t.module, _input_hook(t.keep)) for t in taps if t.reads]
    with hooks(outputs), hooks(inputs, pre=True):
        for batch in tqdm(batches, total=n_batches, desc=desc, unit="batch", disable=not progress):
            check_suffix(batch, suffix[-own:])
            forward(model.base_model, batch)
            count_forward()


def _output_hook(keep: Callable[[torch.Tensor], None]) -> Hook:
    return lambda module, args, output: keep(layer_output(output))


def _input_hook(keep: Callable[[torch.Tensor], None]) -> Hook:
    return lambda module, args: keep(args[0])


def _at(value: torch.Tensor, position: int) -> torch.Tensor:
    """float32 ``[batch, dim]`` on the CPU: ``value`` at ``position``, always a copy (a float32 CPU
    slice would be a view that keeps the whole batch's activations alive with it)."""
    return value[:, position, :].to("cpu", torch.float32, copy=True)


@torch.no_grad()
def activations_at(
    model: CausalLM, fmt: ChatFormat, instructions: Sequence[str], layer: int, position: int, *, batch_size: int = 32
) -> torch.Tensor:
    """float32 ``[n, hidden]``: each prompt's residual stream after ``layer`` at ``position`` (negative)."""
    module = architecture_map(model).layer_modules(model)[layer]
    rows: list[torch.Tensor] = []

    def keep(m: nn.Module, args: object, output: object) -> None:
        rows.append(_at(layer_output(output), position))

    with hooks([(module, keep)]):
        for batch in fmt.batches(instructions, batch_size, device_of(model)):
            forward(model.base_model, batch)
    return torch.cat(rows)


SAMPLE_ROLES = ("harmful", "harmless", "lookalike")


def layer_key(layer: int) -> str:
    """The key of a decoder layer's output in :class:`PromptSamples`."""
    return f"layer.{layer}"


@dataclass(frozen=True)
class PromptSamples:
    """Single prompts' activations at one position (float32 ``[n, dim]`` on the CPU), per role
    (``harmful``, ``harmless``, ``lookalike``): the inputs of chosen writers (keyed by parameter
    name) and every decoder layer's output (keyed by :func:`layer_key`)."""

    position: int
    roles: dict[str, dict[str, torch.Tensor]]

    def __post_init__(self) -> None:
        missing = [r for r in SAMPLE_ROLES if r not in self.roles]
        if missing:
            raise ValueError(f"prompt samples need the roles {', '.join(SAMPLE_ROLES)}; missing {', '.join(missing)}")

    def get(self, role: str, key: str) -> torch.Tensor:
        return self.roles[role][key]

    def writers(self) -> list[str]:
        """The writers whose inputs were kept."""
        return [k for k in self.roles["harmful"] if not k.startswith("layer.")]

    def count(self, role: str) -> int:
        return int(next(iter(self.roles[role].values())).shape[0])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for values in self.roles.values() for t in values.values())


def collect_samples(
    model: CausalLM,
    fmt: ChatFormat,
    sets: Mapping[str, Sequence[str]],
    position: int,
    writers: Mapping[str, nn.Module],
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> PromptSamples:
    """Per prompt of each role in ``sets`` (every one of :data:`SAMPLE_ROLES`): the inputs of
    ``writers`` (parameter name -> module) and every decoder layer's output, at ``position``
    (negative, among the post-instruction tokens)."""
    return PromptSamples(position, collect_sample_rows(model, fmt, sets, position, writers, batch_size=batch_size, progress=progress))


def collect_sample_rows(
    model: CausalLM,
    fmt: ChatFormat,
    sets: Mapping[str, Sequence[str]],
    position: int,
    writers: Mapping[str, nn.Module],
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, dict[str, torch.Tensor]]:
    """What :func:`collect_samples` keeps, for any roles: role -> key -> float32 ``[n, dim]``."""
    suffix = fmt.post_instruction_ids()
    if not -len(suffix) <= position < 0:
        raise ValueError(f"position {position} is outside the post-instruction positions -{len(suffix)}..-1")
    layer_modules = list(architecture_map(model).layer_modules(model))
    roles = {}
    for role, instructions in sets.items():
        if not instructions:
            raise ValueError(f"no {role} prompts to take samples of")
        roles[role] = _samples_of(model, fmt, instructions, position, layer_modules, writers, batch_size, progress, f"rosi: {role} samples")
    return roles


def _samples_of(
    model: CausalLM,
    fmt: ChatFormat,
    instructions: Sequence[str],
    position: int,
    layer_modules: Sequence[nn.Module],
    writers: Mapping[str, nn.Module],
    batch_size: int,
    progress: bool,
    desc: str,
) -> dict[str, torch.Tensor]:
    rows = _sample_rows(layer_modules, writers, position, len(instructions))
    taps = _sample_taps(layer_modules, writers, rows)
    _hooked_pass(model, fmt, instructions, -position, taps, batch_size=batch_size, progress=progress, desc=desc)
    return {key: r.rows() for key, r in rows.items()}


def _sample_rows(layer_modules: Sequence[nn.Module], writers: Mapping[str, nn.Module], position: int, n: int) -> dict[str, _Rows]:
    return {key: _Rows(position, n) for key in [*(layer_key(i) for i in range(len(layer_modules))), *writers]}


def _sample_taps(layer_modules: Sequence[nn.Module], writers: Mapping[str, nn.Module], rows: Mapping[str, _Rows]) -> list[_Tap]:
    """Every decoder layer's output and each writer's input, into ``rows``."""
    taps = [_Tap(m, False, rows[layer_key(i)].add) for i, m in enumerate(layer_modules)]
    return taps + [_Tap(m, True, rows[name].add) for name, m in writers.items()]


@torch.no_grad()
def collect_means_and_samples(
    model: CausalLM,
    fmt: ChatFormat,
    instructions: Sequence[str],
    n_positions: int,
    position: int,
    *,
    writers: Mapping[str, nn.Module],
    sampled: Mapping[str, nn.Module],
    read_inputs: bool = False,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "activations",
) -> tuple[Activations, dict[str, torch.Tensor]]:
    """:func:`collect_activations` and, in the same pass, what :func:`collect_samples` keeps of
    each prompt (every layer's output and the inputs of ``sampled`` at ``position``): one read of
    the prompts where a workflow needs both and knows the position before it starts."""
    if not -n_positions <= position < 0:
        raise ValueError(f"position {position} is outside the {n_positions} measured positions (-{n_positions}..-1)")
    layer_modules = list(architecture_map(model).layer_modules(model))
    rows = _sample_rows(layer_modules, sampled, position, len(instructions))
    taps = _sample_taps(layer_modules, sampled, rows)
    activations = _collect_activations(model, fmt, instructions, n_positions, writers, read_inputs, batch_size, progress, desc, taps)
    return activations, {key: r.rows() for key, r in rows.items()}
