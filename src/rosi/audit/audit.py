"""``rosi audit``: what was done to a model one did not make.

Without a base, from the model alone:

- its writers' least-written direction (:mod:`rosi.direction.null`) and how much each layer's
  writers write along it against random directions: a direction taken out of every writer (the
  signature of abliteration) shows as layers that write it tens to thousands of times less;
- its own refusal direction (the difference of means of rosi's built-in harmful and harmless
  prompts at :data:`rosi.direction.null.GAP_DEPTH` of the depth, last prompt token, or a given
  direction file) and the same per-layer profile: an addition along it (ROSI) shows as layers
  that write it several times more than a random direction.

With a base: every changed matrix, the rank of its change, the left direction the changes share
(:mod:`rosi.audit.changes`), its cosine with the base's refusal direction (the best over the
base's layers), and whether the edit removes or adds along it; an edit record, if the model has
one, is checked against the weights. An edit that adds along the shared direction is probed for
where it fires (:mod:`rosi.edit.firing`): the push ``c^T (W' - W) x_t`` it adds at every token of
rosi's built-in validation prompts (harmful, harmless, look-alike) and of the base model's own
replies, by segment, relative to the harmful prompts' push at the deciding token; read from the
weights alone, so it works for edits rosi did not make.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rosi.audit.changes import MatrixChange, matrix_change, shared_direction, write_change
from rosi.direction.activations import ActivationPair, collect_activations
from rosi.direction.null import (
    GAP_DEPTH,
    Ablation,
    NullDirection,
    find_ablation,
    layer_profile,
    null_direction,
    random_profiles,
    writer_gram,
    writer_grams,
)
from rosi.direction.vector import Direction
from rosi.edit.firing import Read, measure_firing
from rosi.errors import RosiError
from rosi.model.chat import ChatFormat
from rosi.model.generation import generate_replies
from rosi.model.hooks import stored_weight
from rosi.model.loading import LoadedModel
from rosi.prompts import builtin

FLAG_BELOW = 0.1  # a layer writing a direction at most this share of a random one's has had it removed
FLAG_ABOVE = 2.0  # ... at least this many times a random one's has had it added
N_RANDOM = 32
N_PROMPTS = 64  # built-in prompts per set for the refusal direction
FIRING_PROMPTS = 32  # built-in validation prompts per set for the firing probe
FIRING_TOKENS = 64  # new tokens of the base model's replies the probe teacher-forces


@dataclass(frozen=True)
class Profile:
    """Per layer (``None``: the embedding): the write ratio along a direction, and the median
    and 5th/95th percentiles over random directions."""

    name: str
    ratio: dict[int | None, float]
    random_median: dict[int | None, float]
    random_low: dict[int | None, float]
    random_high: dict[int | None, float]

    def relative(self) -> dict[int | None, float]:
        """The write ratio over the random directions' median (NaN for a layer whose writers write nothing)."""
        return {k: v / self.random_median[k] if self.random_median[k] > 0 else float("nan") for k, v in self.ratio.items()}

    def layers_below(self, share: float) -> list[int]:
        return sorted(k for k, v in self.relative().items() if k is not None and v <= share)

    def layers_above(self, factor: float) -> list[int]:
        return sorted(k for k, v in self.relative().items() if k is not None and v >= factor)

    def to_json(self) -> dict[str, Any]:
        key = lambda k: "embedding" if k is None else str(k)  # noqa: E731
        return {
            "name": self.name,
            "ratio": {key(k): v for k, v in self.ratio.items()},
            "relative_to_random": {key(k): v for k, v in self.relative().items()},
            "random_median": {key(k): v for k, v in self.random_median.items()},
            "random_5": {key(k): v for k, v in self.random_low.items()},
            "random_95": {key(k): v for k, v in self.random_high.items()},
        }


@dataclass(frozen=True)
class Audit:
    model: str
    verdicts: list[str]
    flagged: bool  # a direction was removed from the writers (abliteration)
    null: dict[str, Any]
    profiles: list[Profile]
    refusal: dict[str, Any]
    base: dict[str, Any] | None = None
    changes: list[MatrixChange] = field(default_factory=list)
    firing: dict[str, Any] | None = None  # where an added edit fires (rosi.edit.firing.Firing.to_json), with a base

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "flagged": self.flagged,
            "verdicts": self.verdicts,
            "null_direction": self.null,
            "refusal_direction": self.refusal,
            "profiles": [p.to_json() for p in self.profiles],
            "base": self.base,
            "changes": [c.to_json() for c in self.changes],
            "firing": self.firing,
        }


