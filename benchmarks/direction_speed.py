"""Direction extraction and selection cost on the real Qwen2.5-Coder-0.5B-Instruct.

1. Extraction as `rosi run --method METHOD` does it (mean outputs at the post-instruction
   positions of every layer and of every attention/MLP writer, and for `probe` the writers' mean
   inputs too, via hooks, float64 sums) against bare batched forward passes of the decoder over
   the same prompts. Target: <= 1.15x.
2. Selection as `rosi run` does it (first-order screen + exact scores for the best candidates,
   then the edit-effect fallback when none passes the filters) against a naive full
   Arditi grid (3 exact scores for every candidate outside the last 20% of layers): forward
   passes counted, and seconds (the grid's seconds are its pass count times the measured time of
   one pass; running it in full takes tens of minutes on this CPU).

Run: .venv/bin/python benchmarks/direction_speed.py [--model SPEC] [--method scale|probe|rosi] [--n-train 120] [--n-val 32] [--name NAME]
(e.g. --method probe --name direction_speed_probe; --model pypi:qwen2.5-coder-1.5b-instruct --name direction_speed_1.5b)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from _common import add_model, add_name, write_results
from rosi import load
from rosi.direction.activations import collect_activations
from rosi.direction.score import last_logprobs
from rosi.edit.methods import DEFAULT_METHOD, METHODS, EditForm, searchable_methods
from rosi.model.chat import ChatFormat
from rosi.model.costs import peak_rss_mb
from rosi.model.hooks import forward
from rosi.model.loading import compute_dtype
from rosi.prompts import PromptSets, builtin
from rosi.workflows.extract import extract
from rosi.workflows.options import ExtractOptions
from rosi.workflows.speed import timed

CPU = torch.device("cpu")  # every timing here is on the CPU


@torch.no_grad()
def bare_forward(model, fmt: ChatFormat, instructions, batch_size: int) -> None:
    for batch in fmt.batches(instructions, batch_size):
        forward(model.base_model, batch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model(parser)
    parser.add_argument("--n-train", type=int, default=64)
    parser.add_argument("--n-val", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", choices=searchable_methods(), default=DEFAULT_METHOD)
    add_name(parser, __file__)
    args = parser.parse_args()
    dtype = compute_dtype("auto", "cpu")  # what rosi run computes in here
    loaded = load(args.model, device="cpu", dtype=dtype)
    fmt = ChatFormat(loaded.tokenizer)
    n_pos = len(fmt.post_instruction_ids())
    prompts = builtin("harmful", "train").take(args.n_train).instructions + builtin("harmless", "train").take(args.n_train).instructions
    bare_forward(loaded.model, fmt, prompts[: args.batch_size], args.batch_size)  # warm-up
    writers = loaded.architecture.measurable_modules(loaded.model)
    read_inputs = METHODS[args.method].needs_reads
    bare, extraction = [], []
    for _ in range(args.repeats):  # interleaved, so drift on this shared machine hits both alike
        bare.append(timed(CPU, bare_forward, loaded.model, fmt, prompts, args.batch_size)[1])
        kw = dict(writers=writers, read_inputs=read_inputs, batch_size=args.batch_size)
        extraction.append(timed(CPU, collect_activations, loaded.model, fmt, prompts, n_pos, **kw)[1])
    bare_s, extract_s = statistics.median(bare), statistics.median(extraction)
    print(f"extraction over {len(prompts)} prompts: {extract_s:.1f} s; bare forward passes {bare_s:.1f} s; ratio {extract_s / bare_s:.3f}")

    vh = builtin("harmful", "val").take(args.n_val)
    vb = builtin("harmless", "val").take(args.n_val)
    t = time.perf_counter()
    last_logprobs(loaded.model, fmt, vh.instructions, args.batch_size)
    per_batch = (time.perf_counter() - t) / -(-len(vh) // args.batch_size)
    # Selection as `rosi run` does it (Arditi screen + exact scores, edit-effect fallback).
    sets = PromptSets(builtin("harmful", "train").take(args.n_train), builtin("harmless", "train").take(args.n_train), vh, vb)
    sel = extract(loaded, sets, ExtractOptions(form=EditForm(args.method), batch_size=args.batch_size)).selection
    peak = peak_rss_mb()
    assert sel is not None
    cost = sel.cost.to_json()
    naive_s = cost["naive_grid_forward_batches"] * per_batch
    print(
        f"selection: {cost['forward_batches']} forward + {cost['backward_batches']} backward batches, {cost['seconds']:.0f} s; "
        f"naive grid: {cost['naive_grid_forward_batches']} forward batches, about {naive_s:.0f} s "
        f"({cost['naive_grid_forward_batches'] / (cost['forward_batches'] + 2 * cost['backward_batches']):.1f}x the passes, counting a backward as two)"
    )
    print(f"chosen: layer {sel.layer}, position {sel.position}")
    path = write_results(
        args.name,
        {
            "model": args.model,
            "dtype": dtype,
            "peak_rss_mb": peak,
            "batch_size": args.batch_size,
            "extraction": {
                "prompts": len(prompts),
                "positions": n_pos,
                "method": args.method,
                "hooked_modules": loaded.architecture.num_layers + len(writers),
                "hooked_inputs": len(writers) if read_inputs else 0,
                "bare_forward_s": [round(x, 2) for x in bare],
                "extraction_s": [round(x, 2) for x in extraction],
                "ratio_median": round(extract_s / bare_s, 3),
                "target_met": extract_s / bare_s <= 1.15,
            },
            "selection": {
                "val_prompts_each": args.n_val,
                **cost,
                "seconds_per_forward_batch": round(per_batch, 2),
                "naive_grid_seconds_estimated": round(naive_s, 1),
                "chosen": {"layer": sel.layer, "position": sel.position},
            },
        },
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
