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
  (:mod:`rosi.eval.utility`).

Every rate has its n and a 95% Wilson interval; the KL mean a 95% normal interval
(:mod:`rosi.eval.results`). Replies are cached in ``OUT/generations.jsonl``
(:mod:`rosi.eval.cache`): a run that stops resumes where it stopped, and another judge re-scores
without generating again.
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from rosi._fs import atomic_file
from rosi._version import __version__
from rosi.errors import EvalError, NotCausalLMError
from rosi.eval.cache import GenerationCache
from rosi.eval.report import write_report
from rosi.eval.results import EvalResults, KLSummary, ModelMetrics, SetSummary, UtilityScore
from rosi.eval.scoring import score
from rosi.eval.suites import ROLES, Item, Suite, build_sets, get_suite
from rosi.eval.utility import parse_tasks, prepare_local_tasks, run_utility
from rosi.judges import Judge, make_judge
from rosi.measure import check_judge
from rosi.metrics import kl_divergence
from rosi.model.chat import ChatFormat
from rosi.model.context import check_fits
from rosi.model.endpoint import Endpoint, parse_spec
from rosi.model.generation import Generator, LocalGenerator, ServerGenerator, next_token_logprobs
from rosi.model.loading import LoadedModel, LoadOptions, compute_dtype, load

