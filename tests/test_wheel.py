"""The distribution: `python -m build --wheel` makes a wheel (named rosi-safety; the import package
and the command stay `rosi`) that carries the prompt data, installs into a fresh virtual
environment, and runs `rosi --help` and `rosi info` from there, not from src/.

No download: the wheel is built without build isolation when setuptools is installed here, it is
installed with ``--no-deps --no-index``, and its dependencies (torch and the rest) come from this
interpreter's own site-packages, which a ``.pth`` file in the new environment adds after its own
(``--system-site-packages`` would add the base Python's, not those of the venv the tests run in).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import save_tiny

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "rosi-safety"


def _run(argv: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(map(str, argv))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the sources, so the working tree gets no build/ or egg-info folder."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path / "dist"
    # setuptools here: build with it, offline; else an isolated build fetches it (and only it)
    isolation = ["--no-isolation"] if importlib.util.find_spec("setuptools") else []
    _run([sys.executable, "-m", "build", "--wheel", *isolation, "--outdir", dist, project], cwd=tmp_path)
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.slow
def test_the_wheel_installs_and_runs_from_a_fresh_venv(tmp_path, tokenizer_dir):
    wheel = _build_wheel(tmp_path)
    assert wheel.name.startswith(DISTRIBUTION.replace("-", "_") + "-")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        assert f"Name: {DISTRIBUTION}\n" in zf.read(metadata).decode()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "rosi = rosi.cli:main" in entry_points
    data = sorted(p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src" / "rosi" / "prompts" / "data").glob("*.jsonl"))
    assert data and set(data) <= names, set(data) - names  # the built-in prompt sets travel with the wheel
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    python, rosi = venv / "bin" / "python", venv / "bin" / "rosi"
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall", wheel], cwd=tmp_path)
    # the dependencies: this interpreter's site-packages, after the new environment's own
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp_path).stdout.strip()
    (Path(purelib) / "_rosi_test_dependencies.pth").write_text(
        "".join(f"{p}\n" for p in (*site.getsitepackages(), site.getusersitepackages()))
    )

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(ROSI_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    where = _run(
        [python, "-c", "import rosi; from rosi.prompts import builtin; print(rosi.__file__); print(len(builtin('harmful', 'train')))"],
        tmp_path,
        env,
    )
    installed, count = where.stdout.split()
    assert Path(installed).resolve().is_relative_to(venv.resolve()), installed  # the wheel's rosi, not src/
    assert int(count) > 0

    helped = _run([rosi, "--help"], tmp_path, env)
    assert "usage: rosi" in helped.stdout and "direction" in helped.stdout
    model = tmp_path / "tiny"
    save_tiny("llama", model, tokenizer_dir=tokenizer_dir)
    info = _run([rosi, "info", model], tmp_path, env)
    assert "llama" in info.stdout.lower(), info.stdout
