"""The commands that evaluate: ``rosi eval`` and ``rosi compare``."""

from __future__ import annotations

import argparse
import json
import os
import time

from rosi.cli.common import int_at_least, judge_arg, model_args
from rosi.cli.sources import load_options, text_or_file
from rosi.eval.suites import SUITES
from rosi.judges import DEFAULT_NEW_TOKENS
from rosi.workflows.options import DEFAULT_BATCH_SIZE

DEFAULT_SUITE = "quick"
EVAL_DESCRIPTION = (
    "Evaluate MODEL (and BASE, for before/after and KL) on a suite of public prompt sets and benchmarks. "
    "Writes results.json, replies.jsonl, report.md and plots to --out. Generations are cached there: an interrupted "
    "run resumes, and another --judge re-scores without generating again."
)


def eval_args(p: argparse.ArgumentParser) -> None:
    model_args(p, compute=True)
    p.add_argument("--base", metavar="BASE", default=None, help="the model before the edit: before/after figures and the KL")
    p.add_argument("--out", required=True, metavar="DIR", help="results folder (a rosi evaluation folder is resumed)")
    p.add_argument(
        "--suite", choices=tuple(SUITES), default=DEFAULT_SUITE, help="which sets and sizes (default: %(default)s; see docs/eval.md)"
    )
    judge_arg(p, "harm refusal and jailbreak success")
    p.add_argument(
        "--data",
        metavar="DIR",
        default=os.environ.get("ROSI_DATA"),
        help="folder of public datasets in the layout of docs/eval.md's Suites and data ($ROSI_DATA); without it, prompt sets "
        "come from the Hugging Face hub",
    )
    for role in ("harmful", "harmless", "contrast"):
        p.add_argument(f"--{role}", metavar="SPEC", default=None, help=f"replace the suite's {role} prompts (file, hf:ID, xstest:CSV)")
    p.add_argument("--jailbreak-templates", metavar="PATH", default=None, help="jailbreak template file or folder (replaces the suite's)")
    p.add_argument("--n", type=int_at_least(1), default=None, help="at most N prompts per set (for a quick look)")
    p.add_argument(
        "--utility",
        default=None,
        metavar="TASKS",
        help="lm-eval tasks, e.g. 'mmlu,hellaswag' (hub) or 'local:mmlu:100,local:arc_easy:50' (offline, from --data), or 'none' (default: the suite's)",
    )
    p.add_argument("--no-kl", action="store_true", help="skip the KL divergence")
    p.add_argument("--server", metavar="openai:URL[#MODEL]", default=None, help="generate MODEL's replies with an OpenAI-compatible server")
    p.add_argument("--base-server", metavar="openai:URL[#MODEL]", default=None, help="generate BASE's replies with a server")
    p.add_argument("--system-prompt", default=None, metavar="TEXT|FILE", help="system prompt for every reply")
    p.add_argument(
        "--max-new-tokens", type=int_at_least(1), default=None, help=f"tokens per reply (default: the suite's, {DEFAULT_NEW_TOKENS})"
    )
    p.add_argument(
        "--batch-size", type=int_at_least(1), default=DEFAULT_BATCH_SIZE, help="prompts per generation batch (default: %(default)s)"
    )
    p.add_argument("--no-plots", action="store_true", help="write the report without plots")
    p.add_argument("--overwrite", action="store_true", help="start afresh: delete the evaluation folder's cache and results")


def cmd_eval(args: argparse.Namespace) -> int:
    from rosi.eval.evaluate import EvalOptions, ModelSpec, evaluate
    from rosi.eval.report import table

    started = time.perf_counter()
    options = EvalOptions(
        suite=args.suite,
        judge=args.judge,
        data_dir=args.data,
        overrides={r: getattr(args, r) for r in ("harmful", "harmless", "contrast") if getattr(args, r)},
        jailbreak_templates=args.jailbreak_templates,
        n=args.n,
        utility="" if args.utility == "none" else args.utility,
        kl=not args.no_kl,
        system_prompt=text_or_file(args.system_prompt),
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        load=load_options(args),
        overwrite=args.overwrite,
        plots=not args.no_plots,
    )
    base = None if args.base is None and args.base_server is None else ModelSpec(args.base or "", args.base_server)
    result = evaluate(ModelSpec(args.model, args.server), out=args.out, base=base, options=options)
    print()
    print(table(result.results))
    print()
    generated = ", ".join(f"{k} {v}" for k, v in result.generated.items())
    print(f"rosi: evaluated in {time.perf_counter() - started:.0f} s (replies generated now: {generated}); report: {result.report}")
    return 0


def compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", metavar="RESULT_A", help="an evaluation folder or its results.json")
    p.add_argument("b", metavar="RESULT_B", help="another one")
    p.add_argument("--json", action="store_true", help="print both headline rows as JSON")


def cmd_compare(args: argparse.Namespace) -> int:
    from rosi.eval.report import compare, headline_rows
    from rosi.eval.results import load_results

    a, b = load_results(args.a), load_results(args.b)
    if args.json:
        rows = {name: {label: m.to_json() if m else None for label, _, m in headline_rows(r)} for name, r in (("a", a), ("b", b))}
        print(json.dumps(rows, indent=2))
    else:
        print(compare(a, b))
    return 0
