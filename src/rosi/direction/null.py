"""The direction a model's writers no longer write along: the signature of abliteration.

Abliteration projects a direction ``r`` out of every residual writer, ``W' = (I - r r^T) W``, so
``r^T W' = 0`` for all of them: ``r`` is then an eigenvector, with eigenvalue zero (to rounding),
of the writers' Gram matrix ::

    G = sum_w  W_w W_w^T / |W_w|_F^2        ([hidden, hidden]; each writer weighs the same)

In an ordinary model the smallest eigenvalues of ``G`` form a continuum (Qwen2.5-Coder-0.5B-Instruct:
``lambda_0 / lambda_1 = 0.94``); after rosi's own ablation of its refusal direction from every
writer ``lambda_0 / lambda_1`` is ``1e-12`` in float32 weights, and the eigenvector is the ablated
direction to a cosine of 0.99999995. :func:`null_direction` finds it; :func:`write_ratio` and
:func:`layer_profile` say how much each writer or layer writes along a direction against the
average direction (1 for a direction written as much as a random one, 0 for one never written).

The math is in small functions on tensors; :func:`writer_matrices` reads the matrices of a loaded
model one at a time (``[out, in]`` float64 views, the embedding's Gram accumulated in row blocks,
so no float64 copy of a large vocabulary is ever held).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from rosi.model.architecture import ArchitectureMap
from rosi.model.hooks import stored_weight
from rosi.model.writers import ResidualWriter

# A smallest eigenvalue at most this share of the next one is isolated: one direction the
# writers do not write along, where an ordinary model has a continuum.
ISOLATED = 0.05
# The null direction has no layer of its own: where a layer is needed (the length of the gap
# re-alignment scales its edit by, the refusal direction an audit compares with), rosi reads the
# difference of means at this share of the depth (layer 14 of 24 on Qwen2.5-Coder-0.5B, where
# rosi's selection finds the base model's direction).
GAP_DEPTH = 0.6
ROW_BLOCK = 8192  # embedding rows per block when accumulating its Gram matrix


def gram(weight: torch.Tensor) -> torch.Tensor:
    """``W W^T / |W|_F^2`` (float64) of an ``[out, in]`` matrix or a stack ``[n, out, in]`` (summed)."""
    w = weight.detach().to(torch.float64)
    g = torch.einsum("...oi,...pi->op", w, w)
    total = float(g.trace())
    return g / total if total > 0 else g


def writer_gram(grams: Iterable[torch.Tensor]) -> torch.Tensor:
    """The sum of the writers' normalised Gram matrices."""
    total: torch.Tensor | None = None
    for g in grams:
        total = g.clone() if total is None else total + g
    if total is None:
        raise ValueError("no writer matrices")
    return total


@dataclass(frozen=True)
class NullDirection:
    """The writers' least-written direction. ``relative`` is its eigenvalue over the mean
    eigenvalue (the squared write ratio averaged over writers); ``isolation`` is its eigenvalue
    over the next one: small means a direction was taken out of every writer."""

    vector: torch.Tensor  # float32 unit [hidden]; its sign is arbitrary
    relative: float
    isolation: float

    @property
    def found(self) -> bool:
        return self.isolation <= ISOLATED

    def to_json(self) -> dict[str, float | bool]:
        return {"relative_eigenvalue": self.relative, "isolation": self.isolation, "found": self.found}


def null_direction(total_gram: torch.Tensor) -> NullDirection:
    """The eigenvector of the smallest eigenvalue of ``total_gram`` (see :func:`writer_gram`)."""
    values, vectors = torch.linalg.eigh(total_gram.to(torch.float64))
    mean = float(values.mean())
    lo, next_lo = max(float(values[0]), 0.0), float(values[1])
    isolation = lo / next_lo if next_lo > 0 else 1.0
    return NullDirection(vectors[:, 0].to(torch.float32).contiguous(), lo / mean if mean > 0 else 0.0, isolation)


def write_ratio(g: torch.Tensor, d: torch.Tensor) -> float:
    """``|d^T W| sqrt(hidden) / |W|_F`` from the normalised Gram ``g`` of ``W`` and a unit ``d``:
    1 on average over random unit directions, 0 for a direction ``W`` never writes."""
    d64 = d.to(torch.float64)
    d64 = d64 / d64.norm()
    return float((d64 @ g @ d64).clamp(min=0).sqrt() * g.shape[0] ** 0.5)


