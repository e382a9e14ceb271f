"""The prepared GPU benchmark runs end to end (tiny shapes on the CPU), so it is ready for a CUDA machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_pipeline_benchmark_runs_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_pipeline.py"), "--tiny", "--out", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(out.read_text())["rows"][0]
    assert row["shape"] == "tiny" and row["extraction"]["prompts"] == 32
    assert row["edit"]["matrices"] == 8 and row["edit"]["bandwidth_gb_s"] > 0
    assert row["generation"]["dynamic_tokens_per_s"] > 0
    assert [p["name"] for p in row["run"]["phases"]][-1] == "save"
