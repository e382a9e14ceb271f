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
import re
import shutil
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from rosi._fs import regular_file
from rosi.edit.methods import get_method
from rosi.edit.rank_one import rank_one_update
from rosi.edit.record import RECORD_FILE, EditRecord, describe_file, wrong_kind
from rosi.errors import RosiError, first_line
from rosi.export.stream import INDEX, stream_edit, tensor_info, tensor_sha256, weight_files
from rosi.export.verification import Check, Verification
from rosi.model.writers import Layout

PATCH_FORMAT = "rosi-patch/1"
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
    """The identity of the base tensors ``record`` edits, read from ``base``'s files (which the
    record must fit: :func:`check_fits`)."""
    files = check_fits(record, base, what="base")
    tensors = {}
    for m in record.matrices:
        tensors[m.name] = {"sha256": _read(files[m.name], tensor_sha256, m.name), **_read(files[m.name], tensor_info, m.name)}
    return BaseIdentity(_model_type(base), tensors)


def write_patch(record: EditRecord, base: Path, out: Path) -> Path:
    """The patch of ``record`` for the base checkpoint folder ``base``, as one safetensors file.
    A base the record does not fit (another width, another architecture, tensors missing) is
    refused before anything is written."""
    return record.save(out, extra={"rosi_patch": json.dumps({"format": PATCH_FORMAT, "base": base_identity(base, record).to_json()})})


PATCH_FIX = "pass a patch written by `rosi patch` (or `rosi export patch`)"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def read_patch(path: Path) -> tuple[EditRecord, BaseIdentity]:
    """A patch file's edit record and base identity, every field checked before anything is
    computed from them: a :class:`PatchError` naming the file (and, for a file of another kind,
    the kind) otherwise."""
    path = Path(path)
    if path.is_dir():
        raise PatchError(f"{path} is {describe_file(path)}, not a patch file; make a patch of it with `rosi patch {path} --out FILE`")
    try:
        regular_file(path, "patch")
    except RosiError as e:
        raise PatchError(f"{e}; {PATCH_FIX}") from None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise PatchError(f"{path} is not a readable patch ({type(e).__name__}: {first_line(str(e))}); {PATCH_FIX}") from None
    if "rosi_patch" not in meta:
        if "rosi_edit" in meta:
            raise PatchError(f"{path} is an edit record, not a patch; make a patch of it with `rosi patch {path} --base BASE --out FILE`")
        raise PatchError(wrong_kind(path, "a patch", PATCH_FIX))
    identity = _identity(meta["rosi_patch"], path)
    try:
        record = EditRecord.load(path, what="patch", fix=PATCH_FIX)
    except RosiError as e:
        raise PatchError(str(e)) from None
    edited = {m.name for m in record.matrices}
    if set(identity.tensors) != edited:
        different = sorted(set(identity.tensors) ^ edited)
        raise PatchError(f"{path}: the patch's base identity and its edit name different tensors ({', '.join(different[:3])}); {PATCH_FIX}")
    fits(record, {name: t["shape"] for name, t in identity.tensors.items()}, f"{path}: the patch's base")
    return record, identity