def layer_profile(grams: Mapping[str, tuple[int | None, torch.Tensor]], d: torch.Tensor) -> dict[int | None, float]:
    """Per layer (``None``: the embedding), the write ratio of its writers together along ``d``:
    ``sqrt(mean over the layer's writers of write_ratio^2)``."""
    sums: dict[int | None, list[float]] = {}
    for layer, g in grams.values():
        sums.setdefault(layer, []).append(write_ratio(g, d) ** 2)
    return {layer: (sum(v) / len(v)) ** 0.5 for layer, v in sums.items()}


def random_profiles(grams: Mapping[str, tuple[int | None, torch.Tensor]], n: int = 32, seed: int = 0) -> list[dict[int | None, float]]:
    """:func:`layer_profile` along ``n`` random unit directions (seeded): the reference a
    direction's profile is compared with."""
    hidden = next(iter(grams.values()))[1].shape[0]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        d = torch.randn(hidden, generator=gen, dtype=torch.float64)
        out.append(layer_profile(grams, d / d.norm()))
    return out


def writer_grams(
    model: nn.Module, arch: ArchitectureMap, writers: Iterable[ResidualWriter] | None = None
) -> dict[str, tuple[int | None, torch.Tensor]]:
    """Every residual writer's normalised Gram matrix, by parameter name, with its layer."""
    return {w.name: (w.layer, g) for w, g in _grams(model, writers if writers is not None else arch.writers)}


def _grams(model: nn.Module, writers: Iterable[ResidualWriter]) -> Iterator[tuple[ResidualWriter, torch.Tensor]]:
    for w in writers:
        weight = stored_weight(model, w.module, w.name.rsplit(".", 1)[1])
        yield w, _gram_in_blocks(w.layout.as_out_in(weight.detach()))


def _gram_in_blocks(weight: torch.Tensor) -> torch.Tensor:
    """:func:`gram` of ``[out, in]`` (or a stack), over blocks of ``in`` columns (an embedding's
    vocabulary), so only one float64 block is held at a time."""
    if weight.ndim == 2 and weight.shape[-1] > ROW_BLOCK:
        total = torch.zeros(weight.shape[0], weight.shape[0], dtype=torch.float64)
        for start in range(0, weight.shape[1], ROW_BLOCK):
            block = weight[:, start : start + ROW_BLOCK].to(device="cpu", dtype=torch.float64)
            total += block @ block.T
        trace = float(total.trace())
        return total / trace if trace > 0 else total
    return gram(weight.to(device="cpu"))


@dataclass(frozen=True)
class Ablation:
    """A direction taken out of the writers of some layers: each of those layers' writers has it
    as an isolated null direction, and they agree on it (``agreement``: the smallest ``|cos|`` of
    a layer's null direction with the shared one)."""

    vector: torch.Tensor  # float32 unit [hidden]; sign arbitrary
    layers: tuple[int | None, ...]  # None: the embedding
    agreement: float

    def to_json(self) -> dict[str, object]:
        return {"layers": ["embedding" if k is None else k for k in self.layers], "agreement": self.agreement}


AGREE = 0.9  # layers whose null directions agree at least this well took out the same direction


def layer_nulls(grams: Mapping[str, tuple[int | None, torch.Tensor]]) -> dict[int | None, NullDirection]:
    """Each layer's own least-written direction (its writers' summed Gram; ``None``: the embedding)."""
    by_layer: dict[int | None, list[torch.Tensor]] = {}
    for layer, g in grams.values():
        by_layer.setdefault(layer, []).append(g)
    return {layer: null_direction(writer_gram(gs)) for layer, gs in by_layer.items()}


def find_ablation(grams: Mapping[str, tuple[int | None, torch.Tensor]]) -> Ablation | None:
    """The direction taken out of every writer (the whole model's isolated null direction) or,
    failing that, out of the writers of at least two layers that agree on it; None if neither."""
    total = null_direction(writer_gram(g for _, g in grams.values()))
    nulls = layer_nulls(grams)
    if total.found:
        shared, layers = total.vector, [k for k, n in nulls.items() if n.found]
    else:
        layers = [k for k, n in nulls.items() if n.found]
        if len(layers) < 2:
            return None
        shared = null_direction(writer_gram(g for k, g in grams.values() if k in layers)).vector
    agreeing = [k for k in layers if abs(float(nulls[k].vector @ shared)) >= AGREE]
    if not total.found and len(agreeing) < 2:
        return None
    agreement = min((abs(float(nulls[k].vector @ shared)) for k in agreeing), default=1.0)
    ordered = tuple(sorted(agreeing, key=lambda k: -1 if k is None else k))
    return Ablation(shared, ordered, agreement)
