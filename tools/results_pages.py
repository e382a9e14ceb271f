"""Write the pages whose figures come from files: docs/results.md from benchmarks/results/, the
README's headline table from named result files, and docs/method.md's table from the methods
registry. So no figure in the docs can drift from the file it came from.

    python tools/results_pages.py           # (make docs) rewrite what is stale
    python tools/results_pages.py --check   # exit 1 naming each stale file, write nothing

Plain Python and json: no torch. Any result file renders: the kinds below get a table each, and
whatever else a file holds (an unknown kind included) is shown as its scalar fields. What every
result records about how it was made (benchmarks/_common.py: the ``command``, the ``commit`` and
whether src/ was ``dirty``, the ``rosi_version``) and the ``judge`` of its refusal figures are
shown compactly under its heading, not as fields.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RESULTS_PAGE = DOCS / "results.md"
METHOD_PAGE = DOCS / "method.md"

SKIP = {"benchmark", "date", "machine", "rows", "samples", "refused", "examples", "trials", "options", "front"}
PROVENANCE = ("command", "commit", "dirty", "rosi_version", "judge", "judge_spec")  # shown by provenance(), not as fields
LABEL_KEYS = ("label", "setting", "model")
MAX_DEPTH = 4


@dataclass(frozen=True)
class Row:
    """One row of the README's headline table: a row of a result file, by its label."""

    label: str  # a regular expression matched against the whole row label
    title: str


@dataclass(frozen=True)
class Headline:
    model: str
    file: str  # relative to benchmarks/results
    rows: tuple[Row, ...]


# The held-out evaluations behind the README's table: rosi run's default, the paper's form and
# rosi tune's pick (tune_eval, paired on the same prompts), and rosi realign on an abliterated model.
# The rows of a tune_eval file: the base, rosi run's default and the paper's form (the references
# every tune measures). The picks of the older rule (`--guard none`) are in docs/results.md only.
TUNE_ROWS = (
    Row(r"base model", "base model"),
    Row(r"trial \d+ \(default\).*", "`rosi run`'s default"),  # "(chosen)" follows where a tune kept it
    Row(r".*\(paper\)", "the paper's form"),
)
NEURONS_ROW = Row(r"neurons \(rosi run\)", "`rosi run --method neurons`")
HEADLINE = (
    Headline("0.5B", "tune_eval_qwen0.5b_twins.json", TUNE_ROWS),
    Headline("0.5B", "tune_eval_qwen0.5b_guard.json", (Row(r".*\(chosen\)", "`rosi tune`'s pick, seeds 0 and 2 (the default kept)"),)),
    Headline(
        "0.5B",
        "tune_eval_qwen0.5b_seed1.json",
        (Row(r".*\(chosen\)", "`rosi tune`'s pick, seed 1"), NEURONS_ROW),
    ),
    Headline(
        "0.5B",
        "tune_eval_qwen0.5b_tokens.json",
        (
            Row(r"gate, one position", "`rosi run --method gate` (read-out fit at one token per prompt)"),
            Row(r"gate, token-level", "`rosi run --method gate --fit-tokens` (fit on every token it acts on)"),
        ),
    ),
    Headline(
        "0.5B",
        "realign_eval_qwen0.5b_styles.json",
        (Row("abliterated", "abliterated"), Row(r"re-aligned \(broad fit\)", "`rosi realign` of it (fit on many styles, the default)")),
    ),
    Headline(
        "1.5B",
        "tune_eval_qwen1.5b_seed0.json",
        (
            TUNE_ROWS[0],
            replace(TUNE_ROWS[1], title="`rosi run`'s default, and `rosi tune`'s pick, seeds 0 and 1 (the default kept)"),
            TUNE_ROWS[2],
            NEURONS_ROW,
        ),
    ),
    Headline(
        "1.5B",
        "realign_eval_qwen1.5b_styles.json",
        (Row("abliterated", "abliterated"), Row(r"re-aligned \(default\)", "`rosi realign` of it (fit on many styles, the default)")),
    ),
)
# The same held-out replies under two judges (README, below the headline table): the marker judge's
# rows as tune_eval measured them, and the llm: judge's verdicts on the very same replies
# (benchmarks/rejudge.py), so a reader sees how much of each figure was the judge.
JUDGED = (
    Headline(
        "0.5B",
        "tune_eval_qwen0.5b_tokens.json",
        (Row(r"base model", "base model, marker judge"), Row(r"scale \(default\)", "`rosi run`'s default, marker judge")),
    ),
    Headline(
        "0.5B",
        "rejudge_qwen0.5b_llm1.5b.json",
        (
            Row(r"base model", "base model, `llm:` judge (Qwen2.5-Coder-1.5B-Instruct)"),
            Row(r"scale \(default\)", "`rosi run`'s default, `llm:` judge (Qwen2.5-Coder-1.5B-Instruct)"),
        ),
    ),
)
# What `rosi run` costs (README, beside the demo): benchmarks/run_limits.py's files, one per CPU and dtype.
COST = ("run_limits_qwen0.5b_bfloat16.json", "run_limits_qwen0.5b_float32.json")
# Each headline column and where a row keeps it (the first path that holds a rate).
COLUMNS = (
    ("harmful", (("harmful",),)),
    ("Alpaca", (("harmless",),)),
    ("JBB benign", (("jbb_benign",), ("contrast", "jailbreakbench-benign"))),
    ("CoCoNot contrast", (("coconot_contrast",), ("contrast", "coconot-contrast"))),
)


