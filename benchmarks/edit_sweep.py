"""Held-out refusal rates for many edit settings at once (an exploration tool, not a tuner).

Extracts the directions once (float32, rosi's built-in training prompts, writer outputs and
inputs at the post-instruction positions), then for each setting applies the edit to a bfloat16
copy of the model, generates greedy replies to the held-out harmful prompts of
`refusal_eval.py` (and, when harmful refusal reaches --min-harmful, to its harmless prompts),
judges them through rosi.measure (the refusal markers), and reverts. bfloat16 generation is
about 2.5x faster than float32 on CPUs with native bf16; rates can differ from float32 by a
prompt or two.

Settings are JSON objects: {"method": "scale"|"probe"|"rosi", "k": STRENGTH, "layer": 14,
"position": -1, "scope": "selective"|"all", "ratio": 0.25, "layers": [LO, HI]} (probe: the
writers of layers LO..HI-1; default rosi's own choice).

These prompts are held out from rosi: choosing defaults from this sweep would tune on the test
set. The README's exploration figures come from this script.

Run: .venv/bin/python benchmarks/edit_sweep.py '{"method": "probe", "k": 2}' '{"method": "scale", "k": 3}' [--n 102] [--model SPEC] [--name NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from _common import DATA, DEFAULT_JUDGE, add_model, add_name, judge_words, write_results
from rosi import apply_edit, load, revert_edit
from rosi.edit.methods import EditForm
from rosi.edit.scope import probe_reads, probe_writers
from rosi.eval.heldout import describe_sets, held_out, instructions
from rosi.measure import RefusalMeter
from rosi.prompts import PromptSets
from rosi.workflows.extract import extract
from rosi.workflows.options import ExtractOptions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="+", help="JSON objects, one per setting")
    add_model(parser)
    add_name(parser, __file__)
    parser.add_argument("--n", type=int, default=102)
    parser.add_argument("--min-harmful", type=float, default=0.94, help="measure harmless refusal from this harmful rate on")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=34)
    args = parser.parse_args()
    settings = [json.loads(s) for s in args.settings]
    loaded = load(args.model, device="cpu", dtype="float32")
    extractions = {}
    for s in settings:
        key = (s.get("layer", 14), s.get("position", -1))
        if key not in extractions:
            options = ExtractOptions(form=EditForm("probe"), layer=key[0], position=key[1])
            extractions[key] = extract(loaded, PromptSets.load(n_val=None), options)
    loaded.model.to(torch.bfloat16)
    meter = RefusalMeter(loaded, batch_size=args.batch_size)
    sets = held_out(args.n, DATA)
    harmful, harmless = instructions(sets["harmful"]), instructions(sets["harmless"])

    def rate(prompts: list[str]) -> float:
        return meter.rate(prompts, args.max_new_tokens).value

    rows = [{"setting": "base model", "harmful": rate(harmful), "harmless": rate(harmless)}]
    print(json.dumps(rows[0]), flush=True)
    for s in settings:
        ex = extractions[(s.get("layer", 14), s.get("position", -1))]
        method = s.get("method", "scale")
        choice = ex.choose_writers(loaded, EditForm(method, s.get("scope", "selective"), s.get("ratio", 0.25)))
        reads = choice.reads
        if method == "probe" and "layers" in s:
            lo, hi = s["layers"]
            names = probe_writers(loaded.architecture.select(), (lo, hi))
            position = ex.direction.position
            inputs = (ex.activations.harmful.inputs_at(position), ex.activations.harmless.inputs_at(position))
            reads = probe_reads(names, *inputs, gap=float(ex.direction.vector.norm()))
        writers = list(reads) if reads is not None else choice.writers
        started = time.perf_counter()
        record = apply_edit(loaded.model, ex.direction, method, s["k"], writers=writers, reads=reads, keep_originals=True)
        try:
            row = {"setting": s, "writers": len(record.matrices), "harmful": rate(harmful)}
            if row["harmful"] >= args.min_harmful:
                row["harmless"] = rate(harmless)
        finally:
            revert_edit(loaded.model, record)
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    path = write_results(
        args.name,
        {
            "model": args.model,
            "dtype": "bfloat16 (generation), float32 (extraction)",
            "judge": judge_words(DEFAULT_JUDGE, args.max_new_tokens),
            "judge_spec": DEFAULT_JUDGE,
            "sets": describe_sets({role: parts for role, parts in sets.items() if role != "contrast"}),
            "rows": rows,
        },
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
