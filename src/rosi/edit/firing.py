"""Where an edit fires: the push ``r . x_t`` it adds along ``s_hat`` at each token, by segment.

Every rosi edit adds ``(r . x_t) s_hat`` to a writer's output at *every* token ``t``: the system
prompt, the user's words, the template and every token of the reply. Summed over the edited
writers and taken on the unedited model, ``push_t = sum_w r_w . x_{w,t}`` is what the edit adds
at that token to first order. :func:`measure_firing` runs prompt sets (with replies
teacher-forced: the unedited model's own, or the edited model's) through the unedited model
with a hook on each edited matrix and collects ``push_t`` per set and per segment
(:data:`rosi.model.chat.SEGMENTS`): ``system`` (every token before the user's words),
``user``, ``template`` (the post-instruction tokens but the last), ``deciding`` (the last
prompt token, where the reply is decided) and ``reply``.

A :class:`Firing` summarises each (set, segment) by quantiles, in absolute terms and relative
to the harmful sets' median deciding push (the push that makes a harmful request refused): a
ratio near 1 on an ordinary request's token is a push as large as a harmful request gets where
it matters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from rosi.edit.record import EditRecord
from rosi.errors import RosiError
from rosi.model.chat import PAD, SEGMENTS, ChatFormat, labelled_batch
from rosi.model.hooks import device_of, forward, hooks
from rosi.model.writers import CausalLM, WriterKind

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


@dataclass(frozen=True)
class SegmentPush:
    """The pushes of one (prompt set, segment): how many tokens, their mean and quantiles."""

    n: int
    mean: float
    quantiles: dict[str, float]  # "p10", "p25", "p50", "p75", "p90"

    @classmethod
    def of(cls, values: torch.Tensor) -> SegmentPush:
        v = values.to(torch.float64)
        if v.numel() == 0:
            return cls(0, float("nan"), {f"p{round(q * 100)}": float("nan") for q in QUANTILES})
        qs = torch.quantile(v, torch.tensor(QUANTILES, dtype=torch.float64))
        return cls(int(v.numel()), float(v.mean()), {f"p{round(q * 100)}": float(x) for q, x in zip(QUANTILES, qs, strict=True)})

    @property
    def median(self) -> float:
        return self.quantiles["p50"]

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, **self.quantiles}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SegmentPush:
        return cls(int(data["n"]), float(data["mean"]), {f"p{round(q * 100)}": float(data[f"p{round(q * 100)}"]) for q in QUANTILES})


@dataclass(frozen=True)
class Firing:
    """Per prompt set and segment, the edit's push (:class:`SegmentPush`); ``reference``: the
    median deciding-token push over the harmful sets (every set whose name starts with
    ``harmful``), the unit of the relative figures."""

    sets: dict[str, dict[str, SegmentPush]]
    reference: float
    replies: str  # whose replies were teacher-forced: "base", "edited" or "none"

    def relative(self, set_name: str, segment: str, quantile: str = "p50") -> float:
        return self.sets[set_name][segment].quantiles[quantile] / self.reference

    def table(self) -> str:
        """Median / 90th percentile of each set's push per segment, relative to the reference."""
        head = f"{'prompts':24}" + "".join(f"{s:>16}" for s in SEGMENTS)
        lines = [head]
        for name, segs in self.sets.items():
            cells = []
            for s in SEGMENTS:
                p = segs.get(s)
                cells.append(
                    "-" if p is None or p.n == 0 else f"{p.median / self.reference:+.2f} / {p.quantiles['p90'] / self.reference:+.2f}"
                )
            lines.append(f"{name:24}" + "".join(f"{c:>16}" for c in cells))
        lines.append(f"push r.x per token, median / 90th percentile, in units of the harmful deciding median ({self.reference:.3g})")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "replies": self.replies,
            "sets": {name: {s: p.to_json() for s, p in segs.items()} for name, segs in self.sets.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Firing:
        sets = {name: {s: SegmentPush.from_json(p) for s, p in segs.items()} for name, segs in data["sets"].items()}
        return cls(sets, float(data["reference"]), str(data["replies"]))


@dataclass(frozen=True)
class Read:
    """One edited matrix as the probe sees it: the module whose input it reads, the right factor
    ``r`` (``[in]``) and whether the input is token ids (an embedding) rather than a vector."""

    module: nn.Module
    right: torch.Tensor
    ids: bool = False


def record_reads(model: nn.Module, record: EditRecord) -> list[Read]:
    """The :class:`Read` of each matrix of an edit record, on ``model``'s modules. Fused expert
    stacks (a factor per expert) are refused."""
    out = []
    for m in record.matrices:
        if m.right.ndim != 1:
            raise RosiError(f"{m.name}: the firing probe reads single matrices, not fused expert stacks")
        out.append(Read(model.get_submodule(m.name.rsplit(".", 1)[0]), m.right, m.kind == WriterKind.EMBEDDING))
    return out


@torch.no_grad()
def token_pushes(
    model: CausalLM,
    fmt: ChatFormat,
    reads: Sequence[Read],
    instructions: Sequence[str],
    replies: Sequence[Sequence[int]] | None = None,
    *,
    batch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every token's push (float64) and its segment label (:data:`rosi.model.chat.SEGMENTS`
    index + 1), for prompts with their ``replies`` teacher-forced, on ``model`` as it is (pass
    the unedited model: the push is the edit's first-order effect there)."""
    device = device_of(model)
    total: list[torch.Tensor] = []

    def add(right: torch.Tensor, ids: bool):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0]
            r = right.to(x.device)
            push = r[x] if ids else x.to(torch.float32) @ r
            total[-1] += push.to(torch.float64).cpu()

        return hook

    values, labels = [], []
    with hooks([(r.module, add(r.right, r.ids)) for r in reads], pre=True):
        for start in range(0, len(instructions), batch_size):
            part = replies[start : start + batch_size] if replies is not None else None
            batch, lab = labelled_batch(fmt, instructions[start : start + batch_size], part, device)
            total.append(torch.zeros(lab.shape, dtype=torch.float64))
            forward(model.base_model, batch)
            keep = lab != PAD
            values.append(total[-1][keep])
            labels.append(lab[keep])
    return torch.cat(values), torch.cat(labels)


def measure_firing(
    model: CausalLM,
    fmt: ChatFormat,
    edit: EditRecord | Sequence[Read],
    sets: Mapping[str, Sequence[str]],
    replies: Mapping[str, Sequence[Sequence[int]]] | None = None,
    *,
    whose: str = "base",
    batch_size: int = 16,
    progress: bool = False,
) -> Firing:
    """The :class:`Firing` of ``edit`` (an edit record, or the :class:`Read` of each edited
    matrix) on each prompt set of ``sets`` (at least one named ``harmful...``), with
    ``replies[set]`` teacher-forced where given (``whose`` says whose they are: ``base``,
    ``edited``), on ``model``: the unedited model."""
    reads = record_reads(model, edit) if isinstance(edit, EditRecord) else list(edit)
    harmful = [name for name in sets if name.startswith("harmful")]
    if not harmful:
        raise RosiError("the firing probe needs a harmful prompt set (a set named harmful...) for its reference")
    out: dict[str, dict[str, SegmentPush]] = {}
    deciding: list[torch.Tensor] = []
    for name in tqdm(list(sets), desc="rosi: firing probe", unit="set", disable=not progress):
        values, labels = token_pushes(model, fmt, reads, sets[name], None if replies is None else replies.get(name), batch_size=batch_size)
        out[name] = {seg: SegmentPush.of(values[labels == i + 1]) for i, seg in enumerate(SEGMENTS)}
        if name in harmful:
            deciding.append(values[labels == SEGMENTS.index("deciding") + 1])
    reference = float(torch.quantile(torch.cat(deciding).to(torch.float64), 0.5))
    if not reference > 0:
        raise RosiError(
            f"the edit's median push at the harmful prompts' deciding token is {reference:.3g}, not positive: it does not fire on harm"
        )
    return Firing(out, reference, whose if replies is not None else "none")
