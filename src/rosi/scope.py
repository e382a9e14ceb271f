"""Which residual writers to edit: every one, or only those whose edit term separates harmful
from harmless prompts.

Every rosi edit adds ``strength * (u . y) * s_hat`` to a writer's output ``y = W x``, with a
read-out vector ``u`` fixed by the method (:func:`readout`). Summed over the edited writers,
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
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from rosi.architecture import ResidualWriter, WriterKind
from rosi.errors import RosiError
from rosi.rank_one import probe_read

SCOPES = ("selective", "all")
DEFAULT_SCOPE = "selective"
DEFAULT_RATIO = 0.25
# Writer kinds whose module returns the writer's own output as [batch, seq, hidden].
MEASURABLE = (WriterKind.ATTENTION, WriterKind.MLP)
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

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "gap": self.gap}


def readout(method: str, s_hat: torch.Tensor) -> torch.Tensor:
    """``u`` with the edit adding ``strength * (u . W x) * s_hat``: ``s_hat`` for ``scale``,
    ``-s_hat`` for ``ablate``, and ``ones / d`` for ``rosi`` (``w_bar . x`` is the mean
    coordinate of ``W x``)."""
    if method == "scale":
        return s_hat
    if method == "ablate":
        return -s_hat
    if method == "rosi":
        return torch.full_like(s_hat, 1.0 / s_hat.numel())
    raise RosiError(f"unknown method {method!r}")


def measurable_writers(model: nn.Module, writers: list[ResidualWriter]) -> dict[str, nn.Module]:
    """The writers whose module output is the writer's own ``W x (+ b)``, by parameter name.
    (Fused expert stacks and the embedding are not: their outputs mix or index rows.)"""
    return {w.name: model.get_submodule(w.module) for w in writers if w.kind in MEASURABLE}


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
    return [w.name for w in writers if w.kind in MEASURABLE and w.layer is not None and lo <= w.layer < hi]


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
