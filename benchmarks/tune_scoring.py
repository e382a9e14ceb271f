"""What one `rosi tune` trial's cheap scores cost on the real Qwen2.5-Coder-0.5B-Instruct, by
measuring path, on the tune's default validation prompts (32 built-in + 32 harder harmful, 32
harmless, 55 look-alike spread over the kinds; bfloat16 as the tune computes):

1. two passes: a forward pass for the first-token distributions, then 8-token greedy replies
   (what a trial cost before the one-pass scoring);
2. one pass: replies and first-token distributions from one generation (`generate_with_logprobs`);
3. one pass with the shared prefix (the chat template's system turn) computed once
   (`share_prefix=True`, what trials use now).

Also 64-token replies (the confirmation's length) plain and with the shared prefix, and how far
the paths agree: the same replies (bfloat16 rounds a batch-of-one prefix differently from a
batched one, so a near-tied greedy step can flip), their refusal rates (each path's replies
judged by rosi.measure's marker judge) and the KL between their first-token distributions.

Run: .venv/bin/python benchmarks/tune_scoring.py [--model SPEC] [--batch-size 32] [--name NAME]
"""

from __future__ import annotations

import argparse

import torch

from _common import add_model, add_name, write_results
from rosi import load
from rosi.measure import RefusalMeter
from rosi.metrics import kl_divergence
from rosi.model.chat import ChatFormat
from rosi.model.generation import generate, generate_with_logprobs, next_token_logprobs, shared_prefix_length
from rosi.prompts import builtin
from rosi.workflows.speed import timed

CPU = torch.device("cpu")  # every timing here is on the CPU


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model(parser)
    add_name(parser, __file__)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    loaded = load(args.model, dtype="bfloat16")
    fmt = ChatFormat(loaded.tokenizer)
    sets = {
        "harmful": builtin("harmful", "val").take(32) + builtin("harmful_hard", "val").take(32),
        "harmless": builtin("harmless", "val").take(32),
        "lookalike": builtin("lookalike", "val").spread(55),
    }
    prompts = {k: list(v.instructions) for k, v in sets.items()}
    ids = loaded.tokenizer([fmt.render(p) for v in prompts.values() for p in v], add_special_tokens=False).input_ids
    model, bs = loaded.model, args.batch_size
    meter = RefusalMeter(loaded, batch_size=bs)  # judges every path's replies; the paths are timed on their own

    def two_passes(tokens: int):
        return {
            k: (generate(model, fmt, v, max_new_tokens=tokens, batch_size=bs), next_token_logprobs(model, fmt, v, batch_size=bs))
            for k, v in prompts.items()
        }

    def one_pass(tokens: int, share: bool):
        return {
            k: generate_with_logprobs(model, fmt, v, max_new_tokens=tokens, batch_size=bs, share_prefix=share) for k, v in prompts.items()
        }

    generate(model, fmt, prompts["harmless"][:8], max_new_tokens=2, batch_size=bs)  # warm-up, not timed
    seconds: dict[str, float] = {}
    two, seconds["8 tokens, two passes"] = timed(CPU, two_passes, 8)
    plain, seconds["8 tokens, one pass"] = timed(CPU, one_pass, 8, False)
    shared, seconds["8 tokens, one pass, shared prefix"] = timed(CPU, one_pass, 8, True)
    plain64, seconds["64 tokens, one pass"] = timed(CPU, one_pass, 64, False)
    shared64, seconds["64 tokens, one pass, shared prefix"] = timed(CPU, one_pass, 64, True)

    def agreement(a, b) -> dict[str, object]:
        rows = {}
        for k in prompts:
            (ra, la), (rb, lb) = a[k], b[k]
            rows[k] = {
                "same_replies": f"{sum(x == y for x, y in zip(ra, rb, strict=True))}/{len(ra)}",
                "refusal": [meter.judged(prompts[k], ra).value, meter.judged(prompts[k], rb).value],
                "kl": float(kl_divergence(la, lb).mean()),
            }
        return rows

    payload = {
        "model": args.model,
        "dtype": "bfloat16",
        "batch_size": bs,
        "prompts": {k: len(v) for k, v in prompts.items()},
        "shared_prefix_tokens": shared_prefix_length(ids),
        "mean_prompt_tokens": sum(map(len, ids)) / len(ids),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "two_passes_vs_one_pass": agreement({k: (r, lp) for k, (r, lp) in two.items()}, plain),
        "plain_vs_shared_prefix_8": agreement(plain, shared),
        "plain_vs_shared_prefix_64": agreement(plain64, shared64),
    }
    for k, v in payload["seconds"].items():
        print(f"{k:40s} {v:6.1f} s")
    for name in ("two_passes_vs_one_pass", "plain_vs_shared_prefix_8", "plain_vs_shared_prefix_64"):
        print(name, payload[name])
    print("results:", write_results(args.name, payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