# ---- formatting -------------------------------------------------------------------------------


def is_rate(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("rate"), (int, float))


def interval(value: dict[str, Any]) -> list[float] | None:
    ci = value.get("wilson95", value.get("ci95"))
    return ci if isinstance(ci, list) and len(ci) == 2 else None


def fmt_rate(value: dict[str, Any], counts: bool = True) -> str:
    text = f"{value['rate']:.1%}"
    ci = interval(value)
    if ci is not None:
        text += f" [{ci[0] * 100:.0f}–{ci[1] * 100:.0f}]"
    if counts and "k" in value and "n" in value:
        text += f" ({value['k']}/{value['n']})"
    elif counts and "n" in value:
        text += f" (n={value['n']})"
    return text


def fmt(value: Any) -> str:
    if is_rate(value):
        return fmt_rate(value)
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value) if len(value) <= 8 and all(not isinstance(v, (dict, list)) for v in value) else ""
    if isinstance(value, dict):
        inner = {k: f"[{fmt(v)}]" if isinstance(v, list) else fmt(v) for k, v in value.items() if not isinstance(v, dict)}
        return ", ".join(f"{k}={v}" for k, v in inner.items() if v not in ("", "[]"))
    return str(value).replace("\n", "\\n").replace("|", "\\|")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell or "–" for cell in row) + " |" for row in rows]
    return lines + [""]


def link(path: Path, start: Path) -> str:
    return f"[{path.name}]({Path(os.path.relpath(path, start)).as_posix()})"


def label_of(row: dict[str, Any]) -> str:
    for key in LABEL_KEYS:
        if key in row:
            return fmt(row[key])
    return "–"


def describe(params: dict[str, Any]) -> str:
    """A trial's settings in words: ``surgical k 1.94, layer 17, middle writers, ridge 0.3``."""
    form = params.get("form")
    if not isinstance(form, str):
        return fmt(params)
    try:  # the strength's symbol from the registry (torch-free); a plain word without rosi
        from rosi.edit.methods import METHODS

        symbol = METHODS[form].symbol if form in METHODS else "strength"
    except ImportError:
        symbol = "strength"
    parts = [f"`{form}` {symbol} {number(params[f'{form}.strength'])}" if f"{form}.strength" in params else f"`{form}`"]
    if "layer" in params:
        parts.append(f"layer {params['layer']}")
    if f"{form}.scope" in params:
        parts.append(f"{params[f'{form}.scope']} writers")
    for key in ("ridge", "null_space"):
        if f"{form}.{key}" in params and params[f"{form}.{key}"] is not None:
            parts.append(f"{key.replace('_', ' ')} {number(params[f'{form}.{key}'])}")
    return ", ".join(parts)


