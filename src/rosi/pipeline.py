"""ROSI end to end: extract and select the direction, choose the strength, inject, measure, save."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rosi import __version__
from rosi._fs import check_output
from rosi.activations import mean_outputs
from rosi.chat import ChatFormat
from rosi.checkpoint import save_checkpoint
from rosi.direction import Direction
from rosi.edit import apply_edit, check_strength, revert_edit
from rosi.errors import RosiError
from rosi.generation import DEFAULT_NEW_TOKENS, generate
from rosi.judge import refusal_rate
from rosi.loading import LoadedModel
from rosi.prompts import PromptSet
from rosi.scope import (
    DEFAULT_RATIO,
    DEFAULT_SCOPE,
    SCOPES,
    measurable_writers,
    module_biases,
    probe_layer_range,
    probe_reads,
    probe_writers,
    readout,
    select_writers,
    writer_signals,
)
from rosi.selection import Selection, select_direction

# Strength grids for the search, smallest first.
STRENGTH_GRIDS = {
    "probe": (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0),
    "scale": (0.5, 1.0, 1.5, 2.0, 3.0, 4.0),
    "rosi": (12.5, 25.0, 50.0, 100.0, 200.0),
}
DEFAULT_METHOD = "scale"  # measured best trade-off on Qwen2.5-Coder-0.5B-Instruct (see README)
DEFAULT_BUDGET = 0.10  # allowed rise of refusal on harmless validation prompts during the search
# Strength at which the selection fallback scores a candidate's edit effect (mid-grid).
STRENGTH_NAMES = {"probe": "k", "scale": "beta", "rosi": "alpha"}
EFFECT_STRENGTH = {"probe": 2.0, "scale": 2.0, "rosi": 50.0}
SEARCH_TOKENS = 8  # reply length judged during the strength search ("I'm sorry, but I can't")
INPUT = "input:"  # key prefix of writer inputs in a mean_outputs result


@dataclass
class Extraction:
    direction: Direction
    selection: Selection | None  # None when the layer and position were pinned
    seconds: float
    # Mean output of each measurable residual writer at the direction's position, per prompt
    # set (gathered in the same forward passes), for choosing which writers to edit.
    writer_means: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] = field(default_factory=lambda: ({}, {}))
    # Mean input of each measurable writer at the direction's position (harmful, harmless), for
    # the probe method's read-outs; gathered only when the method is probe.
    input_means: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] = field(default_factory=lambda: ({}, {}))


def extract(
    loaded: LoadedModel,
    harmful: PromptSet,
    harmless: PromptSet,
    *,
    val_harmful: PromptSet | None = None,
    val_harmless: PromptSet | None = None,
    system_prompt: str | None = None,
    layer: int | None = None,
    position: int | None = None,
    method: str = DEFAULT_METHOD,
    scope: str = DEFAULT_SCOPE,
    ratio: float = DEFAULT_RATIO,
    batch_size: int = 32,
    progress: bool = True,
) -> Extraction:
    """Difference of means at every (layer, post-instruction position); select one, or take the
    pinned one. ``method``, ``scope`` and ``ratio`` describe the edit that will be made, for the
    selection's fallback when no candidate passes Arditi's filters."""
    started = time.perf_counter()
    fmt = ChatFormat(loaded.tokenizer, system_prompt)
    n_pos = len(fmt.post_instruction_ids())
    if method not in EFFECT_STRENGTH:
        raise RosiError(f"rosi selects directions for --method {' or '.join(EFFECT_STRENGTH)}, got {method!r}")
    if (layer is None) != (position is None):
        raise RosiError("pin both --layer and --position, or neither (then rosi selects them)")
    n_layers = loaded.architecture.num_layers
    if layer is not None and not 0 <= layer < n_layers:
        raise RosiError(f"--layer {layer} is out of range: the model has layers 0..{n_layers - 1}")
    if position is not None and not -n_pos <= position < 0:
        raise RosiError(f"--position {position} is out of range: post-instruction positions are -{n_pos}..-1")
    model = loaded.model
    modules, inputs = extraction_modules(loaded, method)
    kw = dict(inputs=inputs, batch_size=batch_size, progress=progress)
    out_h = mean_outputs(model, fmt, harmful.instructions, n_pos, modules, desc="rosi: harmful activations", **kw)
    out_b = mean_outputs(model, fmt, harmless.instructions, n_pos, modules, desc="rosi: harmless activations", **kw)
    means_h = torch.stack([out_h[f"layer.{i}"] for i in range(n_layers)])
    means_b = torch.stack([out_b[f"layer.{i}"] for i in range(n_layers)])
    selection = None
    if layer is None:
        if val_harmful is None or val_harmless is None:
            raise RosiError("selecting the direction needs validation prompts (or pin --layer and --position)")

        @contextmanager
        def edit(layer: int, position: int, vector: torch.Tensor) -> Iterator[None]:
            direction = Direction(vector.float(), layer=layer, position=str(position))
            at = position + n_pos
            choice = writer_choice(
                loaded,
                direction,
                _writer_means(out_h, at),
                _writer_means(out_b, at),
                method,
                scope,
                ratio,
                inputs=(_input_means(out_h, at), _input_means(out_b, at)),
            )
            record = apply_edit(
                model, direction, method, EFFECT_STRENGTH[method], writers=choice.writers, reads=choice.reads, keep_originals=True
            )
            try:
                yield
            finally:
                revert_edit(model, record)

        selection = select_direction(
            model,
            fmt,
            means_h,
            means_b,
            val_harmful.instructions,
            val_harmless.instructions,
            edit=edit,
            batch_size=batch_size,
            progress=progress,
        )
        layer, position = selection.layer, selection.position
    assert position is not None
    vector = (means_h[layer, position + n_pos] - means_b[layer, position + n_pos]).float()
    metadata = {
        "n_harmful": str(len(harmful)),
        "n_harmless": str(len(harmless)),
        "harmful": harmful.name,
        "harmless": harmless.name,
        "token": loaded.tokenizer.decode([fmt.post_instruction_ids()[position]]),
        "selected_by": "pinned"
        if selection is None
        else "arditi"
        if selection.strict
        else "edit effect"
        if selection.by_effect
        else "arditi-relaxed",
        "rosi_version": __version__,
    }
    if system_prompt:
        metadata["system_prompt"] = system_prompt
    direction = Direction(vector, layer=layer, position=str(position), model=loaded.source.spec, metadata=metadata)
    at = position + n_pos
    writer_means = (_writer_means(out_h, at), _writer_means(out_b, at))
    input_means = (_input_means(out_h, at), _input_means(out_b, at))
    return Extraction(direction, selection, round(time.perf_counter() - started, 2), writer_means, input_means)


def extraction_modules(loaded: LoadedModel, method: str) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """What extraction hooks, as :func:`mean_outputs` arguments: the outputs of every decoder
    layer (``layer.N``) and of every measurable writer (by parameter name), and for ``probe`` the
    writers' inputs (``input:NAME``)."""
    arch = loaded.architecture
    modules: dict[str, nn.Module] = {f"layer.{i}": m for i, m in enumerate(arch.layer_modules(loaded.model))}
    writers = measurable_writers(loaded.model, arch.select())
    modules.update(writers)
    inputs = {INPUT + name: m for name, m in writers.items()} if method == "probe" else {}
    return modules, inputs