def _identity(text: str, path: Path) -> BaseIdentity:
    """The base identity of a patch's metadata, its fields checked."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise PatchError(f"{path}: the patch's base identity is not valid JSON ({first_line(str(e))}); {PATCH_FIX}") from None
    if not isinstance(data, dict) or data.get("format") != PATCH_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise PatchError(f"{path}: patch format {found!r}, not {PATCH_FORMAT!r} (written by another version of rosi?); {PATCH_FIX}")
    base = data.get("base")
    problem = _identity_problem(base)
    if problem:
        raise PatchError(f"{path}: the patch's base identity {problem}; {PATCH_FIX}")
    assert isinstance(base, dict)
    return BaseIdentity(base.get("model_type"), {k: dict(v) for k, v in base["tensors"].items()})


def _identity_problem(base: object) -> str | None:
    if not isinstance(base, dict):
        return f"is {base!r}, not an object"
    if not isinstance(base.get("model_type"), (str, type(None))):
        return f"model_type {base.get('model_type')!r} is not a name"
    tensors = base.get("tensors")
    if not isinstance(tensors, dict):
        return f"tensors {tensors!r} are not an object"
    for name, t in tensors.items():
        if not isinstance(t, dict):
            return f"tensor {name!r} is {t!r}, not an object"
        if not isinstance(t.get("sha256"), str) or not _SHA256.match(t["sha256"]):
            return f"tensor {name!r}: sha256 {t.get('sha256')!r} is not a sha256 digest"
        if not isinstance(t.get("dtype"), str):
            return f"tensor {name!r}: dtype {t.get('dtype')!r} is not a name"
        shape = t.get("shape")
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
            return f"tensor {name!r}: shape {shape!r} is not a list of sizes"
    return None


def check_base(base: Path, identity: BaseIdentity) -> None:
    """Every tensor the patch edits is in ``base`` with the bytes it was made for."""
    files = _weights(base)
    model_type = _model_type(base)
    if identity.model_type and model_type and model_type != identity.model_type:
        raise PatchError(f"{base} is a {model_type!r} model; the patch is for a {identity.model_type!r} model: apply it to its own base")
    shapes = _shapes(base, {name: files[name] for name in identity.tensors if name in files})
    for name, expected in identity.tensors.items():
        if name not in files:
            raise PatchError(f"{base} has no tensor {name!r}; this patch is for another model")
        got = {"dtype": _read(files[name], tensor_info, name)["dtype"], "shape": shapes[name]}
        if got != {"dtype": expected["dtype"], "shape": expected["shape"]}:
            raise PatchError(
                f"{base}: tensor {name} is {got['dtype']} {got['shape']}, the patch's base {expected['dtype']} {expected['shape']}: "
                "this patch is for a model of another shape; apply it to its own base"
            )
        if _read(files[name], tensor_sha256, name) != expected["sha256"]:
            raise PatchError(
                f"{base}: tensor {name} differs from the one the patch was made for (sha256 {expected['sha256'][:12]}...); "
                "this is another base model or another revision of it"
            )


def check_fits(record: EditRecord, folder: Path, *, what: str = "model") -> dict[str, Path]:
    """``record`` fits the checkpoint folder ``folder`` (its base, or the model it edited): every
    edited tensor is there, with the shape the record's direction and factors need, and the
    architecture is the record's where both are known. Checked before anything is computed;
    returns the folder's weight files by tensor name."""
    files = _weights(folder)
    model_type = _model_type(folder)
    if record.model_type and model_type and model_type != record.model_type:
        raise PatchError(
            f"{folder} is a {model_type!r} model; the edit was made on a {record.model_type!r} model: "
            f"pass its own {what} (a model of the same architecture and size)"
        )
    missing = [m.name for m in record.matrices if m.name not in files]
    if missing:
        raise PatchError(f"{folder} has no tensor {missing[0]!r} that the edit changes: it is not the {what} of this edit")
    fits(record, _shapes(folder, {m.name: files[m.name] for m in record.matrices}), str(folder))
    return files


