"""Apply an edit to a safetensors checkpoint on disk, one tensor at a time.

The output is the input's weight files, copied byte for byte, with each edited tensor rewritten
in place: read, edited in float32 (``W' = W + outer(s_hat, r)``), and written back in its own dtype
at its own offset. Shapes and dtypes do not change, so the headers (and a shard index) stay as
they are. Memory holds one tensor at a time, so this works for models larger than memory, and the
saved weights keep the checkpoint's own precision whatever precision the edit was searched in.

For a method whose right factor is a function of ``W`` (``rosi``, ``scale``, ``ablate``) the factor
is recomputed here from the checkpoint's own weights; a read-out method's stored factor is used
as it is. The returned record holds the factors actually applied, so it reverts the output.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from rosi.direction.vector import Direction
from rosi.edit.apply import edit_weight
from rosi.edit.methods import get_method
from rosi.edit.rank_one import add_in_place
from rosi.edit.record import EditRecord, MatrixEdit
from rosi.errors import EditError, RosiError
from rosi.model.finite import all_finite
from rosi.model.private import read_header

INDEX = "model.safetensors.index.json"


def weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the weight file of ``folder`` that holds it (the files a shard index names,
    else ``model.safetensors``; rosi's own files beside them are not weights)."""
    index = folder / INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = {name: folder / str(file) for name, file in weight_map.items()}
        outside = next((p for p in set(files.values()) if p.parent != folder or p.name in ("", ".", "..")), None)
        if outside is not None:  # a damaged or hostile index: no file outside the folder is read or copied
            raise RosiError(f"{folder}'s shard index names {outside}, which is not a file of the folder; the checkpoint is damaged")
        return files
    single = folder / "model.safetensors"
    if not single.is_file():
        return {}
    with safe_open(str(single), framework="pt") as f:
        return {name: single for name in f.keys()}


def streamable(folder: Path, record: EditRecord) -> bool:
    """Whether every matrix the record edits is stored under its own name in ``folder``'s
    safetensors files (checkpoints whose tensors transformers renames or fuses on load are not)."""
    try:
        names = weight_files(folder)
    except (OSError, ValueError, KeyError, RosiError):
        return False
    return bool(names) and not record.untied_embeddings and all(m.name in names for m in record.matrices)


@torch.no_grad()
def stream_edit(source: Path, out: Path, record: EditRecord, *, recompute: bool = True, revert: bool = False) -> EditRecord:
    """Write ``source``'s weight files into folder ``out`` with ``record``'s edit applied; return
    the record of the factors applied. With ``recompute`` the factors of weight-based methods are
    recomputed from these weights (an edit searched on another copy of them); without it, the
    record's factors are applied as they are (a patch made for exactly these weights). ``revert``
    subtracts the record's factors instead (undoing an edit)."""
    names = weight_files(source)
    files = sorted(set(names.values()))
    for file in files:
        shutil.copyfile(file, out / file.name)
    if (source / INDEX).is_file():
        shutil.copyfile(source / INDEX, out / INDEX)
    method = get_method(record.method)
    s_hat = record.direction.unit
    applied = []
    for m in record.matrices:
        if m.name not in names:
            raise EditError(f"{source} has no tensor {m.name!r}; save the edited model in memory instead")
        file = names[m.name]
        with safe_open(str(file), framework="pt") as f:
            result = f.get_tensor(m.name).contiguous()
        view = m.layout.as_out_in(result)
        if revert:
            right = m.right
            if m.right2 is not None and record.second is not None:
                add_in_place(view, record.second.unit, -m.right2)
            add_in_place(view, s_hat, -m.right)
        else:  # the same code as the edit in memory, so the bytes agree with it exactly
            right = edit_weight(view, s_hat, method, record.strength, None if (method.factor and recompute) else m.right)
            if m.right2 is not None and record.second is not None:
                add_in_place(view, record.second.unit, m.right2)
        if not all_finite(result):
            raise EditError(f"{record.method} at strength {record.strength:g} makes {m.name} NaN or infinite; use a smaller strength")
        _overwrite_tensor(out / file.name, m.name, result)
        applied.append(MatrixEdit(m.name, m.kind, m.layout, m.layer, right.to(torch.float32).cpu(), m.right2))
    return replace(record, matrices=tuple(applied), originals=None)


