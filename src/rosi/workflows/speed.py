"""What rosi's steps cost on one device, each figure against the bound it is judged by.

- :func:`extraction_cost`: extraction (every layer and every attention/MLP writer hooked) against
  bare forward passes over the same prompts (target: at most :data:`EXTRACTION_TARGET` times);
- :func:`edit_cost`: the edit of every attention/MLP writer against the memory-bandwidth limit
  (the bytes it must read and write over :func:`copy_bandwidth`; target within :data:`EDIT_TARGET`);
- :func:`pinned_run`: a whole :func:`rosi.run` with layer and strength pinned, with its phases;
- :func:`generation_throughput`: greedy tokens per second with the dynamic and the static KV cache;
- :func:`command_cost`: wall time and peak resident memory of a command in its own process
  (``/usr/bin/time -v``), for the figures of ``rosi apply`` and ``rosi edit``;
- :func:`pass_costs` and :func:`phase_limits`: what one forward batch and one generated token
  cost on this machine, and each phase of a run against the passes and tokens it needed (target:
  within :data:`PHASE_TARGET` times); :func:`weights_bytes` for the peak-memory bound
  (:data:`MEMORY_TARGET` times the weights).

Each returns a JSON-ready dict (seconds rounded as the result files keep them). The models can be
:func:`rosi.model.synthetic.random_model`: cost does not depend on the weights.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from rosi.direction.activations import collect_activations
from rosi.direction.vector import Direction
from rosi.edit.apply import apply_edit, revert_edit
from rosi.model.chat import ChatFormat
from rosi.model.costs import Phase
from rosi.model.generation import generate_ids, next_token_logprobs
from rosi.model.hooks import device_of, forward
from rosi.model.loading import LoadedModel
from rosi.prompts import PromptSets
from rosi.workflows.options import ExtractOptions, MeasureOptions, RunOptions, StrengthOptions
from rosi.workflows.run import run

EXTRACTION_TARGET = 1.10  # extraction's time over bare forward passes
EDIT_TARGET = 3.0  # the edit's time over the memory-bandwidth limit
RUN_TARGET_S = 120.0  # a whole pinned run of the 8B shape
PHASE_TARGET = 3.0  # a run's phase over the cost of the forward passes and tokens it needed
MEMORY_TARGET = 1.5  # a run's peak resident memory over its weights in the compute dtype


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``fn(*args, **kwargs)`` and the seconds it took, the device's work included."""
    sync(device)
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    sync(device)
    return out, time.perf_counter() - start


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second a large on-device copy moves (read + write), the best of five."""
    n = (1 << 28) if device.type == "cuda" else (1 << 24)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = [timed(device, dst.copy_, src)[1] for _ in range(5)]
    return 2 * n / min(times)


def extraction_cost(loaded: LoadedModel, device: torch.device, texts: Sequence[str], batch: int, repeats: int = 3) -> dict[str, Any]:
    """Extraction's seconds against bare forward passes over ``texts``, ``repeats`` times each
    (after a warm-up); the ratio of the medians."""
    fmt = ChatFormat(loaded.tokenizer)
    n_pos = len(fmt.post_instruction_ids())
    writers = loaded.architecture.measurable_modules(loaded.model)

    @torch.no_grad()
    def bare() -> None:
        for b in fmt.batches(texts, batch, device):
            forward(loaded.model.base_model, b)

    bare()  # warm-up
    bare_s, hooked_s = [], []
    for _ in range(repeats):
        bare_s.append(timed(device, bare)[1])
        hooked_s.append(timed(device, collect_activations, loaded.model, fmt, texts, n_pos, writers=writers, batch_size=batch)[1])
    ratio = statistics.median(hooked_s) / statistics.median(bare_s)
    return {
        "prompts": len(texts),
        "bare_s": [round(x, 3) for x in bare_s],
        "extraction_s": [round(x, 3) for x in hooked_s],
        "ratio": round(ratio, 3),
        "target_met": ratio <= EXTRACTION_TARGET,
    }


def edit_cost(loaded: LoadedModel, device: torch.device, repeats: int = 3) -> dict[str, Any]:
    """The scale edit of every attention/MLP writer (a random direction), applied and reverted
    ``repeats`` times after a warm-up, against the time to read and write those weights once."""
    model, arch = loaded.model, loaded.architecture
    direction = Direction(torch.randn(arch.hidden_size, generator=torch.Generator().manual_seed(0)))
    params = dict(model.named_parameters())
    writers = arch.select()
    edited_bytes = sum(params[w.name].numel() * params[w.name].element_size() for w in writers)
    revert_edit(model, apply_edit(model, direction, "scale", 1.0))  # warm-up
    times = []
    for _ in range(repeats):
        record, seconds = timed(device, apply_edit, model, direction, "scale", 1.0)
        times.append(seconds)
        revert_edit(model, record)
    per_second = copy_bandwidth(device)
    limit = 2 * edited_bytes / per_second  # every weight read once and written once
    best = min(times)
    return {
        "matrices": len(writers),
        "edited_bytes": edited_bytes,
        "edit_s": [round(x, 4) for x in times],
        "bandwidth_gb_s": round(per_second / 1e9, 1),
        "bandwidth_limit_s": round(limit, 4),
        "times_the_limit": round(best / limit, 2),
        "target_met": best <= EDIT_TARGET * limit,
    }


def pinned_run(loaded: LoadedModel, sets: PromptSets, batch: int, new_tokens: int, strength: float = 2.0) -> dict[str, Any]:
    """A whole run (extraction, measurement, save to a temporary folder) at the middle layer and a
    fixed strength: its seconds and its phase table."""
    options = RunOptions(
        extract=ExtractOptions(layer=loaded.architecture.num_layers // 2, position=-1, batch_size=batch, progress=False),
        strength=StrengthOptions(strength=strength, compare_paper=False),
        measure=MeasureOptions(new_tokens=new_tokens),
    )
    with tempfile.TemporaryDirectory(prefix="rosi-gpu-bench-") as tmp:
        start = time.perf_counter()
        report = run(loaded, Path(tmp) / "out", sets, options)
        seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 1), "phases": [p.to_json() for p in report.phases], "under_2_minutes": seconds < RUN_TARGET_S}


@torch.no_grad()
def generation_throughput(loaded: LoadedModel, device: torch.device, texts: Sequence[str], new_tokens: int) -> dict[str, Any]:
    """Greedy tokens per second for ``texts`` as one batch, exactly ``new_tokens`` each, with the
    dynamic and the static KV cache (a cache the installed transformers lacks is reported)."""
    inputs = ChatFormat(loaded.tokenizer).encode(texts, device)
    pad = loaded.tokenizer.pad_token_id
    out: dict[str, Any] = {"batch": len(texts), "new_tokens": new_tokens}
    for cache in ("dynamic", "static"):
        kwargs: dict[str, Any] = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": pad}
        if cache == "static":
            kwargs["cache_implementation"] = "static"
        try:
            loaded.model.generate(**inputs, **kwargs)  # warm-up (and, for the static cache, its allocation)
            _, seconds = timed(device, loaded.model.generate, **inputs, **kwargs)
            out[f"{cache}_tokens_per_s"] = round(len(texts) * new_tokens / seconds, 1)
        except Exception as e:  # noqa: BLE001 - a cache kind the installed transformers lacks is reported, not fatal
            out[f"{cache}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return out


def command_cost(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> dict[str, float]:
    """Wall seconds and peak resident memory (MB) of ``cmd`` run under ``/usr/bin/time -v``
    (``peak_rss_mb`` -1 where it reports none); a failing command raises ``RuntimeError``."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(int(peak.group(1)) / 1024, 1) if peak else -1.0}


