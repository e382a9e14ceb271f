"""How near `rosi run` is to the cost of its forward passes and tokens, on this machine.

Measures, in one process: a whole `rosi run` with every default (into a temporary folder), then
what a forward batch and a generated token cost here (:func:`rosi.workflows.speed.pass_costs`,
rosi's own paths), and each of the run's phases against the passes and tokens it needed
(:func:`rosi.workflows.speed.phase_limits`; target: within 3x), and its peak resident memory (the
operating system's, ``ru_maxrss``) against its weights in the compute dtype (target: 1.5x). The
CPU, whether it has native bfloat16, the dtype and the thread count are recorded with the figures.

Run: .venv/bin/python benchmarks/run_limits.py [--model SPEC] [--dtype auto|float32|bfloat16] [--name NAME]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from _common import add_model, add_name, write_results
from rosi import PromptSets, load, run
from rosi.judges import DEFAULT_NEW_TOKENS, GENERATION_BATCH, SEARCH_TOKENS
from rosi.model.costs import peak_rss_mb
from rosi.model.loading import cpu_has_fast_bf16
from rosi.workflows.options import DEFAULT_BATCH_SIZE, ExtractOptions, RunOptions
from rosi.workflows.speed import MEMORY_TARGET, pass_costs, phase_limits, weights_bytes


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model(parser)
    parser.add_argument("--dtype", default="auto", help="compute dtype, as rosi run takes it (default: %(default)s)")
    add_name(parser, __file__)
    args = parser.parse_args()

    start = time.perf_counter()
    loaded = load(args.model, device="cpu", dtype=args.dtype)
    load_s = time.perf_counter() - start
    sets = PromptSets.load()
    # the run first, so that the process's peak memory is the load's and the run's own
    with tempfile.TemporaryDirectory(prefix="rosi-run-limits-") as tmp:
        start = time.perf_counter()
        report = run(loaded, Path(tmp) / "out", sets, RunOptions(ExtractOptions(progress=False)))
        run_s = time.perf_counter() - start
    peak = peak_rss_mb() * 2**20
    # the edited model costs what the base does: the chosen edit stays applied for these passes
    texts = [*sets.val_harmful.instructions, *sets.val_harmless.instructions, *sets.val_lookalike.instructions]
    costs = pass_costs(
        loaded, texts, batch_size=DEFAULT_BATCH_SIZE, generation_batch=GENERATION_BATCH, lengths=(SEARCH_TOKENS, DEFAULT_NEW_TOKENS)
    )
    print(f"pass costs: {costs}", flush=True)
    phases = phase_limits(report.phases, costs, {"strength_search": SEARCH_TOKENS}, DEFAULT_NEW_TOKENS)
    weights = weights_bytes(loaded.model)
    print(report.phase_table(), flush=True)
    for row in phases:
        print(row, flush=True)
    write_results(
        args.name,
        {
            "model": args.model,
            "cpu": cpu_name(),
            "native_bf16": cpu_has_fast_bf16(),
            "dtype": str(loaded.model.dtype).removeprefix("torch."),
            "load_s": round(load_s, 1),
            "run_s": round(run_s, 1),
            "strength": report.strength,
            "rates": [r.to_json() | {"verdicts": None} for r in report.rates],
            "pass_costs": costs,
            "phases": phases,
            "memory": {
                "weights_gb": round(weights / 1e9, 3),
                "peak_rss_gb": round(peak / 1e9, 3),
                "times_the_weights": round(peak / weights, 2),
                "target_met": peak <= MEMORY_TARGET * weights,
            },
        },
    )


if __name__ == "__main__":
    main()
