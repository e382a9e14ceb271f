"""Which residual writers to edit: every one, or only those whose edit term separates harmful
from harmless prompts.

Every rosi edit adds ``strength * (u . y) * s_hat`` to a writer's output ``y = W x``, with a
read-out vector ``u`` fixed by the method (:attr:`rosi.edit.methods.Method.output_readout`). Summed over the edited writers,
the push along ``s_hat`` that a prompt receives is ``strength * sum_l u . y_l``. The edit is only
as selective as that sum: a writer whose ``u . y`` is as large on harmless prompts as on harmful
ones pushes both towards refusal alike, and that is where over-refusal comes from.

:func:`writer_signals` takes the mean writer outputs at the direction's position (gathered in
the same forward passes as the direction itself) and gives each writer's mean ``u . y`` on
harmful and harmless prompts. :func:`select_writers` keeps the writers whose signal is higher
on harmful prompts and small on harmless ones: ``harmless <= ratio * (harmful - harmless)``.

The ``probe`` method is selective by construction: each writer's read-out ``u`` is measured so
that ``u . x`` is 0 at the mean harmless input and 1 at the mean harmful one
(:func:`rosi.rank_one.probe_read`). :func:`probe_writers` picks the writers it edits (the middle
of the model, where the refusal direction forms) and :func:`probe_reads` scales their read-outs
so that strength ``k`` adds, summed over those writers, ``k`` times the harmful-minus-harmless
gap of the direction at the mean harmful input.

``gate`` edits the same writers with read-outs fit on single prompts' inputs
(:func:`rosi.rank_one.gate_read`: about 1 on each harmful input, about 0 on each harmless and
look-alike one; :func:`gate_reads`), scaled like ``probe``'s. ``surgical`` adds the ablation of
the false-refusal direction at the direction's layer (:func:`rosi.rank_one.false_refusal_direction`).

:func:`choose_writers` puts it together for a direction and the activations extracted with it:
a :class:`WriterChoice`, what a run edits and why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from rosi.direction.activations import ActivationPair, PromptSamples, layer_key
from rosi.direction.tokens import TokenMoments
from rosi.direction.vector import Direction
from rosi.edit.methods import DEFAULT_RATIO, GATE_FIT, GATE_RIDGE, EditForm, SampleFit
from rosi.edit.rank_one import false_refusal_direction, gate_read_moments, probe_read
from rosi.errors import RosiError
from rosi.model.architecture import ArchitectureMap
from rosi.model.writers import ResidualWriter

# The probe method edits the writers of layers [lo, hi) as fractions of the depth: the layers the
# direction selection searches, where harmful and harmless inputs already differ.
PROBE_LAYERS = (0.25, 0.8)


@dataclass(frozen=True)
class WriterSignal:
    """Mean ``u . (W x)`` of one writer at the direction's position, on each prompt set."""

    name: str
    layer: int | None
    harmful: float
    harmless: float

    @property
    def gap(self) -> float:
        return self.harmful - self.harmless

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "gap": self.gap}


def module_biases(modules: Mapping[str, nn.Module]) -> dict[str, torch.Tensor | None]:
    return {name: getattr(m, "bias", None) for name, m in modules.items()}


def writer_signals(
    writers: list[ResidualWriter],
    means_harmful: Mapping[str, torch.Tensor],
    means_harmless: Mapping[str, torch.Tensor],
    u: torch.Tensor,
    biases: Mapping[str, torch.Tensor | None] | None = None,
) -> list[WriterSignal]:
    """Per measured writer, ``u . (mean output - bias)`` on harmful and harmless prompts (means
    already taken at the direction's position: ``[hidden]`` each, keyed by parameter name).
    Writers without means (not measurable) are left out."""
    biases = biases or {}
    u64 = u.to(torch.float64)
    out = []
    for w in writers:
        if w.name not in means_harmful:
            continue
        mh = means_harmful[w.name].to(torch.float64)
        bias = biases.get(w.name)
        b = torch.zeros_like(mh) if bias is None else bias.detach().to(torch.float64).cpu()
        h = float((mh - b) @ u64)
        n = float((means_harmless[w.name].to(torch.float64) - b) @ u64)
        out.append(WriterSignal(w.name, w.layer, h, n))
    return out


