"""Reports of an evaluation: a Markdown file with tables and plots, and side-by-side comparison.

Plots (PNG, matplotlib's Agg backend, no display needed): refusal rates before and after with 95%
error bars, harm refusal per category, and the distribution of the per-prompt KL divergence.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rosi._fs import atomic_file
from rosi.eval.results import HEADLINE, EvalResults, ModelMetrics, UtilityScore
from rosi.metrics import Rate


def fmt_rate(r: Rate | None) -> str:
    return r.short() if r is not None else "–"


def _delta(a: Rate | None, b: Rate | None) -> str:
    if a is None or b is None:
        return "–"
    return f"{(b.value - a.value) * 100:+.1f} pts"


def _headline(m: ModelMetrics | None, key: str) -> Rate | None:
    summary = m.rate(key) if m is not None else None
    return summary.rate if summary is not None else None


def headline_rows(results: EvalResults) -> list[tuple[str, Rate | None, Rate | None]]:
    """(label, base figure, model figure) for every rate of the results, utility included."""
    base, model = results.metrics.get("base"), results.metrics["model"]
    present = [m for m in (base, model) if m is not None]
    rows = [(label, _headline(base, key), _headline(model, key)) for key, label in HEADLINE if any(m.rate(key) for m in present)]
    for task in sorted({t for m in present for t in m.utility}):
        entries: list[UtilityScore | None] = [m.utility.get(task) if m is not None else None for m in (base, model)]
        label = "acc_norm" if any(e is not None and e.accuracy_norm is not None for e in entries) else "acc"
        cells = [None if e is None else (e.accuracy_norm if label == "acc_norm" else e.accuracy) for e in entries]
        rows.append((f"utility: {task} {label}", cells[0], cells[1]))
    return rows


def headline_table(results: EvalResults, kl_label: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the headline: every rate (base, model, change) and the KL (which exists
    only with a base)."""
    has_base = "base" in results.metrics
    header = ["metric", "base", "model", "change"] if has_base else ["metric", "model"]
    rows = [[label, fmt_rate(b), fmt_rate(m), _delta(b, m)] if has_base else [label, fmt_rate(m)] for label, b, m in headline_rows(results)]
    if results.kl is not None:
        k = results.kl
        rows.append([kl_label, "", f"{k.mean:.4f} [{k.ci95[0]:.4f}–{k.ci95[1]:.4f}] n={k.n}", ""])
    return header, rows


def _aligned(lines: list[list[str]]) -> str:
    """Rows of cells as left-aligned text columns."""
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines)


def table(results: EvalResults) -> str:
    """The headline table as aligned text (what ``rosi eval`` prints)."""
    header, rows = headline_table(results, "KL(base || model), first token")
    return _aligned([header, *rows])


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def write_report(results: EvalResults, out: Path, *, plots: bool = True) -> Path:
    """``OUT/report.md`` (and ``OUT/plots/*.png``); returns the report's path."""
    plot_files = _plots(results, out / "plots") if plots else {}
    lines = _header(results)
    lines += [_markdown_table(*headline_table(results, "KL(base ‖ model), first reply token (nats)")), ""]
    lines += _utility_section(results)
    if "rates" in plot_files:
        lines += ["![refusal rates](plots/rates.png)", ""]
    lines += _group_sections(results, "categories" in plot_files)
    lines += _kl_section(results, "kl" in plot_files)
    lines += [
        "## Files",
        "",
        "- `results.json`: every figure above, machine-readable;",
        "- `replies.jsonl`: each prompt of this run with its set, source and reply; `generations.jsonl`: the generation cache;",
        "- `utility_tasks/`: the lm-eval task configurations and sampled questions (offline tasks).",
        "",
    ]
    path = out / "report.md"
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    return path


def _roles(results: EvalResults) -> list[str]:
    return [r for r in ("base", "model") if r in results.metrics]


def _header(results: EvalResults) -> list[str]:
    models = results.models
    has_base = "base" in results.metrics
    return [
        "# rosi evaluation",
        "",
        f"- model: `{models['model']['spec']}`" + (f" (base: `{models['base']['spec']}`)" if has_base else ""),
        f"- suite: {results.suite}; judge for HR and jailbreak success: `{results.judge}` (BC and over-refusal: refusal markers)",
        f"- greedy replies, {results.max_new_tokens} new tokens, dtype {results.dtype}"
        + (f"; system prompt: {results.system_prompt!r}" if results.system_prompt else ""),
        f"- time: {results.seconds.get('total', 0):.0f} s; rates with 95% Wilson intervals, KL with a 95% normal interval",
        "",
        "## Headline",
        "",
    ]


def _utility_section(results: EvalResults) -> list[str]:
    roles = _roles(results)
    tasks = sorted({t for r in roles for t in results.metrics[r].utility})
    if not tasks:
        return []
    rows = []
    for t in tasks:
        scores = [results.metrics[r].utility.get(t) for r in roles]
        for name, of in (("acc", lambda u: u.accuracy), ("acc_norm", lambda u: u.accuracy_norm)):
            cells: list[Rate | None] = [None if u is None else of(u) for u in scores]
            if any(cells):
                rows.append([t, name, *(fmt_rate(c) for c in cells)])
    return ["## Utility (lm-evaluation-harness, zero-shot)", "", _markdown_table(["task", "metric", *roles], rows), ""]


