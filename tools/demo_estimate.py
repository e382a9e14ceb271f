"""What `make demo` will take on this kind of CPU, printed before it starts.

Reads the measured `rosi run` of the demo model (benchmarks/results/run_limits_qwen0.5b_*.json,
written by benchmarks/run_limits.py) in the dtype `--dtype auto` picks here: bfloat16 on a CPU
with native bf16 (AVX512-BF16 or AMX), float32 elsewhere. The figure is the measured one, with
the cores it had: a guide, not a promise (more cores take less, a slower CPU more). Plain Python:
no torch, so it prints at once; prints nothing when it cannot tell, and never fails the demo.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def native_bf16() -> bool:
    """The test of rosi.model.loading.cpu_has_fast_bf16, repeated here because importing rosi
    needs the virtual environment (and torch) that the demo has not set up yet."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def estimate(results: Path = RESULTS, bf16: bool | None = None) -> str | None:
    """One line: the measured run in the dtype used here, and where it was measured; None without one."""
    bf16 = native_bf16() if bf16 is None else bf16
    dtype = "bfloat16" if bf16 else "float32"
    try:
        data = json.loads((results / f"run_limits_qwen0.5b_{dtype}.json").read_text(encoding="utf-8"))
        seconds, cores, cpu = float(data["run_s"]), int(data["machine"]["threads"]), str(data["cpu"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    why = "this CPU has native bf16" if bf16 else "this CPU has no native bf16"
    return (
        f"make demo: rosi run will compute in {dtype} ({why}): about {_minutes(seconds)} on a {cores}-core {cpu} "
        f"({seconds:.0f} s measured, benchmarks/results/), less with more cores; the first demo also sets up and converts the model"
    )


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} minutes"


if __name__ == "__main__":
    line = estimate()
    if line:
        print(line, flush=True)