def number(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else fmt(value)


# ---- the kinds of result file ----------------------------------------------------------------


def flatten(data: Any, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, str]]:
    """Scalar fields (and rates) of a nested dict, with dotted names; lists of records are left out."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key in SKIP and depth == 0 or key in ("samples", "examples", "refused"):
            continue
        if isinstance(value, dict) and not is_rate(value) and depth < MAX_DEPTH:
            yield from flatten(value, name + ".", depth + 1)
        elif fmt(value) != "":
            yield name, fmt(value)
        if is_rate(value):  # its parts, e.g. a harmful rate by source
            yield from ((f"{name}.{k}", fmt(v)) for k, v in value.items() if is_rate(v))


def rows_section(rows: list[Any]) -> list[str]:
    """``rows``: one row per model or setting; every rate, and every scalar, a column."""
    records = [r for r in rows if isinstance(r, dict)]
    columns: list[str] = []
    for r in records:
        for key, _ in flatten({k: v for k, v in r.items() if k not in LABEL_KEYS and k not in ("chosen_minus_this", "firing")}):
            if key not in columns and not key.startswith(("validation.", "params.")):
                columns.append(key)
    body = []
    for r in records:
        cells = dict(flatten(r))
        label = label_of(r) + (f": {describe(r['params'])}" if isinstance(r.get("params"), dict) else "")
        body.append([label] + [cells.get(c, "") for c in columns])
    lines = table(["row"] + columns, body) if columns else []
    paired = [(label_of(r), r["chosen_minus_this"]) for r in records if isinstance(r.get("chosen_minus_this"), dict)]
    if paired:
        sets = list(dict.fromkeys(s for _, p in paired for s in p))
        lines.append("The chosen row minus each row, on the same prompts (difference [95% interval], McNemar p):")
        lines.append("")
        lines += table(["row"] + sets, [[label] + [fmt_difference(p.get(s)) for s in sets] for label, p in paired])
    return lines


def firing_section(rows: list[Any]) -> list[str]:
    """Rows with a firing probe (benchmarks/firing.py): per edit and prompt set, the push at each
    segment, median / 90th percentile relative to the harmful prompts' deciding median; one table
    with the base model's replies teacher-forced, one with the edited model's own."""
    lines = []
    records = [r for r in rows if isinstance(r, dict) and isinstance(r.get("firing"), dict)]
    for whose, words in (("base", "the unedited model's replies"), ("edited", "the edited model's own replies")):
        probes = [(label_of(r), r["firing"][whose]) for r in records if isinstance(r["firing"].get(whose), dict)]
        if not probes:
            continue
        segments = list(dict.fromkeys(seg for _, f in probes for segs in f["sets"].values() for seg in segs))
        body = []
        for label, f in probes:
            ref = f["reference"]
            for name, segs in f["sets"].items():
                cells = [
                    f"{segs[seg]['p50'] / ref:+.2f} / {segs[seg]['p90'] / ref:+.2f}" if segs.get(seg, {}).get("n") else "–"
                    for seg in segments
                ]
                body.append([label, name] + cells)
        lines.append(f"Push per token along the direction, median / 90th percentile, in units of the harmful deciding median ({words}):")
        lines.append("")
        lines += table(["edit", "prompts", *segments], body)
    return lines


def fmt_difference(d: Any) -> str:
    if not isinstance(d, dict) or "difference" not in d:
        return ""
    ci = d.get("ci95") or [float("nan")] * 2
    return f"{d['difference'] * 100:+.1f} [{ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}], p {d.get('mcnemar_p', float('nan')):.2g}"


def eval_section(results: dict[str, Any]) -> list[str]:
    """A ``rosi eval`` results.json (or a benchmark that holds one): each metric by model."""
    metrics = results["metrics"]
    models = [m for m in metrics if isinstance(metrics[m], dict)]
    names: list[str] = []
    for m in models:
        names += [n for n, _ in flatten(metrics[m]) if n not in names and ".groups." not in n and not n.endswith("unjudged")]
    body = [[name] + [dict(flatten(metrics[m])).get(name, "") for m in models] for name in names]
    specs = results.get("models", {})
    header = ["metric"] + [f"{m} ({specs[m]['spec']})" if isinstance(specs.get(m), dict) and "spec" in specs[m] else m for m in models]
    return table(header, body)


def tune_section(report: dict[str, Any]) -> list[str]:
    """A ``rosi tune`` report: the base model, the references and every confirmed trial on validation."""
    objectives = ["harmful", "harmless", "lookalike", "kl"]
    base = report.get("base", {}).get("confirmed") or {}

    def cells(scores: dict[str, Any]) -> list[str]:
        values = {o: scores.get(o) for o in objectives}
        return ["" if not isinstance(v, (int, float)) else f"{v:.3f}" if o == "kl" else f"{v:.0%}" for o, v in values.items()]

    body = [["base model"] + cells(base)]
    for t in report.get("trials", []):
        if isinstance(t, dict) and t.get("confirmed"):
            mark = " (chosen)" if t.get("number") == report.get("chosen") else f" ({t['reference']})" if t.get("reference") else ""
            body.append([f"trial {t.get('number')}{mark}: {describe(t.get('params', {}))}"] + cells(t["confirmed"]))
    lines = [f"Chosen: {report.get('chosen_by', '–')}.", ""]
    lines += ["Validation prompts, full replies (share refused; KL in nats):", ""] if len(body) > 1 else []
    return lines + table(["trial", *objectives], body)


def section(path: Path, results: Path, page_dir: Path) -> list[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return [f"### {path.relative_to(results).as_posix()}", "", f"Not readable as JSON ({type(e).__name__}).", ""]
    name = path.relative_to(results).as_posix()
    lines = [f"### {name}", ""]
    if not isinstance(data, dict):
        return lines + [f"{link(path, page_dir)}: a JSON {type(data).__name__}, not a result record.", ""]
    inner = data.get("results") if isinstance(data.get("results"), dict) else data
    facts = [link(path, page_dir)] + [f"{k} {data[k]}" for k in ("date",) if isinstance(data.get(k), str)]
    facts += provenance(data, inner)
    facts += [f"[{f.relative_to(results).as_posix()}]({Path(os.path.relpath(f, page_dir)).as_posix()})" for f in companions(path, results)]
    lines += [" · ".join(facts), ""]
    lines += made_by(data, inner)
    try:
        lines += known_tables(data, inner)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as e:  # a known kind in a layout this page does not know
        lines += [f"(Its tables did not render: {type(e).__name__}; its fields follow.)", ""]
    rest = [
        [k, v] for k, v in flatten({k: v for k, v in data.items() if k not in ("results", "base", "objectives", "scores", *PROVENANCE)})
    ]
    if inner is not data:
        rest += [[f"results.{k}", v] for k, v in flatten({k: v for k, v in inner.items() if k not in ("metrics", "models", *PROVENANCE)})]
    return lines + (table(["field", "value"], rest) if rest else [])


def provenance(data: dict[str, Any], inner: dict[str, Any]) -> list[str]:
    """What a result measured, for its heading's line: ``rosi 0.2.0 at 1a2b3c4d5e`` (``, src/
    modified`` when the library had uncommitted changes). A rosi eval result keeps its version
    inside ``results``."""
    version = next((d["rosi_version"] for d in (data, inner) if isinstance(d.get("rosi_version"), str)), None)
    commit = data.get("commit")
    parts = [f"rosi {version}"] if version else []
    if isinstance(commit, str) and commit:
        parts.append(f"at {commit[:10]}" + (", src/ modified" if data.get("dirty") else ""))
    return [" ".join(parts)] if parts else []


def made_by(data: dict[str, Any], inner: dict[str, Any]) -> list[str]:
    """The judge of a result's refusal figures and the command that wrote it, a paragraph each."""
    lines = []
    judge = next((d["judge"] for d in (data, inner) if d.get("judge") not in (None, "")), None)
    if judge is not None:
        text, spec = fmt(judge), data.get("judge_spec")
        lines.append(f"Judge: {text}" + (f" (`--judge {spec}`)" if isinstance(spec, str) and spec not in text else "") + ".")
    if isinstance(data.get("command"), str) and data["command"]:
        tick = "``" if "`" in data["command"] else "`"
        lines.append(f"Command: {tick}{data['command']}{tick}")
    return [x for line in lines for x in (line, "")]