def pass_costs(
    loaded: LoadedModel, texts: Sequence[str], *, batch_size: int, generation_batch: int, lengths: Sequence[int]
) -> dict[str, Any]:
    """What the passes a run is made of cost here, after a warm-up: seconds per forward batch of
    ``batch_size`` of ``texts`` (next-token scores, the shared prefix once: how rosi's passes run),
    and greedy tokens per second for ``generation_batch`` of them at each reply length of
    ``lengths`` (rosi's generation path: short replies pay their prompts' prefill more per token)."""
    device = device_of(loaded.model)
    fmt = ChatFormat(loaded.tokenizer)
    forward_texts, generation_texts = list(texts[:batch_size]), list(texts[:generation_batch])
    next_token_logprobs(loaded.model, fmt, forward_texts, batch_size=batch_size, share_prefix=True)  # warm-up
    _, forward_s = timed(device, next_token_logprobs, loaded.model, fmt, forward_texts, batch_size=batch_size, share_prefix=True)
    out: dict[str, Any] = {
        "batch_size": len(forward_texts),
        "forward_batch_s": round(forward_s, 3),
        "generation_batch": len(generation_texts),
    }
    for n in lengths:
        ids, seconds = timed(
            device, generate_ids, loaded.model, fmt, generation_texts, max_new_tokens=n, batch_size=generation_batch, share_prefix=True
        )
        out[f"tokens_per_s_at_{n}"] = round(sum(len(row) for row in ids) / seconds, 2)
    return out


def phase_limits(
    phases: Sequence[Phase], costs: Mapping[str, Any], reply_tokens: Mapping[str, int], default_tokens: int
) -> list[dict[str, Any]]:
    """Each phase's seconds against its limit: its forward batches at ``costs``' seconds per batch
    plus its generated tokens at ``costs``' tokens per second for the reply length the phase
    generates (``reply_tokens`` by phase name, else ``default_tokens``)."""
    rows = []
    for p in phases:
        n = reply_tokens.get(p.name, default_tokens)
        limit = p.forward_batches * costs["forward_batch_s"] + p.generated_tokens / costs[f"tokens_per_s_at_{n}"]
        ratio = p.seconds / limit if limit > 0 else None
        rows.append(
            {
                "phase": p.name,
                "seconds": p.seconds,
                "limit_s": round(limit, 1),
                "times_the_limit": None if ratio is None else round(ratio, 2),
                "target_met": None if ratio is None else ratio <= PHASE_TARGET,
            }
        )
    return rows


def weights_bytes(model: torch.nn.Module) -> int:
    """The bytes of a model's parameters and buffers (each shared tensor once)."""
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())
