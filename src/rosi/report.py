"""Reports of an evaluation: a Markdown file with tables and plots, and side-by-side comparison.

Plots (PNG, matplotlib's Agg backend, no display needed): refusal rates before and after with 95%
error bars, harm refusal per category, and the distribution of the per-prompt KL divergence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rosi._fs import atomic_file

HEADLINE = (
    ("harm_refusal", "harm refusal (HR)"),
    ("benign_compliance", "benign compliance (BC)"),
    ("over_refusal", "over-refusal (contrast set)"),
    ("jailbreak_success", "jailbreak success (ASR)"),
)


def fmt_rate(r: dict[str, Any] | None) -> str:
    if not r or r.get("rate") is None:
        return "–"
    lo, hi = r["ci95"]
    return f"{r['rate']:.1%} [{lo:.0%}–{hi:.0%}] n={r['n']}"


def _delta(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    if not a or not b or a.get("rate") is None or b.get("rate") is None:
        return "–"
    return f"{(b['rate'] - a['rate']) * 100:+.1f} pts"


def headline_rows(results: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]]:
    """(label, base figure, model figure) for every rate of the results, utility included."""
    metrics = results["metrics"]
    base, model = metrics.get("base", {}), metrics["model"]
    rows = [(label, base.get(key), model.get(key)) for key, label in HEADLINE if key in model or key in base]
    for task in sorted(set(model.get("utility", {})) | set(base.get("utility", {}))):
        entries = [m.get("utility", {}).get(task, {}) for m in (base, model)]
        # length-normalized accuracy where the task has it (HellaSwag, ARC), as leaderboards report them
        key = "accuracy_norm" if any("accuracy_norm" in e for e in entries) else "accuracy"
        label = "acc_norm" if key == "accuracy_norm" else "acc"
        rows.append((f"utility: {task} {label}", entries[0].get(key), entries[1].get(key)))
    return rows


def headline_table(results: dict[str, Any], kl_label: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the headline: every rate (base, model, change) and the KL (which exists
    only with a base)."""
    has_base = "base" in results["metrics"]
    header = ["metric", "base", "model", "change"] if has_base else ["metric", "model"]
    rows = [[label, fmt_rate(b), fmt_rate(m), _delta(b, m)] if has_base else [label, fmt_rate(m)] for label, b, m in headline_rows(results)]
    if "kl" in results:
        k = results["kl"]
        rows.append([kl_label, "", f"{k['mean']:.4f} [{k['ci95'][0]:.4f}–{k['ci95'][1]:.4f}] n={k['n']}", ""])
    return header, rows


def _aligned(lines: list[list[str]]) -> str:
    """Rows of cells as left-aligned text columns."""
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines)


def table(results: dict[str, Any]) -> str:
    """The headline table as aligned text (what ``rosi eval`` prints)."""
    header, rows = headline_table(results, "KL(base || model), first token")
    return _aligned([header, *rows])


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def write_report(results: dict[str, Any], out: Path, *, plots: bool = True) -> Path:
    """``OUT/report.md`` (and ``OUT/plots/*.png``); returns the report's path."""
    metrics = results["metrics"]
    roles = [r for r in ("base", "model") if r in metrics]
    lines = [
        "# rosi evaluation",
        "",
        f"- model: `{results['models']['model']['spec']}`" + (f" (base: `{results['models']['base']['spec']}`)" if "base" in roles else ""),
        f"- suite: {results['suite']}; judge for HR and jailbreak success: `{results['judge']}` (BC and over-refusal: refusal markers)",
        f"- greedy replies, {results['max_new_tokens']} new tokens, dtype {results.get('dtype', 'auto')}"
        + (f"; system prompt: {results['system_prompt']!r}" if results.get("system_prompt") else ""),
        f"- time: {results['seconds'].get('total', 0):.0f} s; rates with 95% Wilson intervals, KL with a 95% normal interval",
        "",
        "## Headline",
        "",
    ]
    lines += [_markdown_table(*headline_table(results, "KL(base ‖ model), first reply token (nats)")), ""]
    tasks = sorted({t for r in roles for t in metrics[r].get("utility", {})})
    if tasks:
        lines += ["## Utility (lm-evaluation-harness, zero-shot)", ""]
        urows = []
        for t in tasks:
            for key, name in (("accuracy", "acc"), ("accuracy_norm", "acc_norm")):
                cells = [metrics[r].get("utility", {}).get(t, {}).get(key) for r in roles]
                if any(cells):
                    urows.append([t, name, *(fmt_rate(c) for c in cells)])
        lines += [_markdown_table(["task", "metric", *roles], urows), ""]
    plot_files = _plots(results, out / "plots") if plots else {}
    if "rates" in plot_files:
        lines += ["![refusal rates](plots/rates.png)", ""]
    sections = (
        ("harm_refusal", "Harm refusal per category", "groups"),
        ("harm_refusal", "Harm refusal per source", "sources"),
        ("over_refusal", "Over-refusal per category", "groups"),
        ("jailbreak_success", "Jailbreak success per template", "groups"),
    )
    for key, title, part in sections:
        groups = sorted({g for r in roles for g in (metrics[r].get(key) or {}).get(part, {})})
        if not groups:
            continue
        lines += [f"## {title}", ""]
        lines += [_markdown_table(["group", *roles], [[g, *(fmt_rate(metrics[r][key][part].get(g)) for r in roles)] for g in groups]), ""]
        if key == "harm_refusal" and part == "groups" and "categories" in plot_files:
            lines += ["![harm refusal per category](plots/categories.png)", ""]
    if "kl" in results:
        k = results["kl"]
        lines += [
            "## KL divergence",
            "",
            f"Per-prompt KL(base ‖ model) of the first reply token on {k['n']} harmless prompts: mean {k['mean']:.4f}, "
            f"median {k['median']:.4f}, 90th percentile {k['p90']:.4f}, max {k['max']:.4f} nats.",
            "",
        ]
        if "kl" in plot_files:
            lines += ["![KL distribution](plots/kl.png)", ""]
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


