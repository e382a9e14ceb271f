"""Files and folders: atomic outputs, what ``--overwrite`` may replace, leftovers of crashed runs.

Every output rosi writes is first written under a temporary sibling name and renamed into place
at the end, so it exists complete or not at all. The temporary names say who made them
(``.NAME.rosi-tmp-PID-XXXX``; folders also hold a :data:`PARTIAL` marker), so a later run can
remove what an earlier, killed run left behind, and only that. ``--overwrite`` replaces only an
output rosi itself wrote (the caller says how to recognise one), and never the input, a folder
holding it or a folder inside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rosi.errors import OutputExistsError, RosiError

PARTIAL = ".rosi-partial"  # marker file inside every temporary output folder
_TEMP = re.compile(r"^\.(?P<name>.+)\.rosi-(?:tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")
Owned = Callable[[Path], bool]  # "rosi wrote this output", for what --overwrite may replace


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def check_output(
    path: Path,
    overwrite: bool,
    *,
    protect: Iterable[Path] = (),
    owned: Owned | None = None,
    what: str = "output",
    file_name: str | None = None,
) -> None:
    """Refuse an output that would touch a protected path (the input, a folder holding it, or a
    folder inside it), that exists when overwriting was not asked for, or that exists and was not
    written by rosi (``owned``) when it was. Also refuse a path whose parent is a file, and, for an
    output that is a file (``what`` ends with "file", or ``file_name`` gives an example name for
    it), a path that is a folder.
    ``what`` names the output ("direction file", "checkpoint"); the article is added here."""
    path = Path(path)
    resolved = path.resolve()
    for p in protect:
        p = Path(p).resolve()
        if resolved == p or p.is_relative_to(resolved) or (p.is_dir() and resolved.is_relative_to(p)):
            raise OutputExistsError(f"refusing to write {what} {path}: it is, holds or lies inside the input ({p}); choose another --out")
    parent = _existing_ancestor(resolved.parent)
    if parent is not None and not parent.is_dir():
        raise RosiError(f"cannot write {path}: {parent} is a file, not a folder")
    if not (path.exists() or path.is_symlink()):
        return
    if (file_name is not None or what.endswith(" file")) and path.is_dir() and not path.is_symlink():
        example = f"such as {path / file_name}" if file_name else "(a new name inside it, for example)"
        raise OutputExistsError(f"--out {path} is a folder, not {with_article(what)} rosi wrote; give a file path {example}")
    if not overwrite:
        raise OutputExistsError(f"{path} already exists; choose another output or pass overwrite=True (CLI: --overwrite)")
    if path.is_symlink() or owned is None or not owned(path):
        raise OutputExistsError(
            f"{path} exists and is not {with_article(what)} rosi wrote, so --overwrite will not replace it (rosi deletes only what it wrote); "
            "choose another --out"
        )


def with_article(noun: str) -> str:
    """``noun`` with its indefinite article ("a direction file", "an audit folder"), unless it
    already starts with one (or with "the")."""
    if noun.split(" ", 1)[0].lower() in ("a", "an", "the"):
        return noun
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _existing_ancestor(path: Path) -> Path | None:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return None


def is_rosi_folder(path: Path, marker: str = "rosi.json") -> bool:
    """A folder rosi wrote: it holds ``marker``, a JSON file saying ``"tool": "rosi"``."""
    import json

    file = path / marker
    if file.is_symlink() or not file.is_file():  # a pipe or a device of that name would block the read
        return False
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("tool") == "rosi"


def _temp_name(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name}.rosi-{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def clean_leftovers(path: Path, log: Callable[[str], None] = _log) -> list[Path]:
    """Remove the temporary files and folders that killed rosi runs left beside ``path`` (their
    process is gone), and say so. Another live process's are left alone."""
    removed: list[Path] = []
    try:
        siblings = list(path.parent.iterdir()) if path.parent.is_dir() else []
    except OSError:
        return removed
    for p in siblings:
        m = _TEMP.match(p.name)
        if not m or m["name"] != path.name or _alive(int(m["pid"])):
            continue
        if p.is_dir() and not p.is_symlink():
            if not (p / PARTIAL).is_file():
                continue  # not one of rosi's folders
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    if removed:
        log(
            f"rosi: removed {len(removed)} temporary leftover(s) of an interrupted earlier run beside {path}: {', '.join(p.name for p in removed)}"
        )
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_directory(path: Path, overwrite: bool = False, *, owned: Owned | None = None, protect: Iterable[Path] = ()) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to ``path`` only if the block succeeds.
    An existing ``path`` is replaced only with ``overwrite`` and if ``owned(path)``."""
    path = Path(path)
    check_output(path, overwrite, protect=protect, owned=owned)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    tmp = _temp_name(path, "tmp")
    tmp.mkdir()
    (tmp / PARTIAL).write_text(f"pid {os.getpid()}\n", encoding="utf-8")
    try:
        with _os_errors(path):
            yield tmp
        (tmp / PARTIAL).unlink()
        _sync_tree(tmp)
        if path.exists():
            old = _temp_name(path, "old")
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
    clean_leftovers(path)
    tmp = _temp_name(path, "tmp")
    try:
        with _os_errors(path):
            yield tmp
        _readable(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


@contextlib.contextmanager
def _os_errors(path: Path) -> Iterator[None]:
    """Writers that wrap the operating system's errors in their own type (safetensors' Rust core
    does) have them raised as the OSError they are, naming the output."""
    try:
        yield
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised unchanged unless it carries an OS error number
        m = _OS_ERROR.search(str(e))
        if m is None:
            raise
        code = int(m[1])
        raise OSError(code, os.strerror(code), str(path)) from None


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _sync_tree(folder: Path) -> None:
    """Flush every file of a finished output to disk before it is renamed into place."""
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            _readable(p)
            _fsync(p)


def _readable(path: Path) -> None:
    """Permissions as the umask allows (some writers, safetensors' among them, create files private)."""
    mask = os.umask(0)
    os.umask(mask)
    path.chmod(0o666 & ~mask)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def regular_file(path: Path, what: str = "file") -> Path:
    """``path`` if it is a regular file; a clear error for a missing path, a folder, or a special
    file (a FIFO or a device would block or never end)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise RosiError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise RosiError(f"{what} {path} cannot be read ({e.strerror})") from None
    if stat.S_ISDIR(mode):
        raise RosiError(f"{what} {path} is a folder; pass a file")
    if not stat.S_ISREG(mode):
        raise RosiError(f"{what} {path} is not a regular file (a pipe or a device?); pass a file")
    return path


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