GENERATIONS = "generations.jsonl"
SETUP = "eval_setup.json"
Log = Callable[[str], None]


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class EvalOptions:
    """What :func:`evaluate` measures and how (CLI: ``rosi eval``'s options)."""

    suite: str | Suite = "quick"
    judge: str = "markers"  # of harm refusal and jailbreak success (see rosi.judges)
    data_dir: str | Path | None = None  # the public datasets' folder; None: hub sources
    overrides: dict[str, str] = field(default_factory=dict)  # role -> prompt spec, replacing the suite's sources
    jailbreak_templates: str | None = None  # a template file or folder replacing the suite's
    n: int | None = None  # at most n prompts per role
    utility: str | None = None  # lm-eval tasks (see rosi.eval.utility.parse_tasks); None: the suite's; "": none
    kl: bool = True
    system_prompt: str | None = None
    max_new_tokens: int | None = None  # None: the suite's
    batch_size: int = 32
    utility_batch_size: int = 16
    load: LoadOptions = field(default_factory=LoadOptions)
    overwrite: bool = False  # start afresh (only ever deletes a rosi evaluation folder)
    progress: bool = True
    plots: bool = True

    def __post_init__(self) -> None:
        for name, lowest in (("n", 1), ("max_new_tokens", 1), ("batch_size", 1), ("utility_batch_size", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < lowest):
                raise EvalError(f"{name} must be a whole number >= {lowest}, got {value!r}")


@dataclass
class EvalResult:
    out: Path
    results: EvalResults
    report: Path
    generated: dict[str, int] = field(default_factory=dict)


@dataclass
class _Plan:
    """An evaluation's inputs, resolved and checked before any model is loaded."""

    suite: Suite
    data: Path | None
    new_tokens: int
    dtype: str
    hub_tasks: dict[str, int | None]
    local_tasks: dict[str, int | None]
    sets: dict[str, list[Item]]
    judge: Judge | None  # None: built after generation (a local Llama Guard's weights)


@dataclass
class _ModelOutputs:
    generated: int = 0
    logprobs: torch.Tensor | None = None
    utility: dict[str, UtilityScore] | None = None


def evaluate(
    model: ModelSpec | str, *, out: str | Path, base: ModelSpec | str | None = None, options: EvalOptions | None = None, log: Log = print
) -> EvalResult:
    """Evaluate ``model`` (and ``base``, for before/after and KL); write ``results.json``,
    ``generations.jsonl`` and ``report.md`` (+ plots) to ``out``."""
    options = options or EvalOptions()
    started = time.perf_counter()
    models = {"model": _spec(model)} if base is None else {"base": _spec(base), "model": _spec(model)}
    plan = _plan(options, log)
    out = Path(out)
    setup = {
        "models": {k: v.fingerprint() for k, v in models.items()},
        "max_new_tokens": plan.new_tokens,
        "system_prompt": options.system_prompt,
        "dtype": plan.dtype,
    }
    cached = out / GENERATIONS
    for role, m in models.items():  # every server with replies to generate answers, before anything is written
        if m.server and (options.overwrite or not cached.is_file() or _todo(GenerationCache(cached), role, plan)):
            Endpoint(*parse_spec(m.server)).check_reachable()
    for m in models.values():
        _check_folder(m)
    if options.kl and base is not None:
        _check_vocabularies(models)
    made = [p for p in (out, *out.parents) if not p.exists()]  # the folders this evaluation makes
    _prepare_out(out, setup, options.overwrite, [Path(m.spec) for m in models.values() if m.spec])
    try:
        return _evaluate(models, plan, out, options, started, log)
    except BaseException:
        _drop_if_empty(out, made)
        raise


def _evaluate(models: dict[str, ModelSpec], plan: _Plan, out: Path, options: EvalOptions, started: float, log: Log) -> EvalResult:
    """Everything after the output folder is prepared: generate, measure, judge, write."""
    base = models.get("base")
    cache = GenerationCache(out / GENERATIONS)
    seconds: dict[str, float] = {}
    outputs: dict[str, _ModelOutputs] = {}
    for role, m in models.items():
        t = time.perf_counter()
        outputs[role] = _run_model(role, m, plan, cache, options, out, want_kl=options.kl and base is not None, log=log)
        seconds[role] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    judge = plan.judge or make_judge(options.judge)
    metrics = {role: _metrics(plan.sets, cache, role, judge, outputs[role].utility) for role in models}
    seconds["judge"] = round(time.perf_counter() - t, 1)
    lp = {role: o.logprobs for role, o in outputs.items() if o.logprobs is not None}
    results = EvalResults(
        rosi_version=__version__,
        suite=plan.suite.name,
        judge=options.judge,
        models={k: {"spec": v.spec, "server": v.server} for k, v in models.items()},
        max_new_tokens=plan.new_tokens,
        system_prompt=options.system_prompt,
        dtype=plan.dtype,
        sets={r: _set_summary(items) for r, items in plan.sets.items()},
        metrics=metrics,
        kl=_kl(lp, models) if {"base", "model"} <= set(lp) else None,
        seconds={**seconds, "total": round(time.perf_counter() - started, 1)},
        generated={role: o.generated for role, o in outputs.items()},
    )
    _write_json(out / "results.json", results.to_json())
    _write_generations_view(out, plan.sets, cache, models)
    report = write_report(results, out, plots=options.plots)
    return EvalResult(out, results, report, results.generated)


def _kl(logprobs: dict[str, torch.Tensor], models: dict[str, ModelSpec]) -> KLSummary:
    """KL(base || model) of the first reply token, once both distributions are over one vocabulary."""
    base, model = logprobs["base"], logprobs["model"]
    if base.shape != model.shape:
        raise EvalError(
            f"--base {models['base'].spec} predicts over {base.shape[-1]} tokens and {models['model'].spec} over {model.shape[-1]}: "
            "the KL needs one vocabulary; pass the model's own base, or --no-kl (the replies are cached: rerunning is quick)"
        )
    return KLSummary.of(kl_divergence(base, model).tolist())


def _check_folder(spec: ModelSpec) -> None:
    """A local folder given as a model is a model folder: refused before anything is written or
    any other model is loaded and generated from (the rest is checked when it loads)."""
    path = Path(spec.spec).expanduser()
    if not spec.server and spec.spec and path.is_dir() and not (path / "config.json").is_file():
        raise NotCausalLMError(f"{path} has no config.json, so it is not a Hugging Face model folder")


def _vocabulary(spec: ModelSpec) -> int | None:
    """The vocabulary size a local checkpoint folder's config.json gives (None: not a local folder, or it does not say)."""
    config = Path(spec.spec).expanduser() / "config.json"
    if spec.server or not spec.spec or not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # loading the model names the problem
    found = data.get("vocab_size") if isinstance(data, dict) else None
    if found is None and isinstance(data, dict) and isinstance(data.get("text_config"), dict):
        found = data["text_config"].get("vocab_size")
    return found if isinstance(found, int) and not isinstance(found, bool) else None


def _check_vocabularies(models: dict[str, ModelSpec]) -> None:
    """A base of another vocabulary cannot give a KL: refused before anything is loaded or written
    (for local folders; other sources are checked when both distributions are there, by :func:`_kl`)."""
    base, model = _vocabulary(models["base"]), _vocabulary(models["model"])
    if base is not None and model is not None and base != model:
        raise EvalError(
            f"--base {models['base'].spec} has a vocabulary of {base} tokens and {models['model'].spec} one of {model}: the KL "
            "compares their next-token distributions and needs one vocabulary; pass the model's own base, or --no-kl"
        )


def _drop_if_empty(out: Path, made: Sequence[Path]) -> None:
    """After a failed evaluation, remove what it wrote when it holds no reply (nothing to resume):
    the setup file, and the folders made for it. A folder with cached replies stays, to resume."""
    cache = out / GENERATIONS
    if cache.is_file() and cache.stat().st_size > 0:
        return
    if out.is_dir() and {p.name for p in out.iterdir()} <= {SETUP, GENERATIONS}:
        for name in (SETUP, GENERATIONS):
            (out / name).unlink(missing_ok=True)
    for folder in made:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            break


def _plan(options: EvalOptions, log: Log) -> _Plan:
    suite = get_suite(options.suite)
    data = Path(options.data_dir) if options.data_dir else None
    if data is not None and not data.is_dir():
        raise EvalError(f"--data {data} is not a folder; point it at a folder of public datasets (see docs/eval.md)")
    # fail early on a bad judge spec, before hours of generation; a local Llama Guard (weights to
    # load) is built only when the replies are there, so it does not sit in memory meanwhile
    judge = check_judge(options.judge)
    utility = options.utility
    if utility is None:
        utility = suite.utility if data is not None or suite.utility_hub is None else suite.utility_hub
    hub_tasks, local_tasks = parse_tasks(utility)
    if local_tasks and data is None:
        raise EvalError(
            "the local utility tasks need --data (a folder with mmlu/, arc/, hellaswag/); or pass --utility none or lm-eval task names"
        )
    sets = build_sets(suite, data, overrides=options.overrides, n=options.n, jailbreak_templates=options.jailbreak_templates)
    if not sets["jailbreak"]:
        log("rosi eval: no jailbreak templates (pass --data or --jailbreak-templates): jailbreak success is not measured")
    new_tokens = options.max_new_tokens or suite.max_new_tokens
    return _Plan(suite, data, new_tokens, compute_dtype(options.load.dtype, options.load.device), hub_tasks, local_tasks, sets, judge)


def _todo(cache: GenerationCache, role: str, plan: _Plan) -> int:
    return sum(len(cache.missing(role, [i.prompt for i in items])) for items in plan.sets.values())


def _run_model(
    role: str, m: ModelSpec, plan: _Plan, cache: GenerationCache, options: EvalOptions, out: Path, *, want_kl: bool, log: Log
) -> _ModelOutputs:
    """Generate what is not cached yet, and (with the weights in process) the KL distributions and utility."""
    result = _ModelOutputs()
    wants_utility = bool(plan.hub_tasks or plan.local_tasks)
    todo = _todo(cache, role, plan)
    loaded: LoadedModel | None = None
    generator: Generator | None = None
    if m.server:
        generator = ServerGenerator(Endpoint(*parse_spec(m.server)), options.system_prompt)
    elif todo or want_kl or wants_utility:
        log(f"rosi eval: loading {role} {m.spec}")
        loaded = load(m.spec, **asdict(replace(options.load, dtype=plan.dtype)))
        fmt = ChatFormat(loaded.tokenizer, options.system_prompt)
        _check_fit(loaded, fmt, plan, m.spec)
        generator = LocalGenerator(loaded.model, fmt, options.batch_size)
    for set_role in ROLES:
        prompts = [i.prompt for i in plan.sets[set_role]]
        if prompts and generator is not None:  # None: nothing to generate (all cached)
            result.generated += cache.fill(
                role, prompts, generator, max_new_tokens=plan.new_tokens, desc=f"{role}: {set_role}", progress=options.progress
            )
    if loaded is not None and want_kl:
        kl_prompts = [i.prompt for i in plan.sets["harmless"]][: plan.suite.kl_prompts or None]
        fmt = ChatFormat(loaded.tokenizer, options.system_prompt)
        result.logprobs = next_token_logprobs(
            loaded.model, fmt, kl_prompts, batch_size=options.batch_size, progress=options.progress, desc=f"{role}: KL"
        )
    if wants_utility:
        if loaded is None:
            log(f"rosi eval: utility skipped for {role}: it is generated by a server (lm-eval needs the weights in process)")
        else:
            result.utility = _utility(loaded, role, plan, out, options.utility_batch_size)
    del loaded
    gc.collect()
    return result


def _check_fit(loaded: LoadedModel, fmt: ChatFormat, plan: _Plan, spec: str) -> None:
    """Every prompt and its reply fit the model's context, checked before any batch is built (a
    prompt past it fails its forward pass, or asks for memory for all of it)."""
    for role in ROLES:
        prompts = [i.prompt for i in plan.sets[role]]
        check_fits(loaded.model, fmt, prompts, new_tokens=plan.new_tokens, what=f"the {role} prompts", name=spec)


def _metrics(
    sets: dict[str, list[Item]], cache: GenerationCache, role: str, judge: Judge, utility: dict[str, UtilityScore] | None
) -> ModelMetrics:
    replies = {r: cache.get(role, [i.prompt for i in sets[r]]) for r in ROLES}
    metrics = score(sets, replies, judge)
    return metrics if utility is None else replace(metrics, utility=utility)


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


def _utility(loaded: LoadedModel, role: str, plan: _Plan, out: Path, batch_size: int) -> dict[str, UtilityScore]:
    """lm-eval results of one model, cached in ``OUT/utility_ROLE.json`` for the same task list."""
    key = {"hub": plan.hub_tasks, "local": plan.local_tasks}
    cached = out / f"utility_{role}.json"
    if cached.exists():
        try:
            saved = json.loads(cached.read_text(encoding="utf-8"))
            if saved.get("tasks") == key:
                return {t: UtilityScore.from_json(u) for t, u in saved["results"].items()}
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
            pass
    assert plan.data is not None or not plan.local_tasks  # checked by _plan
    configs = prepare_local_tasks(plan.local_tasks, plan.data, out / "utility_tasks") if plan.local_tasks and plan.data else []
    results = run_utility(loaded, hub_tasks=plan.hub_tasks, local_configs=configs, batch_size=batch_size)
    _write_json(cached, {"tasks": key, "results": {t: u.to_json() for t, u in results.items()}})
    return results


def _set_summary(items: list[Item]) -> SetSummary:
    by: dict[str, int] = defaultdict(int)
    for i in items:
        by[i.source] += 1
    return SetSummary(len(items), dict(by))


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