def known_tables(data: dict[str, Any], inner: dict[str, Any]) -> list[str]:
    lines = []
    if isinstance(inner.get("metrics"), dict):
        lines += eval_section(inner)
    if isinstance(data.get("trials"), list) and "chosen" in data:
        lines += tune_section(data)
    if isinstance(data.get("rows"), list):
        lines += firing_section(data["rows"])
        lines += rows_section(data["rows"])
    return lines


def companions(path: Path, results: Path) -> list[Path]:
    """Files that belong with a result: what sits beside it in its own folder (notes, plots,
    fronts), its plot, and every note elsewhere that names it."""
    if path.parent != results:
        return [p for p in sorted(path.parent.iterdir()) if p.suffix in (".png", ".csv", ".md")]
    notes = [n for n in notes_files(results) if n.parent.parent == results and path.name in n.read_text(encoding="utf-8")]
    return [p for p in (path.with_suffix(".png"),) if p.is_file()] + notes


def notes_files(results: Path) -> list[Path]:
    return sorted(results.rglob("NOTES.md"))


def notes_index(results: Path, page_dir: Path) -> list[str]:
    """Every note, by its title: what each run tried and what it showed, in the words of its time."""
    rows = []
    for note in notes_files(results):
        lines = note.read_text(encoding="utf-8").splitlines()
        title = lines[0].lstrip("# ").strip() if lines else note.parent.name
        rows.append([f"[{note.relative_to(results).as_posix()}]({Path(os.path.relpath(note, page_dir)).as_posix()})", title])
    return ["## Notes", "", *table(["note", "about"], rows)] if rows else []