def _writer_means(out: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """The writers' output entries of a :func:`mean_outputs` result (layers are keyed ``layer.N``,
    inputs ``input:NAME``), at one position."""
    return {k: v[index] for k, v in out.items() if not k.startswith(("layer.", INPUT))}


def _input_means(out: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """The writers' input entries of a :func:`mean_outputs` result, by writer name, at one position."""
    return {k[len(INPUT) :]: v[index] for k, v in out.items() if k.startswith(INPUT)}


@dataclass
class WriterChoice:
    """The writers one method edits: all of them, or those :func:`rosi.scope.select_writers` keeps."""

    scope: str
    ratio: float | None
    writers: list[str] | None  # parameter names; None: every writer of the default targets
    signals: list[dict[str, object]] = field(default_factory=list)
    note: str = ""
    # probe only: the read-out vector of each edited writer (not part of the JSON report).
    reads: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "reads"}


def choose_writers(loaded: LoadedModel, extraction: Extraction, method: str, scope: str, ratio: float = DEFAULT_RATIO) -> WriterChoice:
    """The writers ``method`` edits for the extracted direction."""
    return writer_choice(loaded, extraction.direction, *extraction.writer_means, method, scope, ratio, inputs=extraction.input_means)


def writer_choice(
    loaded: LoadedModel,
    direction: Direction,
    means_harmful: dict[str, torch.Tensor],
    means_harmless: dict[str, torch.Tensor],
    method: str,
    scope: str,
    ratio: float = DEFAULT_RATIO,
    *,
    inputs: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None,
) -> WriterChoice:
    """All writers, or those :func:`rosi.scope.select_writers` keeps, given the mean writer
    outputs at the direction's position. For ``probe``: the writers of the middle layers (every
    measurable writer with scope ``all``) with their read-outs from the mean writer inputs."""
    if scope not in SCOPES:
        raise RosiError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
    writers = loaded.architecture.select()
    if method == "probe":
        if not inputs or not inputs[0]:
            raise RosiError("the probe method needs the writers' mean inputs: extract the direction with method='probe'")
        if scope == "all":
            names = [w.name for w in writers if w.name in inputs[0]]
            note = f"all {len(names)} measurable writers"
        else:
            names = probe_writers(writers, probe_layer_range(loaded.architecture.num_layers))
            note = f"{len(names)} writers of the middle layers"
        reads = probe_reads(names, *inputs, gap=float(direction.vector.float().norm()))
        if len(reads) < len(names):
            note += f", {len(names) - len(reads)} left out (their input does not separate the prompts)"
        return WriterChoice(scope, None, list(reads), note=note, reads=reads)
    if scope == "all":
        return WriterChoice("all", None, None)
    s_hat = direction.unit
    modules = measurable_writers(loaded.model, writers)
    signals = writer_signals(writers, means_harmful, means_harmless, readout(method, s_hat), module_biases(modules))
    kept = set(select_writers(signals, ratio))
    unmeasured = [w.name for w in writers if w.name not in modules]  # e.g. fused experts: edited as usual
    chosen = [w.name for w in writers if w.name in kept or w.name in unmeasured]
    table = [s.to_json() for s in signals]
    if not chosen:
        return WriterChoice("all", ratio, None, table, f"no writer passed the selective rule at ratio {ratio}; edited all")
    note = f"{len(kept)} of {len(signals)} measured writers kept" + (
        f", {len(unmeasured)} unmeasured writers edited as usual" if unmeasured else ""
    )
    return WriterChoice("selective", ratio, chosen, table, note)


@dataclass
class StrengthSearch:
    method: str
    strength: float
    chosen_by: str
    rows: list[dict[str, float]] = field(default_factory=list)


def short_refusal_rate(loaded: LoadedModel, fmt: ChatFormat, prompts: PromptSet, new_tokens: int, batch_size: int) -> float:
    """Refusal-marker rate on short greedy replies: enough tokens for "I'm sorry" or "I can't",
    at little more than the cost of one forward pass over the prompts."""
    replies = generate(loaded.model, fmt, prompts.instructions, max_new_tokens=new_tokens, batch_size=batch_size)
    return refusal_rate(replies)


def choose_strength(
    loaded: LoadedModel,
    direction: Direction,
    method: str,
    val_harmful: PromptSet,
    val_harmless: PromptSet,
    *,
    budget: float = DEFAULT_BUDGET,
    search_tokens: int = SEARCH_TOKENS,
    base_rates: tuple[float, float] | None = None,
    writers: list[str] | None = None,
    reads: dict[str, torch.Tensor] | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> StrengthSearch:
    """The strength with the most refusals on harmful prompts while refusals on harmless ones rise
    by at most ``budget`` over the base model, judged on short greedy replies; searched up the
    grid, stopping past the budget."""
    fmt = ChatFormat(loaded.tokenizer)

    def rate(prompts: PromptSet) -> float:
        return short_refusal_rate(loaded, fmt, prompts, search_tokens, batch_size)

    base_harmful, base_harmless = base_rates or (rate(val_harmful), rate(val_harmless))
    rows = [{"strength": 0.0, "harmful": base_harmful, "harmless": base_harmless}]
    if progress and base_rates is None:
        print(
            f"rosi: base model: refusal in {search_tokens}-token replies: harmful {base_harmful:.0%}, harmless {base_harmless:.0%}",
            flush=True,
        )

    def measure(strength: float) -> dict[str, float]:
        record = apply_edit(loaded.model, direction, method, strength, writers=writers, reads=reads, keep_originals=True)
        try:
            row = {
                "strength": strength,
                "harmful": rate(val_harmful),
                "harmless": rate(val_harmless),
            }
        finally:
            revert_edit(loaded.model, record)
        rows.append(row)
        if progress:
            print(
                f"rosi: {method} {strength:g}: refusal in {search_tokens}-token replies: harmful {row['harmful']:.0%}, harmless {row['harmless']:.0%}",
                flush=True,
            )
        return row

    def within(row: dict[str, float]) -> bool:
        return row["harmless"] <= base_harmless + budget

    best = None
    for strength in STRENGTH_GRIDS[method]:
        row = measure(strength)
        if not within(row):
            break
        if best is None or row["harmful"] > best["harmful"]:
            best = row
    strength = STRENGTH_GRIDS[method][0]
    while best is None and len(rows) < 12:  # even the smallest grid strength over-refuses: go lower
        strength /= 2
        row = measure(strength)
        best = row if within(row) else None
    how = (
        f"max refusal in {search_tokens}-token replies to {len(val_harmful)} harmful validation prompts with harmless refusal at most "
        f"{budget:.0%} above base on {len(val_harmless)} ({len(rows) - 1} strengths tried)"
    )
    if best is None:
        best = rows[-1]
        how = f"no strength kept harmless refusal within {budget:.0%} of base; the smallest tried"
    return StrengthSearch(method, best["strength"], how, rows)


@dataclass
class Rates:
    label: str
    harmful: float
    harmless: float
    n_harmful: int
    n_harmless: int


def refusal_rates(
    loaded: LoadedModel, label: str, harmful: PromptSet, harmless: PromptSet, *, new_tokens: int, batch_size: int, progress: bool
) -> tuple[Rates, dict[str, list[str]]]:
    fmt = ChatFormat(loaded.tokenizer)
    replies = {
        "harmful": generate(
            loaded.model,
            fmt,
            harmful.instructions,
            max_new_tokens=new_tokens,
            batch_size=batch_size,
            progress=progress,
            desc=f"rosi: {label}, harmful",
        ),
        "harmless": generate(
            loaded.model,
            fmt,
            harmless.instructions,
            max_new_tokens=new_tokens,
            batch_size=batch_size,
            progress=progress,
            desc=f"rosi: {label}, harmless",
        ),
    }
    rate = {k: refusal_rate(v) for k, v in replies.items()}
    return Rates(label, rate["harmful"], rate["harmless"], len(harmful), len(harmless)), replies


@dataclass
class RunReport:
    model: str
    method: str
    strength: float
    direction: dict[str, str]
    writers: dict[str, WriterChoice]
    rates: list[Rates]
    strength_searches: list[StrengthSearch]
    selection_cost: dict[str, float] | None
    seconds: dict[str, float]
    new_tokens: int

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["writers"] = {m: c.to_json() for m, c in self.writers.items()}
        out["rates"] = [asdict(r) for r in self.rates]
        out["strength_searches"] = [asdict(s) for s in self.strength_searches]
        return out

    def table(self) -> str:
        lines = [f"{'':44} {'harmful refused':>16} {'harmless refused':>17}"]
        for r in self.rates:
            lines.append(f"{r.label:44} {r.harmful:>9.0%} (n={r.n_harmful:<3}) {r.harmless:>9.0%} (n={r.n_harmless:<3})")
        return "\n".join(lines)


def run(
    loaded: LoadedModel,
    out: str | Path,
    *,
    harmful: PromptSet,
    harmless: PromptSet,
    val_harmful: PromptSet,
    val_harmless: PromptSet,
    method: str = DEFAULT_METHOD,
    strength: float | None = None,
    compare_rosi: bool = True,
    budget: float = DEFAULT_BUDGET,
    scope: str = DEFAULT_SCOPE,
    ratio: float = DEFAULT_RATIO,
    system_prompt: str | None = None,
    layer: int | None = None,
    position: int | None = None,
    new_tokens: int = DEFAULT_NEW_TOKENS,
    batch_size: int = 32,
    overwrite: bool = False,
    progress: bool = True,
) -> RunReport:
    """Extract, select, inject and measure; save the edited checkpoint with its report to ``out``."""
    if method not in STRENGTH_GRIDS:
        raise RosiError(f"rosi run supports --method {' or '.join(STRENGTH_GRIDS)}, got {method!r}")
    if strength is not None:
        check_strength(method, strength)
    if scope not in SCOPES:
        raise RosiError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
    out = Path(out)
    check_output(out, overwrite)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    extraction = extract(
        loaded,
        harmful,
        harmless,
        val_harmful=val_harmful,
        val_harmless=val_harmless,
        system_prompt=system_prompt,
        layer=layer,
        position=position,
        method=method,
        scope=scope,
        ratio=ratio,
        batch_size=batch_size,
        progress=progress,
    )
    seconds["extract_and_select"] = round(time.perf_counter() - t, 1)
    direction = extraction.direction
    if progress:
        print(f"rosi: direction at layer {direction.layer}, position {direction.position} ({direction.metadata['token']!r})", flush=True)

    t = time.perf_counter()
    methods = [method] + (["rosi"] if compare_rosi and method != "rosi" else [])
    # The comparison row is the paper's form: rosi on every writer.
    choices = {m: choose_writers(loaded, extraction, m, scope if m == method else "all", ratio) for m in methods}
    if progress and choices[method].writers is not None:
        print(f"rosi: {method} edits {len(choices[method].writers)} writers ({choices[method].note})", flush=True)
    searches = []
    strengths: dict[str, float] = {}
    base_rates: tuple[float, float] | None = None
    for m in methods:
        if m == method and strength is not None:
            strengths[m] = strength
            searches.append(StrengthSearch(m, strength, "given"))
            continue
        search = choose_strength(
            loaded,
            direction,
            m,
            val_harmful,
            val_harmless,
            budget=budget,
            base_rates=base_rates,
            writers=choices[m].writers,
            reads=choices[m].reads,
            batch_size=batch_size,
            progress=progress,
        )
        base_rates = (search.rows[0]["harmful"], search.rows[0]["harmless"])  # measured once, shared by both searches
        strengths[m] = search.strength
        searches.append(search)
    seconds["strength_search"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    kw = dict(new_tokens=new_tokens, batch_size=batch_size, progress=progress)
    rates = [refusal_rates(loaded, "base model", val_harmful, val_harmless, **kw)[0]]
    record = None
    for m in reversed(methods):  # the chosen method last, so that it stays applied
        record = apply_edit(
            loaded.model, direction, m, strengths[m], writers=choices[m].writers, reads=choices[m].reads, keep_originals=(m != method)
        )
        name = STRENGTH_NAMES[m]
        n_edited = len(record.matrices)
        label = f"{m} {name}={strengths[m]:g}, {n_edited} writers" + (" (paper's form)" if m != method else "")
        rates.insert(1, refusal_rates(loaded, label, val_harmful, val_harmless, **kw)[0])
        if m != method:
            revert_edit(loaded.model, record)
    seconds["evaluation"] = round(time.perf_counter() - t, 1)
    assert record is not None
    report = RunReport(
        model=loaded.source.spec,
        method=method,
        strength=strengths[method],
        direction=direction.info(),
        writers=choices,
        rates=rates,
        strength_searches=searches,
        selection_cost=extraction.selection.cost if extraction.selection else None,
        seconds=seconds,
        new_tokens=new_tokens,
    )

    def extras(folder: Path) -> None:
        direction.save(folder / "direction.safetensors")
        (folder / "rosi_report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
        if extraction.selection is not None:
            (folder / "direction_scores.json").write_text(json.dumps(extraction.selection.table(), indent=2) + "\n")

    save_checkpoint(loaded, out, record=record, overwrite=overwrite, extra={"report": "rosi_report.json"}, write_extra=extras)
    return report
