"""The edit record: what an edit did to which matrices, enough to describe, save and revert it.

Saved as one safetensors file (``rosi_edit.safetensors`` in every checkpoint rosi writes): the
direction, every right factor (``right/<parameter name>``), and the rest as JSON metadata. A
rank-two edit (``surgical``) adds its second direction (``second_direction``) and each matrix's
second right factor (``right2/<parameter name>``): ``W' = W + outer(s_hat, right) + outer(f_hat, right2)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from rosi._fs import atomic_file, regular_file, with_article
from rosi.direction.vector import FORMAT as DIRECTION_FORMAT
from rosi.direction.vector import MAX_SIZE, TENSOR_NAME, Direction
from rosi.errors import DirectionError, RecordError, RosiError, first_line
from rosi.model.finite import all_finite
from rosi.model.writers import Layout, WriterKind

RECORD_FORMAT = "rosi-edit/1"
RECORD_FILE = "rosi_edit.safetensors"  # the record's name in every folder rosi writes


@dataclass(frozen=True)
class MatrixEdit:
    name: str
    kind: WriterKind
    layout: Layout
    layer: int | None
    right: torch.Tensor  # float32 right factor on the CPU: W' = W + outer(s_hat, right) in [out, in] layout
    right2: torch.Tensor | None = None  # rank-two edits: the factor along the record's second direction


@dataclass
class EditRecord:
    """What an edit did, enough to describe, save and revert it."""

    method: str
    strength: float
    direction: Direction
    targets: tuple[str, ...]
    layers: tuple[int, ...] | None
    matrices: tuple[MatrixEdit, ...]
    untied_embeddings: bool = False
    # The writers were narrowed to a chosen subset (``apply_edit(writers=...)``), e.g. by
    # :func:`rosi.edit.scope.select_writers`; ``matrices`` lists the ones edited.
    selected: bool = False
    # Bit-exact copies of the edited weights (only with keep_originals=True; never saved).
    originals: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)
    # Writers whose weights accelerate offloaded carry the edit as a forward hook (never saved).
    hooks: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # Rank-two edits: the second left direction (``surgical``: the false-refusal direction, unit).
    second: Direction | None = None
    # The architecture (``config.model_type``) of the model edited, where known: what a base the
    # record is exported for must be.
    model_type: str | None = None

    @property
    def rank(self) -> int:
        return 1 if self.second is None else 2

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for m in self.matrices:
            kinds[m.kind.value] = kinds.get(m.kind.value, 0) + 1
        return {
            "method": self.method,
            "strength": self.strength,
            "targets": list(self.targets),
            "layers": None if self.layers is None else list(self.layers),
            "selected": self.selected,
            "matrices_edited": len(self.matrices),
            "matrices_by_kind": kinds,
            "untied_embeddings": self.untied_embeddings,
            "direction": self.direction.info(),
            **({"second_direction": self.second.info()} if self.second is not None else {}),
        }

    def save(self, path: str | Path, extra: dict[str, str] | None = None) -> Path:
        """One safetensors file: the direction, every right factor, and the rest as JSON metadata
        (``extra``: more metadata entries, e.g. a patch's base identity)."""
        path = Path(path)
        tensors = {"direction": self.direction.vector}
        tensors.update({f"right/{m.name}": m.right.contiguous() for m in self.matrices})
        if self.second is not None:
            tensors["second_direction"] = self.second.vector
            tensors.update({f"right2/{m.name}": m.right2.contiguous() for m in self.matrices if m.right2 is not None})
        header = {
            "format": RECORD_FORMAT,
            **{k: v for k, v in self.summary().items() if k != "matrices_by_kind"},
            **({"model_type": self.model_type} if self.model_type else {}),
            "matrices": [{"name": m.name, "kind": m.kind.value, "layout": m.layout.value, "layer": m.layer} for m in self.matrices],
        }
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata={"rosi_edit": json.dumps(header), **(extra or {})})
        return path

    @classmethod
    def load(cls, path: str | Path, *, what: str = "edit record", fix: str | None = None) -> EditRecord:
        """The record in ``path``, every field checked (its format tag, the header's fields and
        their types, every factor's presence, dtype, shape and values) before anything is computed
        from it: a :class:`~rosi.errors.RecordError` naming the file, what is wrong and the fix
        otherwise. ``what`` and ``fix`` word the messages (a patch is a record too)."""
        path = Path(path)
        fix = fix or FIX
        _record_file(path, what)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                if "rosi_edit" not in meta:
                    raise RecordError(wrong_kind(path, with_article(what), fix))
                return _read(cls, f, _header(meta["rosi_edit"]), str(path))
        except _Bad as e:
            raise RecordError(f"{path}: the {what}'s {e}; {fix}") from None
        except DirectionError as e:
            raise RecordError(f"{e}; {fix}") from None
        except (SafetensorError, OSError, ValueError, RuntimeError, KeyError, TypeError, RecursionError, OverflowError) as e:
            raise RecordError(f"{path} is not a readable {what} ({type(e).__name__}: {first_line(str(e))}); {fix}") from None


