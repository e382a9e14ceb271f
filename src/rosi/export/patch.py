"""Patches: the edit without the model, for bases of any size; applying, verifying and reverting.

A patch is an edit record file (the direction and every right factor, :mod:`rosi.edit.record`)
whose metadata also names the base it is for: the model type and, for every edited tensor, its
dtype, shape and the sha256 of its stored bytes. :func:`apply_patch` checks a base against that
identity before anything is written (a wrong base or revision names the tensor that differs),
then streams the base's safetensors shards one tensor at a time (:mod:`rosi.export.stream`): the
edited tensors recomputed in float32 and written in their own dtype, everything else copied byte
for byte, shards and index as in the base. :func:`verify` checks that a model is its base plus
its recorded edit (or, without a base, that the recorded factors fit the weights), and
:func:`revert` writes the base back.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from rosi.edit.methods import get_method
from rosi.edit.rank_one import rank_one_update
from rosi.edit.record import EditRecord
from rosi.errors import RosiError
from rosi.export.stream import INDEX, stream_edit, tensor_info, tensor_sha256, weight_files

PATCH_FORMAT = "rosi-patch/1"
RECORD_FILE = "rosi_edit.safetensors"
# rosi's own files in a folder it wrote: never copied from a base as if they were the model's
ROSI_FILES = ("rosi.json", RECORD_FILE, "rosi_report.json", "direction.safetensors", "direction_scores.json", "README.md")


class PatchError(RosiError):
    """A patch cannot be made, read or applied as asked."""


@dataclass(frozen=True)
class BaseIdentity:
    model_type: str | None
    tensors: dict[str, dict[str, Any]]  # name -> {"sha256", "dtype", "shape"}

    def to_json(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "tensors": self.tensors}


def base_identity(base: Path, record: EditRecord) -> BaseIdentity:
    """The identity of the base tensors ``record`` edits, read from ``base``'s files."""
    files = _weights(base)
    tensors = {}
    for m in record.matrices:
        if m.name not in files:
            raise PatchError(f"{base} has no tensor {m.name!r}: it is not the base of this edit")
        tensors[m.name] = {"sha256": tensor_sha256(files[m.name], m.name), **tensor_info(files[m.name], m.name)}
    return BaseIdentity(_model_type(base), tensors)


def write_patch(record: EditRecord, base: Path, out: Path) -> Path:
    """The patch of ``record`` for the base checkpoint folder ``base``, as one safetensors file."""
    return record.save(out, extra={"rosi_patch": json.dumps({"format": PATCH_FORMAT, "base": base_identity(base, record).to_json()})})


def read_patch(path: Path) -> tuple[EditRecord, BaseIdentity]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        data = json.loads(meta["rosi_patch"])
        if data.get("format") != PATCH_FORMAT:
            raise ValueError(f"format {data.get('format')!r}")
        base = data["base"]
        record = EditRecord.load(path)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise PatchError(f"{path} is not a rosi patch ({type(e).__name__}: {e}); make one with `rosi patch`") from None
    return record, BaseIdentity(base.get("model_type"), dict(base["tensors"]))


def check_base(base: Path, identity: BaseIdentity) -> None:
    """Every tensor the patch edits is in ``base`` with the bytes it was made for."""
    files = _weights(base)
    model_type = _model_type(base)
    if identity.model_type and model_type and model_type != identity.model_type:
        raise PatchError(f"{base} is a {model_type!r} model; the patch is for a {identity.model_type!r} model")
    for name, expected in identity.tensors.items():
        if name not in files:
            raise PatchError(f"{base} has no tensor {name!r}; this patch is for another model")
        got = tensor_info(files[name], name)
        if got != {"dtype": expected["dtype"], "shape": expected["shape"]}:
            raise PatchError(
                f"{base}: tensor {name} is {got['dtype']} {got['shape']}, the patch's base {expected['dtype']} {expected['shape']}"
            )
        if tensor_sha256(files[name], name) != expected["sha256"]:
            raise PatchError(
                f"{base}: tensor {name} differs from the one the patch was made for (sha256 {expected['sha256'][:12]}...); "
                "this is another base model or another revision of it"
            )


def copy_model_files(source: Path, out: Path) -> None:
    """Everything of a model folder but its weights and rosi's own files (config, tokenizer, ...)."""
    weights = set(weight_files(source).values()) | {source / INDEX}
    for p in source.iterdir():
        if p.is_file() and p not in weights and p.name not in ROSI_FILES and not p.name.startswith("."):
            shutil.copyfile(p, out / p.name)


def apply_patch(record: EditRecord, identity: BaseIdentity, base: Path, out: Path) -> EditRecord:
    """Write ``base`` with the patch applied into the (new, empty) folder ``out``; ``check_base`` first."""
    check_base(base, identity)
    applied = stream_edit(base, out, record, recompute=False)
    copy_model_files(base, out)
    return applied