def select_writers(signals: list[WriterSignal], ratio: float = DEFAULT_RATIO) -> list[str]:
    """Names of the writers with ``gap > 0`` and ``harmless <= ratio * gap``."""
    if not ratio >= 0:
        raise RosiError(f"the writer ratio must be >= 0, got {ratio}")
    return [s.name for s in signals if s.gap > 0 and s.harmless <= ratio * s.gap]


def probe_layer_range(n_layers: int, fractions: tuple[float, float] = PROBE_LAYERS) -> tuple[int, int]:
    """Layers ``[floor(lo * n), floor(hi * n))`` of an ``n``-layer model, for fractions ``(lo, hi)``."""
    lo, hi = math.floor(fractions[0] * n_layers), math.floor(fractions[1] * n_layers)
    if not 0 <= lo < hi <= n_layers:
        raise RosiError(f"probe layers {fractions} select no layer of a {n_layers}-layer model")
    return lo, hi


def probe_writers(writers: list[ResidualWriter], layers: tuple[int, int]) -> list[str]:
    """Names of the measurable writers in layers ``[lo, hi)``."""
    lo, hi = layers
    return [w.name for w in writers if w.measurable and w.layer is not None and lo <= w.layer < hi]


def probe_reads(
    names: list[str], inputs_harmful: Mapping[str, torch.Tensor], inputs_harmless: Mapping[str, torch.Tensor], gap: float
) -> dict[str, torch.Tensor]:
    """Read-out vectors for the ``probe`` edit of the writers ``names``: :func:`probe_read` of
    each writer's mean inputs (at the direction's position), times ``gap / n``, ``n`` the number
    of writers kept. A writer whose harmful and harmless mean inputs are parallel (nothing to
    read) is left out."""
    unit_reads = {}
    for name in names:
        try:
            unit_reads[name] = probe_read(inputs_harmful[name], inputs_harmless[name])
        except ValueError:
            continue
    if not unit_reads:
        raise RosiError("the probe edit found no writer whose input tells harmful from harmless prompts apart; use --method scale")
    return {name: u * (gap / len(unit_reads)) for name, u in unit_reads.items()}


def gate_reads(
    names: list[str],
    samples: PromptSamples,
    gap: float,
    *,
    ridge: float = GATE_RIDGE,
    null_space: float | None = None,
    fit: SampleFit = GATE_FIT,
) -> dict[str, torch.Tensor]:
    """Read-out vectors for an edit fit on single prompts (``fit``: the method's
    :class:`~rosi.edit.methods.SampleFit`, e.g. ``gate``'s :func:`~rosi.edit.rank_one.gate_read` or ``neurons``'
    :func:`~rosi.edit.rank_one.neuron_read`) of the writers ``names``, fit on each writer's single-prompt inputs
    (harmful against harmless and look-alike), times ``gap / n`` as for ``probe``. A writer whose
    inputs the fit cannot separate is left out."""
    unit_reads = {}
    for name in names:
        harmful = samples.get("harmful", name)
        benign = torch.cat([samples.get("harmless", name), samples.get("lookalike", name)])
        try:
            unit_reads[name] = fit.read(harmful, benign, ridge, null_space)
        except ValueError:
            continue
    if not unit_reads:
        raise RosiError(f"the {fit.name} edit found no writer whose input tells harmful from benign prompts apart; use --method scale")
    return {name: u * (gap / len(unit_reads)) for name, u in unit_reads.items()}