def purpose(script: Path) -> str:
    """The first sentence of a benchmark script's docstring (read, not imported), "" without one."""
    try:
        doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8")))
    except (OSError, SyntaxError, ValueError):
        return ""
    first = " ".join((doc or "").split("\n\n")[0].split())
    sentence = re.split(r"(?<=[.?])\s|:\s", first, maxsplit=1)[0].rstrip(".")
    return sentence[: sentence.rindex("(")].rstrip() if sentence.count("(") > sentence.count(")") else sentence


def experiments_index(results: Path, page_dir: Path) -> list[str]:
    """One row per experiment: each result file with its date, the commit it measured, one line
    (what its script measures) and the notes that name it; then each run folder with its note's title."""
    notes = {n: n.read_text(encoding="utf-8") for n in notes_files(results)}

    def note_link(note: Path) -> str:
        return f"[{note.parent.relative_to(results).as_posix()}]({Path(os.path.relpath(note, page_dir)).as_posix()})"

    rows = []
    for path in sorted(results.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        data = data if isinstance(data, dict) else {}
        commit, date = data.get("commit"), data.get("date")
        named = ", ".join(note_link(n) for n, text in notes.items() if n.parent.parent == results and path.name in text)
        rows.append(
            [
                link(path, page_dir),
                date if isinstance(date, str) else "–",
                f"`{commit[:10]}`" if isinstance(commit, str) and commit else "–",
                purpose(results.parent / f"{kind(path, results)}.py"),
                named,
            ]
        )
    for folder in sorted(p for p in results.iterdir() if p.is_dir()):
        note = folder / "NOTES.md"
        title = (notes[note].splitlines() or [""])[0].lstrip("# ").strip() if note in notes else ""
        target = note if note in notes else folder
        rows.append([f"[{folder.name}/]({Path(os.path.relpath(target, page_dir)).as_posix()})", "–", "–", title, ""])
    return ["## Index", "", *table(["experiment", "date", "at commit", "what", "notes"], rows)] if rows else []


def kind(path: Path, results: Path) -> str:
    """What a file is, for grouping: the benchmark script its name starts with, else its name up to
    a model or run qualifier."""
    stem = path.stem if path.parent == results else path.parent.name
    scripts = sorted((p.stem for p in results.parent.glob("*.py") if stem.startswith(p.stem)), key=len)
    return scripts[-1] if scripts else re.split(r"_(?:qwen|\d)", stem)[0]


def render_results_page(results: Path = RESULTS, page_dir: Path = DOCS) -> str:
    files = sorted(p for p in results.rglob("*.json") if p.is_file())
    lines = [
        "# Results",
        "",
        "<!-- Generated by tools/results_pages.py from benchmarks/results/ (make docs): do not edit by hand. -->",
        "",
        "Every figure here is read from a result file in `benchmarks/results/`, written by the benchmark",
        "script of the same name in `benchmarks/`. Rates are shares of prompts, with a 95% Wilson interval",
        "in brackets and the count in parentheses where the file has them. Where a run has notes on what",
        "it tried and what it showed, they sit beside it (`NOTES.md`) and are linked from its section.",
        "",
    ]
    groups: dict[str, list[Path]] = {}
    for path in files:
        groups.setdefault(kind(path, results), []).append(path)
    lines += ["| kind | files |", "|---|---|"]
    lines += [f"| [{k}](#{k}) | {len(v)} |" for k, v in groups.items()] + [""]
    lines += experiments_index(results, page_dir)
    for k, paths in groups.items():
        lines += [f"## {k}", ""]
        for path in paths:
            lines += section(path, results, page_dir)
    lines += notes_index(results, page_dir)
    return "\n".join(lines).rstrip("\n") + "\n"


# ---- the README's headline table and the methods table ---------------------------------------


def headline_table(results: Path = RESULTS, page_dir: Path = ROOT, headline: tuple[Headline, ...] = HEADLINE) -> str:
    body = []
    for h in headline:
        path = results / h.file
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
        except (OSError, ValueError, KeyError, TypeError):
            body.append([h.model, f"not measured: `{h.file}` is missing or unreadable", "", "", "", "", "", ""])
            continue
        for want in h.rows:
            row = next((r for r in rows if isinstance(r, dict) and re.fullmatch(want.label, label_of(r))), None)
            if row is None:
                body.append([h.model, f"{want.title}: no row {want.label!r} in {link(path, page_dir)}", "", "", "", "", "", ""])
                continue
            title = want.title + (f": {describe(row['params'])}" if isinstance(row.get("params"), dict) else "")
            rates = [headline_rate(row, paths) for _, paths in COLUMNS]
            n = " / ".join(str(r["n"]) if r and "n" in r else "–" for r in rates)
            body.append([h.model, title] + [fmt_rate(r, counts=False) if r else "" for r in rates] + [n, link(path, page_dir)])
    header = ["model", "edit"] + [c for c, _ in COLUMNS] + ["prompts", "from"]
    return "\n".join(table(header, body)).rstrip("\n")


def cost_table(results: Path = RESULTS, page_dir: Path = ROOT, files: tuple[str, ...] = COST) -> str:
    """`rosi run`'s wall time, each phase against the cost of its passes and tokens, and its peak
    memory against its weights, one row per benchmarks/run_limits.py file."""
    body = []
    for name in files:
        path = results / name
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            cpu = f"{d['cpu']}, {d['machine']['threads']} threads, {'native' if d['native_bf16'] else 'no native'} bf16"
            phases = ", ".join(
                f"{p['phase']} {p['seconds']:.0f} s" + ("" if p["times_the_limit"] is None else f" ({p['times_the_limit']:.2f}x)")
                for p in d["phases"]
            )
            memory = f"{d['memory']['peak_rss_gb']:.2f} GB ({d['memory']['times_the_weights']:.2f}x the weights)"
            body.append([d["model"], cpu, d["dtype"], f"{d['run_s']:.0f} s", phases, memory, link(path, page_dir)])
        except (OSError, ValueError, KeyError, TypeError):
            body.append([f"not measured: `{name}` is missing or unreadable", "", "", "", "", "", ""])
    header = ["model", "CPU", "dtype", "`rosi run`", "phases (times the cost of their forward passes and tokens)", "peak memory", "from"]
    return "\n".join(table(header, body)).rstrip("\n")


def headline_rate(row: dict[str, Any], paths: tuple[tuple[str, ...], ...]) -> dict[str, Any] | None:
    for keys in paths:
        value: Any = row
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if is_rate(value):
            return value
    return None


def methods_block() -> str:
    from rosi.edit.methods import methods_table

    return methods_table()


def between(text: str, name: str, body: str, where: Path) -> str:
    """``text`` with what lies between ``<!-- name:begin -->`` and ``<!-- name:end -->`` replaced by ``body``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise SystemExit(f"results_pages: {where} needs one {begin} line and one {end} line after it")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def expected() -> dict[Path, str]:
    """Each generated file and what it should hold now."""
    return {
        RESULTS_PAGE: render_results_page(),
        README: between(
            between(
                between(README.read_text(encoding="utf-8"), "results", headline_table(), README),
                "judges",
                headline_table(headline=JUDGED),
                README,
            ),
            "cost",
            cost_table(),
            README,
        ),
        METHOD_PAGE: between(METHOD_PAGE.read_text(encoding="utf-8"), "methods", methods_block(), METHOD_PAGE),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each stale file")
    args = parser.parse_args(argv)
    stale = []
    for path, text in expected().items():
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text, encoding="utf-8")
            print(f"results_pages: wrote {path.relative_to(ROOT)}")
    if args.check and stale:
        for path in stale:
            print(f"results_pages: {path.relative_to(ROOT)} is stale; run `make docs`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