def _groups(m: ModelMetrics, key: str, part: str) -> dict[str, Rate]:
    summary = m.rate(key)
    if summary is None:
        return {}
    return (summary.sources if part == "sources" else summary.groups) or {}


def _group_sections(results: EvalResults, category_plot: bool) -> list[str]:
    roles = _roles(results)
    sections = (
        ("harm_refusal", "Harm refusal per category", "groups"),
        ("harm_refusal", "Harm refusal per source", "sources"),
        ("over_refusal", "Over-refusal per category", "groups"),
        ("jailbreak_success", "Jailbreak success per template", "groups"),
    )
    lines = []
    for key, title, part in sections:
        by_role = {r: _groups(results.metrics[r], key, part) for r in roles}
        groups = sorted({g for r in roles for g in by_role[r]})
        if not groups:
            continue
        lines += [f"## {title}", ""]
        lines += [_markdown_table(["group", *roles], [[g, *(fmt_rate(by_role[r].get(g)) for r in roles)] for g in groups]), ""]
        if key == "harm_refusal" and part == "groups" and category_plot:
            lines += ["![harm refusal per category](plots/categories.png)", ""]
    return lines


def _kl_section(results: EvalResults, plot: bool) -> list[str]:
    k = results.kl
    if k is None:
        return []
    lines = [
        "## KL divergence",
        "",
        f"Per-prompt KL(base ‖ model) of the first reply token on {k.n} harmless prompts: mean {k.mean:.4f}, "
        f"median {k.median:.4f}, 90th percentile {k.p90:.4f}, max {k.max:.4f} nats.",
        "",
    ]
    return lines + (["![KL distribution](plots/kl.png)", ""] if plot else [])


def _plots(results: EvalResults, folder: Path) -> dict[str, Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    roles = _roles(results)
    metrics = results.metrics
    files: dict[str, Path] = {}

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        files[name] = folder / f"{name}.png"
        fig.savefig(files[name], dpi=100)
        plt.close(fig)

    key_of_label = {label: k for k, label in HEADLINE if any(metrics[r].rate(k) for r in roles)}
    if key_of_label:
        fig, ax = plt.subplots(figsize=(8, 4))
        _bars(ax, roles, list(key_of_label), lambda role, label: _headline(metrics[role], key_of_label[label]))
        ax.set_ylabel("rate (95% Wilson interval)")
        ax.set_title("Before and after")
        save(fig, "rates")
    groups = sorted({g for r in roles for g in _groups(metrics[r], "harm_refusal", "groups")})
    if groups:
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(groups)), 4))
        _bars(ax, roles, groups, lambda role, g: _groups(metrics[role], "harm_refusal", "groups").get(g))
        ax.set_ylabel("harm refusal")
        save(fig, "categories")
    if results.kl is not None and results.kl.values:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(list(results.kl.values), bins=30)
        ax.set_xlabel("KL(base || model), first reply token (nats)")
        ax.set_ylabel("prompts")
        save(fig, "kl")
    return files


def _bars(ax: Any, roles: list[str], labels: list[str], rate_of: Callable[[str, str], Rate | None]) -> None:
    """One bar per role beside each label, the rate with its 95% interval as the error bar."""
    width = 0.8 / len(roles)
    for i, role in enumerate(roles):
        values: list[float] = []
        errs: tuple[list[float], list[float]] = ([], [])
        for label in labels:
            r = rate_of(role, label)
            v = r.value if r is not None else 0.0
            lo, hi = (round(x, 4) for x in r.interval) if r is not None else (v, v)
            values.append(v)
            errs[0].append(v - lo)
            errs[1].append(hi - v)
        xs = [x + (i - (len(roles) - 1) / 2) * width for x in range(len(labels))]
        ax.bar(xs, values, width, yerr=errs, capsize=3, label=role)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.legend()


def compare(a: EvalResults, b: EvalResults, names: tuple[str, str] = ("A", "B")) -> str:
    """Side-by-side headline figures of two evaluations (their evaluated models)."""
    rows_a = {label: m for label, _, m in headline_rows(a)}
    rows_b = {label: m for label, _, m in headline_rows(b)}
    labels = list(dict.fromkeys([*rows_a, *rows_b]))
    lines = [["metric", names[0], names[1], f"{names[1]} - {names[0]}"]]
    for label in labels:
        lines.append([label, fmt_rate(rows_a.get(label)), fmt_rate(rows_b.get(label)), _delta(rows_a.get(label), rows_b.get(label))])
    kls = [r.kl for r in (a, b)]
    if any(kls):
        cells = [f"{k.mean:.4f} n={k.n}" if k else "–" for k in kls]
        diff = f"{kls[1].mean - kls[0].mean:+.4f}" if kls[0] and kls[1] else "–"
        lines.append(["KL(base || model)", *cells, diff])
    info = [f"{n}: {r.models['model']['spec']} (suite {r.suite}, judge {r.judge})" for n, r in zip(names, (a, b), strict=True)]
    return "\n".join(info) + "\n\n" + _aligned(lines)
