"""rosi on one accelerator: extraction, the edit, a whole pinned `rosi run`, and generation.

One script, no network: random-weight models built from real configs (weights do not change the
cost), a word-level tokenizer with a chat template, prompts made of random words
(`rosi.model.synthetic`). On a CUDA device it measures the Qwen2.5-0.5B and Llama-3.1-8B shapes in
bfloat16; elsewhere (and with --tiny) small shapes, so the script is tested in CI. Results go to
benchmarks/results/NAME.json (default gpu_pipeline.json; the device is recorded in it), or to
--out FILE.

Figures (targets from the speed issue; each measured by `rosi.workflows.speed`):
- extraction of 256 prompts (every layer and every attention/MLP writer hooked) against bare
  forward passes over the same prompts: target <= 1.10x (`extraction_cost`);
- the edit of every attention/MLP writer against the memory-bandwidth limit (the bytes the edit
  must read and write, over the device's measured copy bandwidth): target within 3x (`edit_cost`);
- a whole `rosi run` with the layer and strength pinned (extraction, measurement, save): target
  under 2 minutes for the 8B shape (`pinned_run`);
- greedy generation throughput (tokens/s) with the default dynamic KV cache and with a static one
  (`generation_throughput`).

Run: python benchmarks/gpu_pipeline.py [--tiny] [--models qwen0.5b,llama8b] [--name NAME | --out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from _common import add_name, write_results
from rosi.model.synthetic import SHAPES, random_model, random_prompts
from rosi.prompts import PromptSet, PromptSets
from rosi.workflows.speed import edit_cost, extraction_cost, generation_throughput, pinned_run, timed


def measure(name: str, device: torch.device, dtype: torch.dtype, n: int, batch: int, new_tokens: int) -> dict[str, Any]:
    """One shape's row: built, then each figure in turn on the same model."""
    loaded, build_s = timed(device, random_model, SHAPES[name], device, dtype)
    half = n // 2
    sets = PromptSets(*(PromptSet(random_prompts(k, seed)) for k, seed in ((half, 2), (half, 3), (half // 2, 4), (half // 2, 5))))
    return {
        "shape": name,
        "dtype": str(dtype),
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "build_s": round(build_s, 1),
        "extraction": extraction_cost(loaded, device, random_prompts(n, 1), batch),
        "edit": edit_cost(loaded, device),
        "generation": generation_throughput(loaded, device, random_prompts(batch, 6), new_tokens),
        "run": pinned_run(loaded, sets, batch, new_tokens),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="small shapes and counts (the CPU default)")
    parser.add_argument("--models", default=None, help="comma list of shapes (default: qwen0.5b,llama8b on CUDA, tiny elsewhere)")
    add_name(parser, __file__)
    parser.add_argument("--out", default=None, metavar="FILE", help="write the results to FILE instead of benchmarks/results/NAME.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or device.type != "cuda"
    names = (args.models or ("tiny" if tiny else "qwen0.5b,llama8b")).split(",")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n, batch, new_tokens = (32, 8, 8) if tiny else (256, 32, 64)
    results: dict[str, Any] = {"device": str(device)}
    if device.type == "cuda":
        results["device_name"] = torch.cuda.get_device_name(device)
    for name in names:
        row = measure(name, device, dtype, n, batch, new_tokens)
        results.setdefault("rows", []).append(row)
        print(json.dumps(row, indent=2), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    path = write_results(args.name, results, Path(args.out) if args.out else None)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