def revert_folder(model: Path, out: Path) -> EditRecord:
    """Write the base of a rosi output (its recorded edit subtracted) into the folder ``out``."""
    record = load_record(model)
    stream_edit(model, out, record, revert=True)
    copy_model_files(model, out)
    return record


def load_record(folder: Path) -> EditRecord:
    path = folder / RECORD_FILE
    if not path.is_file():
        raise PatchError(f"{folder} holds no edit record ({RECORD_FILE}); it is not a model rosi edited")
    return EditRecord.load(path)


@dataclass
class TensorCheck:
    name: str
    ok: bool
    detail: str


@dataclass
class Verification:
    model: str
    method: str
    strength: float
    matrices: int
    checks: list[TensorCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "method": self.method,
            "strength": self.strength,
            "matrices_edited": self.matrices,
            "ok": self.ok,
            "checks": [c.__dict__ for c in self.checks],
        }


def verify(model: Path, base: Path | None = None, log: Callable[[str], None] | None = None) -> Verification:
    """Check a rosi output against its edit record: with ``base``, that every edited tensor is the
    base's plus ``outer(s_hat, r)`` within one rounding step and every other tensor byte-identical;
    without, that each recorded factor fits the weights where the method allows a check."""
    record = load_record(model)
    result = Verification(str(model), record.method, record.strength, len(record.matrices))
    files = _weights(model)
    edited = {m.name: m for m in record.matrices}
    for m in record.matrices:
        if m.name not in files:
            result.checks.append(TensorCheck(m.name, False, "the recorded matrix is not in the model's weights"))
    if base is not None:
        base_files = _weights(base)
        for name, file in sorted(files.items()):
            if name not in base_files:
                result.checks.append(TensorCheck(name, False, "not in the base"))
            elif name in edited:
                result.checks.append(_check_against_base(name, file, base_files[name], record))
            elif tensor_sha256(file, name) != tensor_sha256(base_files[name], name):
                result.checks.append(TensorCheck(name, False, "not edited by the record, but differs from the base"))
        if not any(c.ok is False for c in result.checks):
            result.checks.append(
                TensorCheck("(other tensors)", True, f"{len(files) - len(edited)} unedited tensors byte-identical to the base")
            )
    else:
        for name, m in edited.items():
            if name in files:
                result.checks.append(_check_structure(name, files[name], record, m.right))
    return result


def _load(file: Path, name: str) -> torch.Tensor:
    with safe_open(str(file), framework="pt") as f:
        return f.get_tensor(name)


def _check_against_base(name: str, file: Path, base_file: Path, record: EditRecord) -> TensorCheck:
    m = next(x for x in record.matrices if x.name == name)
    got = m.layout.as_out_in(_load(file, name))
    base = m.layout.as_out_in(_load(base_file, name))
    update = rank_one_update(record.direction.unit, m.right)
    expected = base.float() + update
    error = (got.float() - expected).abs()
    # one rounding of the result, and the float32 arithmetic's own, both bounded by the operands' size
    step = torch.finfo(got.dtype).eps * (base.float().abs() + update.abs()) * 2 + torch.finfo(torch.float32).tiny
    ok = bool((error <= step).all())
    return TensorCheck(
        name, ok, f"max |model - (base + s r^T)| = {float(error.max()):.3g} ({'within' if ok else 'beyond'} one {got.dtype} rounding step)"
    )


def _check_structure(name: str, file: Path, record: EditRecord, right: torch.Tensor) -> TensorCheck:
    """What the weights alone say of the recorded factor: the method's ``recover`` (its registry
    entry) gives it back from the edited weights. A read-out method's factor was measured on
    prompts and cannot be checked this way."""
    m = next(x for x in record.matrices if x.name == name)
    s = record.direction.unit
    stored = _load(file, name)
    w = m.layout.as_out_in(stored).float()
    tol = max(10 * torch.finfo(stored.dtype).eps, 1e-4)  # the weights' own rounding bounds how well they predict the factor
    recover = get_method(record.method).recover
    if recover is None:
        return TensorCheck(name, True, f"{record.method}: the factor was measured on prompts; not checkable from the weights")
    return _agree(name, recover(w, s, record.strength, right), right, "the recorded factor", tol)


def _agree(name: str, got: torch.Tensor, expected: torch.Tensor, what: str, tol: float) -> TensorCheck:
    scale = float(expected.abs().max()) + float(got.abs().max()) + 1e-12
    error = float((got - expected).abs().max()) / scale
    ok = error < tol
    return TensorCheck(name, ok, f"{what} matches the weights to {error:.2g} (relative)")


def _weights(folder: Path) -> dict[str, Path]:
    files = weight_files(folder)
    if not files:
        raise PatchError(f"{folder} holds no safetensors weights (model.safetensors or a shard index)")
    return files


def _model_type(folder: Path) -> str | None:
    try:
        value = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
        return str(value) if value else None
    except (OSError, ValueError, AttributeError):
        return None