def fits(record: EditRecord, shapes: Mapping[str, Sequence[int]], where: str) -> None:
    """Each matrix the record edits, of the stored shape ``shapes[name]``, takes the record's
    direction (its output size) and factors (its input size): a :class:`PatchError` otherwise."""
    size = record.direction.size
    for m in record.matrices:
        shape = list(shapes[m.name])
        dims = 3 if m.layout is Layout.EXPERTS_OUT_IN else 2
        if len(shape) != dims:
            raise PatchError(
                f"{where}: tensor {m.name} has shape {shape}, not the {dims} dimensions the edit's {m.layout.value} layout needs"
            )
        out_size, in_size = (shape[-1], shape[-2]) if m.layout is Layout.IN_OUT else (shape[-2], shape[-1])
        if out_size != size:
            raise PatchError(
                f"{where}: tensor {m.name} writes {out_size} values, the edit's direction has {size}: "
                "the edit was made for a model of another width; use it with the model it was made for"
            )
        factor = [*shape[:-2], in_size]
        for right in (m.right, m.right2):
            if right is not None and list(right.shape) != factor:
                raise PatchError(
                    f"{where}: tensor {m.name} has shape {shape}, which takes a factor of shape {factor}, "
                    f"the edit's is {list(right.shape)}: the edit was made for a model of another shape"
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
    check_fits(record, base, what="base")
    applied = stream_edit(base, out, record, recompute=False)
    copy_model_files(base, out)
    return applied


def revert_folder(model: Path, out: Path, record: EditRecord | None = None) -> EditRecord:
    """Write the base of a rosi output (its recorded edit subtracted) into the folder ``out``;
    the record (``record``, already read and checked, or read here) is checked against the
    model's weights first."""
    if record is None:
        record = load_record(model)
        check_fits(record, model)
    stream_edit(model, out, record, revert=True)
    copy_model_files(model, out)
    return record


def load_record(folder: Path) -> EditRecord:
    """The edit record of a folder rosi wrote, its ``rosi.json`` checked too; the record knows the
    folder's architecture (``config.json``'s ``model_type``)."""
    from rosi.export.checkpoint import read_manifest

    folder = Path(folder)
    if not folder.is_dir():
        if not (folder.exists() or folder.is_symlink()):
            raise PatchError(f"{folder} does not exist; pass a checkpoint folder rosi wrote")
        raise PatchError(
            f"{folder} is {describe_file(folder)}, not a checkpoint folder rosi wrote; pass the folder (with its {RECORD_FILE})"
        )
    path = folder / RECORD_FILE
    if not path.is_file():
        raise PatchError(f"{folder} holds no edit record ({RECORD_FILE}); it is not a model rosi edited")
    manifest = read_manifest(folder)
    record = EditRecord.load(path)
    if record.model_type is None:
        named = ((manifest or {}).get("base_model") or {}).get("model_type")
        model_type = _model_type(folder) or named
        if model_type:
            record = replace(record, model_type=model_type)
    return record


def verify(model: Path, base: Path | None = None, log: Callable[[str], None] | None = None) -> Verification:
    """Check a rosi output against its edit record: with ``base``, that every edited tensor is the
    base's plus ``outer(s_hat, r)`` within one rounding step and every other tensor byte-identical;
    without, that each recorded factor fits the weights where the method allows a check. A record
    that does not fit the model's shapes, or a base of another shape or architecture, is an error
    before anything is computed."""
    record = load_record(model)
    result = Verification(
        str(model), "checkpoint", record.method, record.strength, len(record.matrices), base=None if base is None else str(base)
    )
    files = _weights(model)
    edited = {m.name: m for m in record.matrices}
    for m in record.matrices:
        if m.name not in files:
            result.checks.append(Check(m.name, False, "the recorded matrix is not in the model's weights"))
    present = {name: files[name] for name in edited if name in files}
    shapes = _shapes(model, present)
    fits(replace(record, matrices=tuple(m for m in record.matrices if m.name in present)), shapes, f"{model} (its own edit record)")
    if base is not None:
        base_files = _same_shapes(model, files, base)
        for name, file in sorted(files.items()):
            if name not in base_files:
                result.checks.append(Check(name, False, "not in the base"))
            elif name in edited:
                result.checks.append(_check_against_base(name, file, base_files[name], record))
            elif _read(file, tensor_sha256, name) != _read(base_files[name], tensor_sha256, name):
                result.checks.append(Check(name, False, "not edited by the record, but differs from the base"))
        if not any(c.ok is False for c in result.checks):
            result.checks.append(Check("(other tensors)", True, f"{len(files) - len(edited)} unedited tensors byte-identical to the base"))
    else:
        for name, m in edited.items():
            if name in files:
                result.checks.append(_check_structure(name, files[name], record, m.right))
    return result


def verify_patch(path: Path, base: Path | None = None) -> Verification:
    """Check a patch file: every field of its edit record and base identity (:func:`read_patch`)
    and, given its base checkpoint folder, that the base is the one it names (each tensor the
    patch edits of the dtype, shape and sha256 it records, and of the shape the edit needs)."""
    record, identity = read_patch(path)
    result = Verification(
        str(path), "patch", record.method, record.strength, len(record.matrices), base=None if base is None else str(base)
    )
    kind = identity.model_type or "a model of unrecorded type"
    result.checks.append(
        Check("(patch)", True, f"its edit record and the identity of {len(identity.tensors)} base tensors ({kind}) are whole")
    )
    if base is not None:
        try:
            check_base(base, identity)
            check_fits(record, base, what="base")
            result.checks.append(Check("(base)", True, "every tensor the patch edits is the one it was made for (sha256, dtype, shape)"))
        except PatchError as e:
            result.checks.append(Check("(base)", False, str(e)))
    return result


def _same_shapes(model: Path, files: dict[str, Path], base: Path) -> dict[str, Path]:
    """``base``'s weight files, once every tensor it shares with ``model`` has the model's shape
    and both are of one architecture (a base of another size cannot be compared)."""
    base_files = _weights(base)
    model_type, base_type = _model_type(model), _model_type(base)
    if model_type and base_type and model_type != base_type:
        raise PatchError(f"{base} is a {base_type!r} model and {model} a {model_type!r} one: pass the base {model} was made from")
    shared = sorted(set(files) & set(base_files))
    if not shared:
        raise PatchError(f"{base} shares no tensor with {model}: it is not its base; pass the base {model} was made from")
    mine, theirs = _shapes(model, {n: files[n] for n in shared}), _shapes(base, {n: base_files[n] for n in shared})
    for name in shared:
        if mine[name] != theirs[name]:
            raise PatchError(
                f"{base} is not the base of {model}: tensor {name} is {theirs[name]} there and {mine[name]} in the model "
                f"(a model of another size); pass the base {model} was made from"
            )
    return base_files


def _load(file: Path, name: str) -> torch.Tensor:
    with safe_open(str(file), framework="pt") as f:
        return f.get_tensor(name)


def _check_against_base(name: str, file: Path, base_file: Path, record: EditRecord) -> Check:
    m = next(x for x in record.matrices if x.name == name)
    got = m.layout.as_out_in(_load(file, name))
    base = m.layout.as_out_in(_load(base_file, name))
    update = rank_one_update(record.direction.unit, m.right)
    expected = base.float() + update
    error = (got.float() - expected).abs()
    # one rounding of the result, and the float32 arithmetic's own, both bounded by the operands' size
    step = torch.finfo(got.dtype).eps * (base.float().abs() + update.abs()) * 2 + torch.finfo(torch.float32).tiny
    ok = bool((error <= step).all())
    return Check(
        name, ok, f"max |model - (base + s r^T)| = {float(error.max()):.3g} ({'within' if ok else 'beyond'} one {got.dtype} rounding step)"
    )


def _check_structure(name: str, file: Path, record: EditRecord, right: torch.Tensor) -> Check:
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
        return Check(name, True, f"{record.method}: the factor was measured on prompts; not checkable from the weights")
    return _agree(name, recover(w, s, record.strength, right), right, "the recorded factor", tol)


def _agree(name: str, got: torch.Tensor, expected: torch.Tensor, what: str, tol: float) -> Check:
    scale = float(expected.abs().max()) + float(got.abs().max()) + 1e-12
    error = float((got - expected).abs().max()) / scale
    ok = error < tol
    return Check(name, ok, f"{what} matches the weights to {error:.2g} (relative)")


def _weights(folder: Path) -> dict[str, Path]:
    try:
        files = weight_files(folder)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
        raise PatchError(
            f"{folder}'s weights cannot be read ({type(e).__name__}: {first_line(str(e))}): truncated or damaged; write or download the checkpoint again"
        ) from None
    if not files:
        raise PatchError(f"{folder} holds no safetensors weights (model.safetensors or a shard index)")
    if not all(isinstance(n, str) and isinstance(p, Path) for n, p in files.items()):
        raise PatchError(f"{folder}'s shard index is not a map of tensor names to files; the checkpoint is damaged")
    outside = next((p for p in set(files.values()) if p.parent != folder or p.name in ("", ".", "..")), None)
    if outside is not None:
        raise PatchError(f"{folder}'s shard index names {outside}, which is not a file of the folder; the checkpoint is damaged")
    return files


def _shapes(folder: Path, files: Mapping[str, Path]) -> dict[str, list[int]]:
    """The stored shape of each tensor named in ``files`` (one header read per file): a
    :class:`PatchError` naming a file that is missing, truncated or not safetensors."""
    by_file: dict[Path, list[str]] = {}
    for name, file in files.items():
        by_file.setdefault(file, []).append(name)
    shapes = {}
    for file, names in by_file.items():
        if not file.is_file():
            raise PatchError(f"{folder}: weight file {file.name} is missing or not a regular file; the checkpoint is incomplete")
        try:
            with safe_open(str(file), framework="pt") as f:
                stored = set(f.keys())
                for name in names:
                    if name not in stored:
                        raise PatchError(f"{file} has no tensor {name!r}, which its shard index lists there; the checkpoint is damaged")
                    shapes[name] = list(f.get_slice(name).get_shape())
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise PatchError(f"{file} is not a readable safetensors file ({first_line(str(e))}): truncated or damaged") from None
    return shapes


def _read(file: Path, reader: Callable[[Path, str], Any], name: str) -> Any:
    """``reader(file, name)`` (a tensor's info or digest), a damaged file named as such."""
    try:
        return reader(file, name)
    except RosiError:
        raise
    except (OSError, ValueError, KeyError, TypeError, IndexError, RecursionError, struct.error) as e:
        raise PatchError(f"{file}: tensor {name} cannot be read ({type(e).__name__}: {first_line(str(e))}): truncated or damaged") from None


def _model_type(folder: Path) -> str | None:
    if not (folder / "config.json").is_file():
        return None
    try:
        value = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
        return str(value) if isinstance(value, str) and value else None
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