def token_gate_reads(
    names: list[str], moments: TokenMoments, gap: float, *, ridge: float = GATE_RIDGE, null_space: float | None = None
) -> dict[str, torch.Tensor]:
    """Read-out vectors for the token-level ``gate`` fit of the writers ``names``
    (:func:`gate_read_moments` on each writer's :class:`TokenMoments` groups: harmful rows at the
    read positions against the benign prompts' rows there and every other token they and their
    replies hold), times ``gap / n`` as for ``probe``. A writer the fit cannot separate is left out."""
    unit_reads = {}
    for name in names:
        try:
            unit_reads[name] = gate_read_moments(moments.groups(name), ridge=ridge, null_space=null_space)
        except ValueError:
            continue
    if not unit_reads:
        raise RosiError("the token-level gate fit found no writer whose input tells harmful from benign tokens apart; use --method scale")
    return {name: u * (gap / len(unit_reads)) for name, u in unit_reads.items()}


def false_refusal(samples: PromptSamples, direction: Direction) -> Direction:
    """The false-refusal direction at the direction's layer (unit, orthogonal to it): mean
    look-alike minus mean harmless residual stream, from the samples."""
    if direction.layer is None:
        raise RosiError("the surgical edit needs the direction's layer; extract it with rosi (or pin --layer)")
    key = layer_key(direction.layer)
    try:
        f = false_refusal_direction(samples.get("lookalike", key).mean(0), samples.get("harmless", key).mean(0), direction.unit)
    except ValueError as e:
        raise RosiError(str(e)) from None
    return Direction(f, layer=direction.layer, position=samples.position, model=direction.model, metadata={"kind": "false-refusal"})


@dataclass(frozen=True)
class WriterChoice:
    """The writers one edit form edits for a direction: all of them, or those the rule keeps."""

    scope: str
    ratio: float | None
    writers: list[str] | None  # parameter names; None: every writer of the default targets
    signals: tuple[WriterSignal, ...] = ()
    note: str = ""
    # read-out methods only: the read-out vector of each edited writer (not part of the JSON report)
    reads: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    second: Direction | None = field(default=None, repr=False)  # rank-two methods: the second direction

    def to_json(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "ratio": self.ratio,
            "writers": self.writers,
            "signals": [s.to_json() for s in self.signals],
            "note": self.note,
        }


def choose_writers(
    model: nn.Module,
    arch: ArchitectureMap,
    direction: Direction,
    activations: ActivationPair,
    form: EditForm,
    samples: PromptSamples | None = None,
    moments: TokenMoments | None = None,
) -> WriterChoice:
    """All writers, or those :func:`select_writers` keeps, given the activations extracted at the
    direction's position. For read-out methods (``probe``): the writers of the middle layers
    (every measurable writer with scope ``all``) with their read-outs from the mean writer inputs;
    ``gate`` and ``surgical`` fit theirs on ``samples`` (single prompts at that position), or with
    ``form.tokens`` on ``moments`` (every token of the benign prompts and their replies)."""
    if direction.position is None:
        raise RosiError("choosing writers needs the direction's position; extract it with rosi (or pin --position)")
    position = direction.position
    if form.spec.samples:
        return _gate_choice(arch, direction, samples, form, moments)
    if form.spec.needs_reads:
        inputs_h, inputs_b = activations.harmful.inputs_at(position), activations.harmless.inputs_at(position)
        return _probe_choice(arch, direction, inputs_h, inputs_b, form)
    if form.scope == "all":
        return WriterChoice("all", None, None)
    writers = arch.select()
    modules = arch.measurable_modules(model)
    assert form.spec.output_readout is not None  # every method without reads has one
    u = form.spec.output_readout(direction.unit)
    outputs_h, outputs_b = activations.harmful.outputs_at(position), activations.harmless.outputs_at(position)
    signals = writer_signals(writers, outputs_h, outputs_b, u, module_biases(modules))
    kept = set(select_writers(signals, form.ratio))
    unmeasured = [w.name for w in writers if w.name not in modules]  # e.g. fused experts: edited as usual
    chosen = [w.name for w in writers if w.name in kept or w.name in unmeasured]
    if not chosen:
        return WriterChoice(
            "all", form.ratio, None, tuple(signals), f"no writer passed the selective rule at ratio {form.ratio}; edited all"
        )
    note = f"{len(kept)} of {len(signals)} measured writers kept" + (
        f", {len(unmeasured)} unmeasured writers edited as usual" if unmeasured else ""
    )
    return WriterChoice("selective", form.ratio, chosen, tuple(signals), note)


