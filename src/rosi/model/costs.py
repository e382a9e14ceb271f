"""What a run costs: forward passes, generated tokens, seconds and peak memory per phase.

The counts are process-wide (the forward-pass and generation helpers add to them), so a phase
table can be taken around any code without threading a counter through it. Peak memory is the
process's peak resident set size, reset at the start of each phase where Linux allows
(``/proc/self/clear_refs``), else the peak so far.
"""

from __future__ import annotations

import ctypes
import gc
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Counts:
    forward_batches: int = 0
    generated_tokens: int = 0


COUNTS = Counts()


def count_forward(batches: int = 1) -> None:
    COUNTS.forward_batches += batches


def count_generated(tokens: int) -> None:
    COUNTS.generated_tokens += tokens


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    forward_batches: int
    generated_tokens: int
    peak_rss_mb: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def release_memory() -> None:
    """Return freed memory to the operating system (glibc keeps it otherwise, and the next phase's
    peak would start from the last one's)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """The process's peak resident memory since the last reset (MB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@dataclass
class PhaseClock:
    """Phases one after another: ``clock.done("extraction")`` ends one and starts the next."""

    phases: list[Phase] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    counts: Counts = field(default_factory=lambda: Counts(COUNTS.forward_batches, COUNTS.generated_tokens))

    def __post_init__(self) -> None:
        _reset_peak()

    def done(self, name: str) -> Phase:
        now = time.perf_counter()
        phase = Phase(
            name,
            round(now - self.started, 1),
            COUNTS.forward_batches - self.counts.forward_batches,
            COUNTS.generated_tokens - self.counts.generated_tokens,
            peak_rss_mb(),
        )
        self.phases.append(phase)
        release_memory()
        self.started, self.counts = time.perf_counter(), Counts(COUNTS.forward_batches, COUNTS.generated_tokens)
        _reset_peak()
        return phase


def phase_table(phases: list[Phase]) -> str:
    """Seconds, forward batches, generated tokens and peak memory per phase, as aligned text."""
    rows = [f"{'phase':<20} {'seconds':>8} {'forward batches':>16} {'tokens generated':>17} {'peak memory':>12}"]
    for p in phases:
        rows.append(f"{p.name:<20} {p.seconds:>8.1f} {p.forward_batches:>16} {p.generated_tokens:>17} {p.peak_rss_mb / 1024:>9.2f} GB")
    total = (sum(p.seconds for p in phases), sum(p.forward_batches for p in phases), sum(p.generated_tokens for p in phases))
    rows.append(f"{'total':<20} {total[0]:>8.1f} {total[1]:>16} {total[2]:>17}")
    return "\n".join(rows)