def audit(loaded: LoadedModel, base: LoadedModel | None = None, direction: Direction | None = None, progress: bool = True) -> Audit:
    """Audit ``loaded`` (against ``base`` when given; ``direction``: its refusal direction, else
    extracted from rosi's built-in prompts)."""
    if base is not None:
        check_base(loaded, base)
    grams = writer_grams(loaded.model, loaded.architecture)
    null = null_direction(writer_gram(g for _, g in grams.values()))
    ablation = find_ablation(grams)
    least = ablation.vector if ablation is not None else null.vector
    randoms = random_profiles(grams, N_RANDOM)
    own = direction.unit if direction is not None else refusal_direction(loaded, progress=progress)[0]
    profiles = [_profile("least-written direction", grams, least, randoms), _profile("refusal direction", grams, own, randoms)]
    verdicts = _verdicts(null, ablation, profiles)
    flagged = ablation is not None
    refusal: dict[str, Any] = {"source": "given" if direction is not None else f"difference of means, {N_PROMPTS} built-in prompts per set"}
    refusal["cosine_with_least_written"] = abs(float(own.double() @ least.double()))
    info = {**null.to_json(), "ablation": None if ablation is None else ablation.to_json()}
    result = Audit(loaded.source.spec, verdicts, flagged, info, profiles, refusal)
    if base is None:
        return result
    return _against_base(result, loaded, base, least, progress)


def check_base(loaded: LoadedModel, base: LoadedModel) -> None:
    """``base`` can be the model ``loaded`` was made from: the same architecture, depth and width,
    and every residual writer of the same shape (checked before anything is computed)."""
    a, b = loaded.architecture, base.architecture
    fix = f"pass as --base the model {loaded.source.spec} was made from"
    if a.model_type != b.model_type:
        raise RosiError(f"--base {base.source.spec} is a {b.model_type!r} model, {loaded.source.spec} a {a.model_type!r} one; {fix}")
    for what, mine, theirs in (("hidden size", a.hidden_size, b.hidden_size), ("layers", a.num_layers, b.num_layers)):
        if mine != theirs:
            raise RosiError(f"--base {base.source.spec} has {what} {theirs}, {loaded.source.spec} {mine}; {fix}")
    base_writers = {w.name: w for w in b.writers}
    shared = [w for w in a.writers if w.name in base_writers]
    if not shared:
        raise RosiError(f"--base {base.source.spec} has none of {loaded.source.spec}'s residual writers; {fix}")
    for w in shared:
        attr = w.name.rsplit(".", 1)[1]
        mine_shape = tuple(stored_weight(loaded.model, w.module, attr).shape)
        theirs_shape = tuple(stored_weight(base.model, w.module, attr).shape)
        if mine_shape != theirs_shape:
            raise RosiError(
                f"--base {base.source.spec}: {w.name} is {list(theirs_shape)}, in {loaded.source.spec} {list(mine_shape)}; {fix}"
            )