FIX = "pass the rosi_edit.safetensors of a folder rosi wrote, or write the record again with rosi"
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


class _Bad(Exception):
    """A field of a record that is wrong: the message says which and how (the caller names the file)."""


def _record_file(path: Path, what: str) -> None:
    """``path`` is a regular file; a folder is named for what it is."""
    if path.is_dir():
        inside = path / RECORD_FILE
        hint = f"; pass {inside}" if inside.is_file() else ""
        raise RecordError(f"{path} is {describe_file(path)}, not {with_article(what)} file{hint}")
    try:
        regular_file(path, what)
    except RosiError as e:
        raise RecordError(str(e)) from None


def _header(text: str) -> dict[str, Any]:
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise _Bad(f"header is not valid JSON ({first_line(str(e))})") from None
    if not isinstance(header, dict):
        raise _Bad(f"header is a JSON {type(header).__name__}, not an object")
    if header.get("format") != RECORD_FORMAT:
        raise _Bad(f"format is {header.get('format')!r}, not {RECORD_FORMAT!r} (written by another version of rosi?)")
    problem = _header_problem(header)
    if problem:
        raise _Bad(problem)
    return header


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_info(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _header_problem(h: dict[str, Any]) -> str | None:
    """What is wrong with a record header's fields (None: nothing)."""
    from rosi.edit.methods import METHODS

    if not isinstance(h.get("method"), str) or h["method"] not in METHODS:
        return f"method {h.get('method')!r} is not one of {', '.join(METHODS)}"
    strength = h.get("strength")
    if not (isinstance(strength, (int, float)) and not isinstance(strength, bool) and math.isfinite(strength)):
        return f"strength {strength!r} is not a finite number"
    if not isinstance(h.get("targets"), list) or not all(isinstance(t, str) for t in h["targets"]):
        return f"targets {h.get('targets')!r} are not a list of names"
    layers = h.get("layers", "missing")
    if layers is not None and not (isinstance(layers, list) and all(_is_int(x) and x >= 0 for x in layers)):
        return f"layers {layers!r} are not a list of layer numbers (or null)"
    for key, required in (("untied_embeddings", True), ("selected", False)):
        if (required or key in h) and not isinstance(h.get(key), bool):
            return f"{key} {h.get(key, 'missing')!r} is not true or false"
    if "model_type" in h and not isinstance(h["model_type"], str):
        return f"model_type {h['model_type']!r} is not a name"
    for key in ("direction", *(("second_direction",) if "second_direction" in h else ())):
        if not _is_info(h.get(key)):
            return f"{key} {h.get(key, 'missing')!r} is not an object of strings"
    matrices = h.get("matrices")
    if not isinstance(matrices, list):
        return f"matrices {matrices!r} are not a list"
    names = set()
    for i, m in enumerate(matrices):
        problem = _matrix_problem(m)
        if problem:
            return f"matrix {i} {problem}"
        if m["name"] in names:
            return f"matrix {m['name']!r} is listed twice"
        names.add(m["name"])
    return None


def _matrix_problem(m: object) -> str | None:
    if not isinstance(m, dict):
        return f"is {m!r}, not an object"
    if not isinstance(m.get("name"), str) or not m["name"]:
        return f"has no name ({m.get('name')!r})"
    if m.get("kind") not in {k.value for k in WriterKind}:
        return f"({m['name']}): kind {m.get('kind')!r} is not one of {', '.join(k.value for k in WriterKind)}"
    if m.get("layout") not in {x.value for x in Layout}:
        return f"({m['name']}): layout {m.get('layout')!r} is not one of {', '.join(x.value for x in Layout)}"
    layer = m.get("layer", "missing")
    if layer is not None and not (_is_int(layer) and layer >= 0):
        return f"({m['name']}): layer {layer!r} is not a layer number (or null)"
    return None


def _vector(f: Any, name: str, *, ndim: int, size: int | None = None) -> torch.Tensor:
    """Tensor ``name`` of an open record, checked before it is read: present, floating-point, of
    ``ndim`` dimensions (and ``size`` values along the last), finite."""
    if name not in set(f.keys()):
        raise _Bad(f"tensor {name!r} is missing")
    stored = f.get_slice(name)
    shape, dtype = list(stored.get_shape()), stored.get_dtype()
    if dtype not in _FLOAT_DTYPES:
        raise _Bad(f"tensor {name!r} is {dtype}, not floating-point")
    if len(shape) != ndim or not all(0 < n <= MAX_SIZE for n in shape) or (size is not None and shape[-1] != size):
        want = f"{ndim} dimension(s)" + (f" of {size} values" if size is not None else "")
        raise _Bad(f"tensor {name!r} has shape {shape}, not {want}")
    tensor: torch.Tensor = f.get_tensor(name).to(torch.float32)
    if not all_finite(tensor):
        raise _Bad(f"tensor {name!r} holds NaN or infinite values")
    return tensor


def _read(cls: type[EditRecord], f: Any, header: dict[str, Any], where: str) -> EditRecord:
    direction = Direction.from_info(_vector(f, "direction", ndim=1), header["direction"], where=where)
    second = None
    if "second_direction" in header:
        vector = _vector(f, "second_direction", ndim=1, size=direction.size)
        second = Direction.from_info(vector, header["second_direction"], where=where)
    listed = {m["name"] for m in header["matrices"]}
    keys = set(f.keys())
    unknown = sorted(k for k in keys if k.split("/", 1)[0] in ("right", "right2") and k.split("/", 1)[-1] not in listed)
    if unknown:
        raise _Bad(f"factors {', '.join(unknown[:3])} are of matrices its header does not list")
    matrices = []
    for m in header["matrices"]:
        layout = Layout(m["layout"])
        ndim = 2 if layout is Layout.EXPERTS_OUT_IN else 1
        right = _vector(f, f"right/{m['name']}", ndim=ndim)
        right2 = None
        if second is not None and f"right2/{m['name']}" in keys:
            right2 = _vector(f, f"right2/{m['name']}", ndim=ndim)
            if right2.shape != right.shape:
                raise _Bad(f"two factors of {m['name']} differ in shape ({list(right.shape)} and {list(right2.shape)})")
        matrices.append(MatrixEdit(m["name"], WriterKind(m["kind"]), layout, m["layer"], right, right2))
    return cls(
        method=header["method"],
        strength=float(header["strength"]),
        direction=direction,
        targets=tuple(header["targets"]),
        layers=None if header["layers"] is None else tuple(header["layers"]),
        matrices=tuple(matrices),
        untied_embeddings=header["untied_embeddings"],
        selected=header.get("selected", False),
        second=second,
        model_type=header.get("model_type"),
    )


def describe_file(path: Path) -> str:
    """What kind of file or folder ``path`` is, in words ("a direction file", "an edit record", "a
    checkpoint folder rosi wrote", ...), for messages about a file of the wrong kind."""
    path = Path(path)
    if path.is_dir():
        if (path / RECORD_FILE).is_file():
            return "a checkpoint folder rosi wrote"
        if (path / "adapter_config.json").is_file():
            return "a LoRA adapter folder"
        if (path / "config.json").is_file():
            return "a model folder"
        return "a folder"
    if not path.is_file():
        return "not a regular file" if path.exists() else "missing"
    try:
        with open(path, "rb") as fh:
            if fh.read(4) == b"GGUF":
                return "a GGUF file"
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            names = list(f.keys())
    except Exception:  # noqa: BLE001 - anything unreadable is "a file of unknown kind"
        return "not a safetensors file"
    if "rosi_patch" in meta:
        return "a patch"
    if "rosi_edit" in meta:
        return "an edit record"
    if meta.get("format") == DIRECTION_FORMAT or names == [TENSOR_NAME]:
        return "a direction file"
    return "a safetensors file without rosi's metadata (a model's weights?)"


def wrong_kind(path: Path, expected: str, fix: str) -> str:
    """The message for a file that is not ``expected`` ("an edit record"): what it is instead."""
    return f"{path} is {describe_file(path)}, not {expected}; {fix}"