def _plots(results: dict[str, Any], folder: Path) -> dict[str, Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    metrics = results["metrics"]
    roles = [r for r in ("base", "model") if r in metrics]
    files: dict[str, Path] = {}

    def save(fig, name: str) -> None:
        fig.tight_layout()
        files[name] = folder / f"{name}.png"
        fig.savefig(files[name], dpi=100)
        plt.close(fig)

    def bars(ax, labels: list[str], key_of) -> None:
        width = 0.8 / len(roles)
        for i, role in enumerate(roles):
            values, errs = [], [[], []]
            for label in labels:
                r = key_of(role, label)
                v = r["rate"] if r and r.get("rate") is not None else 0.0
                lo, hi = r["ci95"] if r and r.get("ci95") else (v, v)
                values.append(v)
                errs[0].append(v - lo)
                errs[1].append(hi - v)
            xs = [x + (i - (len(roles) - 1) / 2) * width for x in range(len(labels))]
            ax.bar(xs, values, width, yerr=errs, capsize=3, label=role)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=20, ha="right")
        ax.set_ylim(0, 1)
        ax.legend()

    keys = [(k, label) for k, label in HEADLINE if any(k in metrics[r] for r in roles)]
    if keys:
        fig, ax = plt.subplots(figsize=(8, 4))
        key_of_label = {label: k for k, label in keys}
        bars(ax, list(key_of_label), lambda role, label: metrics[role].get(key_of_label[label]))
        ax.set_ylabel("rate (95% Wilson interval)")
        ax.set_title("Before and after")
        save(fig, "rates")
    groups = sorted({g for r in roles for g in metrics[r].get("harm_refusal", {}).get("groups", {})})
    if groups:
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(groups)), 4))
        bars(ax, groups, lambda role, g: metrics[role]["harm_refusal"].get("groups", {}).get(g))
        ax.set_ylabel("harm refusal")
        save(fig, "categories")
    if "kl" in results and results["kl"].get("values"):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(results["kl"]["values"], bins=30)
        ax.set_xlabel("KL(base || model), first reply token (nats)")
        ax.set_ylabel("prompts")
        save(fig, "kl")
    return files


def compare(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str] = ("A", "B")) -> str:
    """Side-by-side headline figures of two evaluations (their evaluated models)."""
    rows_a = {label: m for label, _, m in headline_rows(a)}
    rows_b = {label: m for label, _, m in headline_rows(b)}
    labels = list(dict.fromkeys([*rows_a, *rows_b]))
    lines = [["metric", names[0], names[1], f"{names[1]} - {names[0]}"]]
    for label in labels:
        lines.append([label, fmt_rate(rows_a.get(label)), fmt_rate(rows_b.get(label)), _delta(rows_a.get(label), rows_b.get(label))])
    kls = [r.get("kl") for r in (a, b)]
    if any(kls):
        cells = [f"{k['mean']:.4f} n={k['n']}" if k else "–" for k in kls]
        diff = f"{kls[1]['mean'] - kls[0]['mean']:+.4f}" if all(kls) else "–"
        lines.append(["KL(base || model)", *cells, diff])
    info = [f"{n}: {r['models']['model']['spec']} (suite {r['suite']}, judge {r['judge']})" for n, r in zip(names, (a, b), strict=True)]
    return "\n".join(info) + "\n\n" + _aligned(lines)
