"""What a run costs (rosi.model.costs): the phase table's counts, and its peak memory checked
against what the operating system reports for the process."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from rosi.model.costs import COUNTS, Phase, PhaseClock, count_forward, count_generated, phase_table

# A phase that touches 300 MB, then one that allocates almost nothing; the process's own peak
# (ru_maxrss) read at the end. Run in a fresh interpreter, so no earlier test's memory counts.
PHASES = """
import json, resource
from rosi.model.costs import PhaseClock
clock = PhaseClock()
x = bytearray(300 * 1024 * 1024)
x[::4096] = b"1" * len(x[::4096])  # touch every page: resident, not just reserved
del x
big = clock.done("big")
small = clock.done("small")
print(json.dumps({"big": big.to_json(), "small": small.to_json(), "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _run_phases(timed: bool) -> tuple[dict, float | None]:
    # Through a shell that forks it: Linux carries a process's peak across exec, so a Python started
    # straight from this (large) test process would start at this process's peak.
    cmd = ["/bin/sh", "-c", '"$0" -c "$1"; exit $?', sys.executable, PHASES]
    done = subprocess.run(["/usr/bin/time", "-v", *cmd] if timed else cmd, capture_output=True, text=True, check=True)
    os_peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr) if timed else None
    return json.loads(done.stdout), int(os_peak.group(1)) / 1024 if os_peak else None


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB and /proc as on Linux")
def test_a_phase_peak_holds_its_allocation_and_never_exceeds_the_process_peak():
    out, _ = _run_phases(timed=False)
    big, small = out["big"], out["small"]
    assert 300 <= big["peak_so_far_mb"] <= out["ru_maxrss_mb"] + 0.1  # at least the 300 MB it held
    assert big["raised_peak"] and not small["raised_peak"]  # the small phase peaked below: not claimed as its own
    assert small["peak_so_far_mb"] == big["peak_so_far_mb"]  # the peak so far, never reset


@pytest.mark.skipif(sys.platform != "linux" or shutil.which("/usr/bin/time") is None, reason="needs /usr/bin/time")
def test_the_phase_peak_agrees_with_the_operating_system():
    """What /usr/bin/time measures for the whole process bounds every phase's figure (a reset through
    /proc/self/clear_refs once made a phase read several times the process's peak)."""
    out, os_peak = _run_phases(timed=True)
    assert os_peak is not None
    assert 300 <= out["big"]["peak_so_far_mb"] <= os_peak + 0.1


def test_phases_count_passes_and_tokens_between_them():
    clock = PhaseClock()
    count_forward(3)
    count_generated(40)
    first = clock.done("first")
    count_forward()
    second = clock.done("second")
    assert (first.forward_batches, first.generated_tokens, second.forward_batches, second.generated_tokens) == (3, 40, 1, 0)
    assert COUNTS.forward_batches >= 4 and second.peak_so_far_mb is not None and second.peak_so_far_mb >= first.peak_so_far_mb
    table = phase_table([Phase("first", 1.0, 3, 40, 2048.0, True), Phase("second", 0.5, 1, 0, 2048.0, False)])
    assert "peak memory so far" in table and "2.00 GiB *" in table and "raised the process's peak" in table


def test_a_phase_reads_back_and_an_old_report_loses_its_untrustworthy_peak():
    phase = Phase("extract", 1.5, 3, 0, 12.0, True)
    assert Phase.from_json(json.loads(json.dumps(phase.to_json()))) == phase
    old = {"name": "extract", "seconds": 1.5, "forward_batches": 3, "generated_tokens": 0, "peak_rss_mb": 23316.5}
    assert Phase.from_json(old) == Phase("extract", 1.5, 3, 0, None, False)
    assert "n/a" in phase_table([Phase.from_json(old)])
