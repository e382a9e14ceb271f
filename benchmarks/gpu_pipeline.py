"""rosi on one accelerator: extraction, the edit, a whole pinned `rosi run`, and generation.

One script, no network: random-weight models built from real configs (weights do not change the
cost), a word-level tokenizer with a chat template, prompts made of random words. On a CUDA device
it measures the Qwen2.5-0.5B and Llama-3.1-8B shapes in bfloat16; elsewhere (and with --tiny) small
shapes, so the script is tested in CI. Results go to benchmarks/results/NAME.json (default
gpu_pipeline.json; the device is recorded in it), or to --out FILE.

Figures (targets from the speed issue):
- extraction of 256 prompts (every layer and every attention/MLP writer hooked) against bare
  forward passes over the same prompts: target <= 1.10x;
- the edit of every attention/MLP writer against the memory-bandwidth limit (the bytes the edit
  must read and write, over the device's measured copy bandwidth): target within 3x;
- a whole `rosi run` with the layer and strength pinned (extraction, measurement, save): target
  under 2 minutes for the 8B shape;
- greedy generation throughput (tokens/s) with the default dynamic KV cache and with a static one.

Run: python benchmarks/gpu_pipeline.py [--tiny] [--models qwen0.5b,llama8b] [--name NAME | --out FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers as T
from tokenizers import Tokenizer, models, pre_tokenizers

from _common import add_name, write_results
from rosi import Direction, apply_edit, revert_edit
from rosi.direction.activations import collect_activations
from rosi.model.chat import ChatFormat
from rosi.model.hooks import forward
from rosi.model.loading import LoadedModel, ModelSource
from rosi.prompts import PromptSet, PromptSets
from rosi.workflows.options import ExtractOptions, MeasureOptions, RunOptions, StrengthOptions
from rosi.workflows.run import run

SHAPES: dict[str, dict[str, Any]] = {
    "qwen0.5b": dict(
        kind="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2
    ),
    "llama8b": dict(
        kind="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8
    ),
    "tiny": dict(kind="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2),
}
WORDS = [f"w{i}" for i in range(2000)]


def tokenizer() -> Any:
    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", "user", "assistant", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = T.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} </s> {% endfor %}{% if add_generation_prompt %}assistant {% endif %}"
    )
    return fast


def prompts(n: int, seed: int) -> tuple[str, ...]:
    rng = random.Random(seed)
    return tuple(" ".join(rng.choices(WORDS, k=rng.randint(8, 24))) for _ in range(n))


def build(shape: dict[str, Any], device: torch.device, dtype: torch.dtype) -> LoadedModel:
    tok = tokenizer()
    kind = shape["kind"]
    config_class = T.Qwen2Config if kind == "qwen2" else T.LlamaConfig
    config = config_class(
        **{k: v for k, v in shape.items() if k != "kind"}, vocab_size=len(tok), pad_token_id=0, eos_token_id=2, bos_token_id=1
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = T.AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    model.generation_config = T.GenerationConfig(eos_token_id=2, pad_token_id=0)
    return LoadedModel(model, tok, ModelSource(f"random:{kind}", "memory", "", "0" * 64))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    sync(device)
    return out, time.perf_counter() - start


def bandwidth(device: torch.device) -> float:
    """Bytes per second a large on-device copy moves (read + write)."""
    n = (1 << 28) if device.type == "cuda" else (1 << 24)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = [timed(device, dst.copy_, src)[1] for _ in range(5)]
    return 2 * n / min(times)


def extraction(loaded: LoadedModel, device: torch.device, n: int, batch: int) -> dict[str, Any]:
    fmt = ChatFormat(loaded.tokenizer)
    texts = prompts(n, 1)
    n_pos = len(fmt.post_instruction_ids())
    writers = loaded.architecture.measurable_modules(loaded.model)

    @torch.no_grad()
    def bare() -> None:
        for b in fmt.batches(texts, batch, device):
            forward(loaded.model.base_model, b)

    bare()  # warm-up
    bare_s, hooked_s = [], []
    for _ in range(3):
        bare_s.append(timed(device, bare)[1])
        hooked_s.append(timed(device, collect_activations, loaded.model, fmt, texts, n_pos, writers=writers, batch_size=batch)[1])
    ratio = statistics.median(hooked_s) / statistics.median(bare_s)
    return {
        "prompts": n,
        "bare_s": [round(x, 3) for x in bare_s],
        "extraction_s": [round(x, 3) for x in hooked_s],
        "ratio": round(ratio, 3),
        "target_met": ratio <= 1.10,
    }


def edit(loaded: LoadedModel, device: torch.device) -> dict[str, Any]:
    model = loaded.model
    arch = loaded.architecture
    direction = Direction(torch.randn(arch.hidden_size, generator=torch.Generator().manual_seed(0)))
    params = dict(model.named_parameters())
    writers = arch.select()
    edited_bytes = sum(params[w.name].numel() * params[w.name].element_size() for w in writers)
    record = apply_edit(model, direction, "scale", 1.0)  # warm-up
    revert_edit(model, record)
    times = []
    for _ in range(3):
        record, seconds = timed(device, apply_edit, model, direction, "scale", 1.0)
        times.append(seconds)
        revert_edit(model, record)
    per_second = bandwidth(device)
    limit = 2 * edited_bytes / per_second  # every weight read once and written once
    best = min(times)
    return {
        "matrices": len(writers),
        "edited_bytes": edited_bytes,
        "edit_s": [round(x, 4) for x in times],
        "bandwidth_gb_s": round(per_second / 1e9, 1),
        "bandwidth_limit_s": round(limit, 4),
        "times_the_limit": round(best / limit, 2),
        "target_met": best <= 3 * limit,
    }


def whole_run(loaded: LoadedModel, n: int, batch: int, new_tokens: int) -> dict[str, Any]:
    sets = PromptSets(PromptSet(prompts(n, 2)), PromptSet(prompts(n, 3)), PromptSet(prompts(n // 2, 4)), PromptSet(prompts(n // 2, 5)))
    layer = loaded.architecture.num_layers // 2
    options = RunOptions(
        extract=ExtractOptions(layer=layer, position=-1, batch_size=batch, progress=False),
        strength=StrengthOptions(strength=2.0, compare_paper=False),
        measure=MeasureOptions(new_tokens=new_tokens),
    )
    with tempfile.TemporaryDirectory(prefix="rosi-gpu-bench-") as tmp:
        start = time.perf_counter()
        report = run(loaded, Path(tmp) / "out", sets, options)
        seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 1), "phases": [p.to_json() for p in report.phases], "under_2_minutes": seconds < 120}


@torch.no_grad()
def generation(loaded: LoadedModel, device: torch.device, batch: int, new_tokens: int) -> dict[str, Any]:
    fmt = ChatFormat(loaded.tokenizer)
    inputs = fmt.encode(prompts(batch, 6), device)
    out: dict[str, Any] = {"batch": batch, "new_tokens": new_tokens}
    for cache in ("dynamic", "static"):
        kwargs: dict[str, Any] = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0}
        if cache == "static":
            kwargs["cache_implementation"] = "static"
        try:
            loaded.model.generate(**inputs, **kwargs)  # warm-up (and, for the static cache, its allocation)
            _, seconds = timed(device, loaded.model.generate, **inputs, **kwargs)
            out[f"{cache}_tokens_per_s"] = round(batch * new_tokens / seconds, 1)
        except Exception as e:  # noqa: BLE001 - a cache kind the installed transformers lacks is reported, not fatal
            out[f"{cache}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return out


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
        loaded, build_s = timed(device, build, SHAPES[name], device, dtype)
        row: dict[str, Any] = {
            "shape": name,
            "dtype": str(dtype),
            "parameters": sum(p.numel() for p in loaded.model.parameters()),
            "build_s": round(build_s, 1),
        }
        row["extraction"] = extraction(loaded, device, n, batch)
        row["edit"] = edit(loaded, device)
        row["generation"] = generation(loaded, device, batch, new_tokens)
        row["run"] = whole_run(loaded, n // 2, batch, new_tokens)
        results.setdefault("rows", []).append(row)
        print(json.dumps(row, indent=2), flush=True)
        del loaded
        if device.type == "cuda":
            torch.cuda.empty_cache()
    path = write_results(args.name, results, Path(args.out) if args.out else None)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
