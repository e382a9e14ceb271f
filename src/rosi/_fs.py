"""Atomic writes: an output either exists complete or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rosi.errors import OutputExistsError


def check_output(path: Path, overwrite: bool, *, protect: tuple[Path, ...] = ()) -> None:
    """Refuse an existing output unless asked, and never write over a protected path (the input)."""
    resolved = path.resolve()
    for p in protect:
        p = p.resolve()
        if resolved == p or p.is_relative_to(resolved):
            raise OutputExistsError(f"refusing to write to {path}: it holds the input model; choose another --out")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; choose another output or pass overwrite=True (CLI: --overwrite)")


@contextlib.contextmanager
def atomic_directory(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    check_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            _remove(tmp)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling file path; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def hash_files(files: list[Path]) -> str:
    """sha256 of one file; for several, of their names and contents in name order."""
    if len(files) == 1:
        return _update(hashlib.sha256(), files[0]).hexdigest()
    digest = hashlib.sha256()
    for f in sorted(files):
        digest.update(f.name.encode() + b"\0")
        _update(digest, f)
    return digest.hexdigest()


def _update(digest: Any, path: Path) -> Any:
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 24):
            digest.update(chunk)
    return digest