def _probe_choice(
    arch: ArchitectureMap, direction: Direction, inputs_h: dict[str, torch.Tensor], inputs_b: dict[str, torch.Tensor], form: EditForm
) -> WriterChoice:
    if not inputs_h:
        raise RosiError(f"the {form.method} method needs the writers' mean inputs: extract the direction with method={form.method!r}")
    writers = arch.select()
    if form.scope == "all":
        names = [w.name for w in writers if w.name in inputs_h]
        note = f"all {len(names)} measurable writers"
    else:
        names = probe_writers(writers, probe_layer_range(arch.num_layers))
        note = f"{len(names)} writers of the middle layers"
    reads = probe_reads(names, inputs_h, inputs_b, gap=float(direction.vector.float().norm()))
    if len(reads) < len(names):
        note += f", {len(names) - len(reads)} left out (their input does not separate the prompts)"
    return WriterChoice(form.scope, None, list(reads), note=note, reads=reads)


def _gate_choice(
    arch: ArchitectureMap, direction: Direction, samples: PromptSamples | None, form: EditForm, moments: TokenMoments | None = None
) -> WriterChoice:
    if form.tokens and moments is None:
        raise RosiError(f"the token-level {form.method} fit needs token moments: collect them (rosi run --fit-tokens does)")
    if samples is None:
        raise RosiError(f"the {form.method} method fits its read-outs on single prompts: collect samples (rosi run does)")
    if samples.position != direction.position:
        raise RosiError(f"the samples were taken at position {samples.position}, the direction is at {direction.position}")
    spec = form.spec
    writers = [w for w in arch.select() if not spec.writer_kinds or w.kind.value in spec.writer_kinds]
    kept = set(samples.writers()) if moments is None or not form.tokens else set(moments.writers)
    kinds = f" {'/'.join(spec.writer_kinds)}" if spec.writer_kinds else ""
    if form.scope == "all":
        names = [w.name for w in writers if w.name in kept]
        note = f"all {len(names)} measurable{kinds} writers"
    else:
        names = [n for n in probe_writers(writers, probe_layer_range(arch.num_layers)) if n in kept]
        note = f"{len(names)}{kinds} writers of the middle layers"
    if not names:
        raise RosiError(f"the samples hold no input of the writers the {form.method} edit ({form.scope}) needs")
    gap = float(direction.vector.float().norm())
    if form.tokens:
        assert moments is not None
        reads = token_gate_reads(names, moments, gap, ridge=form.ridge, null_space=form.null_space)
        counts = moments.counts()
        note += f"; fit on {counts['harmful']} harmful rows ({moments.read}) against {counts['benign_read']} + {counts['benign_tokens']} benign token rows"
    else:
        assert spec.fit is not None  # a form with samples has a fit
        reads = gate_reads(names, samples, gap, ridge=form.ridge, null_space=form.null_space, fit=spec.fit)
    if len(reads) < len(names):
        note += f", {len(names) - len(reads)} left out (the fit does not separate their inputs)"
    if spec.fit is not None and spec.fit.neurons:
        note += "; neurons read: " + neuron_counts(reads)
    second = false_refusal(samples, direction) if spec.rank == 2 else None
    return WriterChoice(form.scope, None, list(reads), note=note, reads=reads, second=second)


def neuron_counts(reads: Mapping[str, torch.Tensor]) -> str:
    """How many neurons each read-out reads (its non-zero coordinates), as ``min-max (median m)``."""
    counts = sorted(int((r != 0).sum()) for r in reads.values())
    return f"{counts[0]}-{counts[-1]} per writer (median {counts[len(counts) // 2]})" if counts else "none"