def _entry(f: Any, name: str) -> tuple[int, int, dict[str, Any]]:
    """A tensor's absolute byte range in an open safetensors file, and its header entry."""
    data, header = read_header(f)
    entry = header[name]
    start, end = entry["data_offsets"]
    return data + start, data + end, entry


def tensor_sha256(path: Path, name: str) -> str:
    """sha256 of a stored tensor's bytes (what identifies the base a patch is for)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        start, end, _ = _entry(f, name)
        f.seek(start)
        left = end - start
        while left > 0:
            chunk = f.read(min(left, 1 << 24))
            if not chunk:
                raise EditError(f"{path} is truncated inside tensor {name}")
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def tensor_info(path: Path, name: str) -> dict[str, Any]:
    """A stored tensor's dtype and shape (as its file header says)."""
    with open(path, "rb") as f:
        _, _, entry = _entry(f, name)
    return {"dtype": entry["dtype"], "shape": list(entry["shape"])}


def _overwrite_tensor(path: Path, name: str, tensor: torch.Tensor) -> None:
    """Write ``tensor``'s bytes over the stored tensor ``name`` of safetensors file ``path``."""
    with open(path, "r+b") as f:
        start, end, _ = _entry(f, name)
        data = tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        if len(data) != end - start:
            raise EditError(f"{path}: tensor {name} holds {end - start} bytes, the edited one {len(data)}; the checkpoint does not match")
        f.seek(start)
        f.write(data)


def plan_record(
    config: Any,
    direction: Direction,
    method: str,
    strength: float,
    targets: tuple[str, ...],
    layers: tuple[int, ...] | None,
    factors_from: Path | None = None,
) -> EditRecord:
    """The record of an edit, made without loading the model's weights: the writers come from the
    architecture map of the model built on the meta device from its ``config``; the right factors
    are computed from the stored tensors of ``factors_from`` one at a time (without it they are
    zero placeholders, for a writer that computes them itself). Only methods whose factor is a
    function of the weights can be planned."""
    import transformers as T

    from rosi.edit.apply import check_strength
    from rosi.model.architecture import architecture_map

    spec = get_method(method)
    if spec.needs_reads:
        raise EditError(f"method {method!r} needs read-outs measured on prompts; use rosi run")
    strength = check_strength(method, strength)
    with torch.device("meta"):
        model = T.AutoModelForCausalLM.from_config(config)
    arch = architecture_map(model)
    direction.check_size(arch.hidden_size)
    try:
        chosen = arch.select(targets, layers)
    except ValueError as e:
        raise EditError(str(e)) from None
    if arch.tied_embeddings and any(w.kind.value == "embedding" for w in chosen):
        raise EditError("the embedding is tied to the output head: editing it on disk would edit both; load the model (--untie-embeddings)")
    params = dict(model.named_parameters(remove_duplicate=False))
    files = weight_files(factors_from) if factors_from is not None else {}
    s_hat = direction.unit
    matrices = []
    for w in chosen:
        shape = w.layout.as_out_in(params[w.name]).shape
        right = torch.zeros(shape[:-2] + shape[-1:])
        if factors_from is not None:
            if w.name not in files:
                raise EditError(f"{factors_from} has no tensor {w.name!r}; load the model to edit it")
            with safe_open(str(files[w.name]), framework="pt") as f:
                stored = f.get_tensor(w.name).contiguous()
            # the edit's own code on a copy: the factor is bit for bit the one an edit in memory computes
            right = edit_weight(w.layout.as_out_in(stored), s_hat, spec, strength)
        matrices.append(MatrixEdit(w.name, w.kind, w.layout, w.layer, right))
    return EditRecord(method, strength, direction, targets, layers, tuple(matrices))
