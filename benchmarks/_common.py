"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # the public datasets beside the repository


def machine() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_results(name: str, payload: dict[str, object]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d"), "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def tune_edits(out: Path, trials: str | None, records: list[str]) -> list[tuple[str, Path, dict]]:
    """The edits a tune benchmark measures, as (label, record file, what to add to its row): the
    trials of a `rosi tune` output (``trials``: "0,1,7"; default the references and the chosen
    one), then each ``LABEL=FILE`` of ``records``."""
    report = json.loads((out / "tune_report.json").read_text())
    by_number = {t["number"]: t for t in report["trials"]}
    if trials:
        numbers = [int(x) for x in trials.split(",")]
    else:
        numbers = [t["number"] for t in report["trials"] if t["reference"]] + [report["chosen"]]
    edits = []
    for number in dict.fromkeys(numbers):
        trial = by_number[number]
        label = (
            f"trial {number}"
            + (f" ({trial['reference']})" if trial["reference"] else "")
            + (" (chosen)" if number == report["chosen"] else "")
        )
        extra = {"params": trial["params"], "validation": trial["confirmed"]}
        edits.append((label, out / "trials" / f"trial-{number:03d}.safetensors", extra))
    for item in records:
        label, _, file = item.partition("=")
        edits.append((label, Path(file), {"record": file}))
    return edits
