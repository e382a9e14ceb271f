"""What a run costs: forward passes, generated tokens, seconds and peak memory per phase.

The counts are process-wide (the forward-pass and generation helpers add to them), so a phase
table can be taken around any code without threading a counter through it.

Peak memory is the process's peak resident set size so far (``getrusage``'s ``ru_maxrss``, what
``/usr/bin/time`` reports for the whole process), read at the end of each phase. It is never reset:
a reset through ``/proc/self/clear_refs`` also resets what the operating system reports, and the
per-phase figures read after one were not to be trusted (one phase read several times the whole
process's peak). So a phase's figure bounds its own peak from above, and equals it exactly for a
phase that raised the peak (``raised_peak``); a phase that did not raise it peaked somewhere below.
Linux carries the peak across ``exec``: a process started straight from a larger one (not through a
shell, which forks it) begins at that one's peak, and ``raised_peak`` says which phases went past it.
"""

from __future__ import annotations

import ctypes
import gc
import resource
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
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
    """One phase's seconds and counts, and the process's peak memory at its end: ``peak_so_far_mb``
    is at least the phase's own peak, and is it where ``raised_peak`` (the process's peak rose
    during the phase). ``None`` for a report written before this was measured truly."""

    name: str
    seconds: float
    forward_batches: int
    generated_tokens: int
    peak_so_far_mb: float | None = None
    raised_peak: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Phase:
        """The inverse of :meth:`to_json`; an older report's ``peak_rss_mb`` (read after a reset
        that made it untrustworthy) is dropped."""
        return cls(**{k: v for k, v in data.items() if k != "peak_rss_mb"})


def release_memory() -> None:
    """Return freed memory to the operating system (glibc keeps it otherwise, and resident memory
    would stay at the last phase's high)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_mb() -> float:
    """The process's peak resident memory so far in MiB (2**20 bytes): ``ru_maxrss``, in KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


@dataclass
class PhaseClock:
    """Phases one after another: ``clock.done("extraction")`` ends one and starts the next."""

    phases: list[Phase] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    counts: Counts = field(default_factory=lambda: Counts(COUNTS.forward_batches, COUNTS.generated_tokens))
    peak_before: float = field(default_factory=peak_rss_mb)

    def done(self, name: str) -> Phase:
        now, peak = time.perf_counter(), peak_rss_mb()
        phase = Phase(
            name,
            round(now - self.started, 1),
            COUNTS.forward_batches - self.counts.forward_batches,
            COUNTS.generated_tokens - self.counts.generated_tokens,
            peak,
            peak > self.peak_before,
        )
        self.phases.append(phase)
        release_memory()
        self.started, self.counts = time.perf_counter(), Counts(COUNTS.forward_batches, COUNTS.generated_tokens)
        self.peak_before = peak
        return phase


def phase_table(phases: list[Phase]) -> str:
    """Seconds, forward batches, generated tokens and the process's peak memory so far at the end of
    each phase, as aligned text; ``*`` marks a phase that raised the peak (its own peak is that figure)."""
    rows = [f"{'phase':<20} {'seconds':>8} {'forward batches':>16} {'tokens generated':>17} {'peak memory so far':>19}"]
    for p in phases:
        peak = "n/a" if p.peak_so_far_mb is None else f"{p.peak_so_far_mb / 1024:.2f} GiB{' *' if p.raised_peak else '  '}"
        rows.append(f"{p.name:<20} {p.seconds:>8.1f} {p.forward_batches:>16} {p.generated_tokens:>17} {peak:>19}")
    total = (sum(p.seconds for p in phases), sum(p.forward_batches for p in phases), sum(p.generated_tokens for p in phases))
    rows.append(f"{'total':<20} {total[0]:>8.1f} {total[1]:>16} {total[2]:>17}")
    if any(p.raised_peak for p in phases):
        rows.append("* the phase raised the process's peak: its own peak is that figure (the others peaked at or below theirs)")
    return "\n".join(rows)