def refusal_direction(loaded: LoadedModel, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The unit difference of means at :data:`GAP_DEPTH` of the depth (last prompt token), and
    the unit differences at every layer (``[layers, hidden]``), from rosi's built-in prompts."""
    fmt = ChatFormat(loaded.tokenizer)
    kw: dict[str, Any] = {"batch_size": 32, "progress": progress}
    pair = ActivationPair(
        collect_activations(loaded.model, fmt, builtin("harmful", "train").take(N_PROMPTS).instructions, 1, desc="rosi: harmful", **kw),
        collect_activations(loaded.model, fmt, builtin("harmless", "train").take(N_PROMPTS).instructions, 1, desc="rosi: harmless", **kw),
    )
    diffs = pair.differences()[:, -1].float()
    units = diffs / diffs.norm(dim=-1, keepdim=True).clamp(min=1e-30)
    return units[int(GAP_DEPTH * loaded.architecture.num_layers)], units


def _profile(name: str, grams: Any, d: torch.Tensor, randoms: list[dict[int | None, float]]) -> Profile:
    ratio = layer_profile(grams, d)

    def quantile(q: float) -> dict[int | None, float]:
        return {k: statistics.quantiles([r[k] for r in randoms], n=20)[round(q * 20) - 1] for k in ratio}

    return Profile(name, ratio, {k: statistics.median(r[k] for r in randoms) for k in ratio}, quantile(0.05), quantile(0.95))


def _verdicts(null: NullDirection, ablation: Ablation | None, profiles: list[Profile]) -> list[str]:
    least, _ = profiles
    out = []
    if ablation is not None:
        rel = least.relative()
        factor = 1 / max(statistics.median(rel[k] for k in ablation.layers), 1e-12)
        times = f"{factor:.0f}x" if factor < 1000 else "over 1000x"
        numbered = [k for k in ablation.layers if k is not None]
        where = " and ".join(([_ranges(numbered)] if numbered else []) + (["the embedding"] if None in ablation.layers else []))
        if null.found:
            out.append(
                f"ABLATED: the writers of {where} write {times} less along one direction than along random directions "
                f"(its eigenvalue is {null.isolation:.1g} of the next one): a direction was projected out of them, as abliteration does"
            )
        else:
            out.append(
                f"PARTLY ABLATED: the writers of {where} write {times} less along one direction than along random directions, "
                f"each layer's least-written direction the same one (|cos| >= {ablation.agreement:.2f}), while the other layers "
                "still write it: a direction was projected out of those layers"
            )
    else:
        out.append(
            f"not ablated: every direction is written (the least-written one has {null.isolation:.2f} of the next one's "
            "eigenvalue, and no two layers share an unwritten direction)"
        )
    refusal = profiles[1]
    above = refusal.layers_above(FLAG_ABOVE)
    if above:
        rel = refusal.relative()
        out.append(
            f"AMPLIFIED: the writers of {_ranges(above)} write up to {max(rel[k] for k in above):.1f}x more along the model's refusal "
            "direction than along random directions: an addition along it, as ROSI makes"
        )
    return out


def _against_base(result: Audit, loaded: LoadedModel, base: LoadedModel, null_vector: torch.Tensor, progress: bool) -> Audit:
    changes, weights, ratios = [], {}, {}
    base_writers = {w.name: w for w in base.architecture.writers}
    for w in loaded.architecture.writers:
        if w.name not in base_writers:
            continue
        attr = w.name.rsplit(".", 1)[1]
        wb = w.layout.as_out_in(stored_weight(base.model, w.module, attr).detach())
        we = w.layout.as_out_in(stored_weight(loaded.model, w.module, attr).detach())
        change = matrix_change(w.name, w.layer, wb, we)
        if change is not None:
            changes.append(change)
            weights[w.name] = (wb, we)
    info: dict[str, Any] = {"model": base.source.spec, "changed_matrices": len(changes), "writers": len(loaded.architecture.writers)}
    verdicts = list(result.verdicts)
    if not changes:
        verdicts.append("against the base: no residual writer differs")
        return _with(result, info, verdicts, changes)
    shared = shared_direction(changes)
    for name, (wb, we) in weights.items():
        ratios[name] = write_change(wb, we, shared.vector)
    _, base_units = refusal_direction(base, progress=progress)
    cosines = (base_units.double() @ shared.vector).abs()
    best = int(cosines.argmax())
    median_write = statistics.median(ratios.values())
    kind = "removes" if median_write <= FLAG_BELOW else "adds to" if median_write > 1.05 else "changes"
    ranks = sorted({c.rank for c in changes})
    info.update(
        {
            "ranks": ranks,
            "shared_direction_share": shared.share,
            "cosine_with_base_refusal_direction": float(cosines[best]),
            "base_refusal_layer": best,
            "cosine_with_least_written": abs(float(shared.vector @ null_vector.double())),
            "median_write_change": median_write,
            "effect": kind,
        }
    )
    verdicts.append(
        f"against the base: {len(changes)} of {info['writers']} writers changed, rank "
        f"{'/'.join(map(str, ranks)) if len(ranks) <= 3 else f'{ranks[0]} to {ranks[-1]}'}; "
        f"{shared.share:.0%} of the change lies along one direction (cosine {float(cosines[best]):.2f} with the base's refusal "
        f"direction at layer {best}); the edit {kind} what the writers write along it (median |c^T W'| / |c^T W| = {median_write:.3g})"
    )
    record = _record_check(loaded, base)
    if record is not None:
        info["edit_record"] = record
        verdicts.append(f"edit record: {record}")
    firing = None
    if kind == "adds to":
        firing, line = _firing(base, weights, shared.vector, progress)
        verdicts.append(line)
    return _with(result, info, verdicts, changes, firing)


def _with(
    result: Audit, info: dict[str, Any], verdicts: list[str], changes: list[MatrixChange], firing: dict[str, Any] | None = None
) -> Audit:
    return Audit(result.model, verdicts, result.flagged, result.null, result.profiles, result.refusal, info, changes, firing)


def _firing(
    base: LoadedModel, weights: dict[str, tuple[torch.Tensor, torch.Tensor]], c: torch.Tensor, progress: bool
) -> tuple[dict[str, Any] | None, str]:
    """Where the change along ``c`` fires, on the base model (``c``'s sign oriented so that the
    harmful prompts' median push at the deciding token is positive): the probe's JSON and a
    verdict line (or why it was not measured)."""
    kinds = {w.name: w.kind.value for w in base.architecture.writers}
    reads = [  # single matrices (fused expert stacks are not probed), the change read in float32
        Read(base.model.get_submodule(name.rsplit(".", 1)[0]), (c.float() @ (we.float() - wb.float())).cpu(), kinds[name] == "embedding")
        for name, (wb, we) in weights.items()
        if we.ndim == 2
    ]
    if not reads:
        return None, "where it fires: not measured (only fused expert stacks changed)"
    fmt = ChatFormat(base.tokenizer)
    sets = {
        name: list(builtin(kind, "val").take(FIRING_PROMPTS).instructions)
        for name, kind in (("harmful", "harmful"), ("harmless", "harmless"), ("lookalike", "lookalike"))
    }
    replies = {
        name: generate_replies(base.model, fmt, prompts, max_new_tokens=FIRING_TOKENS, progress=progress) for name, prompts in sets.items()
    }
    try:
        firing = measure_firing(base.model, fmt, reads, sets, replies, whose="base", progress=progress)
    except RosiError:  # the shared direction's sign is arbitrary: orient it so that harmful prompts are pushed along it
        flipped = [Read(r.module, -r.right, r.ids) for r in reads]
        try:
            firing = measure_firing(base.model, fmt, flipped, sets, replies, whose="base", progress=progress)
        except RosiError as e:
            return None, f"where it fires: not measured ({e})"
    harmless, lookalike = firing.sets["harmless"], firing.sets["lookalike"]
    words = max(harmless["user"].quantiles["p90"], harmless["reply"].quantiles["p90"]) / firing.reference
    return firing.to_json(), (
        f"where it fires (push along it per token, relative to a harmful prompt's at the deciding token): harmless deciding "
        f"{harmless['deciding'].median / firing.reference:+.2f} (median), look-alike deciding {lookalike['deciding'].median / firing.reference:+.2f}; "
        f"on harmless prompts' words and replies up to {words:+.2f} (90th percentile)"
    )


def _record_check(loaded: LoadedModel, base: LoadedModel) -> str | None:
    """The edit record's check against the weights, for local checkpoint folders."""
    from rosi.export.checkpoint import RECORD_FILE
    from rosi.export.patch import verify
    from rosi.model.loading import local_folder

    folder, base_folder = local_folder(loaded.source), local_folder(base.source)
    if folder is None or base_folder is None or not (folder / RECORD_FILE).is_file():
        return None
    result = verify(folder, base_folder)
    return ("matches the weights" if result.ok else "does NOT match the weights") + f" ({result.method}, {result.matrices} matrices)"


def _ranges(layers: list[int]) -> str:
    parts, start = [], layers[0]
    for a, b in zip(layers, layers[1:] + [None], strict=False):
        if b != a + 1:
            parts.append(f"{start}" if start == a else f"{start}-{a}")
            start = b if b is not None else start
    return ("layer " if len(layers) == 1 else "layers ") + ", ".join(parts)


def write_report(result: Audit, folder: Path) -> dict[str, Path]:
    """``audit.json`` and, with matplotlib, ``profile.png`` in ``folder`` (which exists)."""
    files = {"json": folder / "audit.json"}
    files["json"].write_text(json.dumps(result.to_json(), indent=2) + "\n")
    plot = _plot(result, folder / "profile.png")
    if plot is not None:
        files["plot"] = plot
    return files


def _plot(result: Audit, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    layers = sorted(k for k in result.profiles[0].ratio if k is not None)
    ref = result.profiles[0]
    ax.fill_between(
        layers, [ref.random_low[k] for k in layers], [ref.random_high[k] for k in layers], alpha=0.25, label="random directions (5-95%)"
    )
    for p in result.profiles:
        ax.plot(layers, [max(p.ratio[k], 1e-6) for k in layers], marker="o", label=p.name)
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("write ratio (1 = a random direction)")
    ax.set_title(f"What the writers write along each direction: {result.model}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
