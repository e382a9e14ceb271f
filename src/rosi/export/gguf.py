"""GGUF out: a ``.gguf`` file edited without converting the model, and the edit as a GGUF LoRA.

:func:`edit_gguf` rewrites only the tensors the edit touches: each is dequantized (the ``gguf``
package), edited in float32, and quantized back to its own type where the package can quantize it
(F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1), else to ``fallback`` (default Q8_0; the output's
metadata says which). Every other tensor and every metadata key is copied byte for byte, memory
holds one tensor at a time, and ``rosi.*`` metadata keys record the edit and the base file.

:func:`write_gguf_lora` writes llama.cpp's adapter form of the edit (``general.type`` adapter,
``adapter.type`` lora, ``adapter.lora.alpha`` 1.0, rank 1), for ``llama-server --lora``: each
edited tensor ``T`` gets ``T.lora_a`` (numpy ``[1, in]``, or ``[vocab, 1]`` for the embedding) and
``T.lora_b`` (``[out, 1]``), in float32.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rosi._version import __version__
from rosi.edit.apply import edit_weight
from rosi.edit.methods import get_method
from rosi.edit.record import EditRecord, MatrixEdit
from rosi.errors import RosiError
from rosi.export.verification import Check, Verification
from rosi.model.finite import all_finite
from rosi.model.writers import WriterKind

REQUANTIZABLE = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
# transformers model types whose llama.cpp architecture has another name
GGUF_ARCH = {"mixtral": "llama", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "gemma3_text": "gemma3"}


class GGUFError(RosiError):
    """A GGUF file cannot be edited or written as asked."""


def gguf_name(hf_name: str, arch: str, n_layers: int) -> str:
    """The llama.cpp tensor name of a transformers parameter (``model.layers.3.self_attn.o_proj.weight``
    -> ``blk.3.attn_output.weight``), by the ``gguf`` package's own tensor map."""
    import gguf

    archs = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in archs:
        raise GGUFError(f"the gguf package knows no architecture {arch!r}")
    names = gguf.get_tensor_name_map(archs[arch], n_layers)
    found = names.get_name(hf_name, try_suffixes=(".weight", ".bias")) or names.get_name(hf_name + ".weight", try_suffixes=(".weight",))
    if found is None:
        raise GGUFError(f"{hf_name} has no llama.cpp name for architecture {arch!r}")
    return str(found)


@dataclass
class GGUFEdit:
    """What :func:`edit_gguf` did."""

    tensors: dict[str, str] = field(default_factory=dict)  # gguf name -> "TYPE" or "FROM->TO" (requantized to another type)
    copied: int = 0

    def requantized(self) -> dict[str, str]:
        return {k: v for k, v in self.tensors.items() if "->" in v}


def _field_value(field_: Any) -> Any:
    return field_.contents()


def edit_gguf(source: Path, out: Path, record: EditRecord, *, fallback: str = "Q8_0", base_sha256: str | None = None) -> GGUFEdit:
    """Write ``source`` with ``record`` applied to the file ``out`` (see the module docstring)."""
    import gguf

    if fallback not in REQUANTIZABLE:
        raise GGUFError(f"--gguf-type {fallback!r}: the gguf package quantizes {', '.join(REQUANTIZABLE)}")
    reader = gguf.GGUFReader(source)
    arch = str(_field_value(reader.fields["general.architecture"]))
    n_layers = int(_field_value(reader.fields[f"{arch}.block_count"]))
    wanted = {gguf_name(m.name, arch, n_layers): m for m in record.matrices}
    present = {t.name for t in reader.tensors}
    missing = sorted(set(wanted) - present)
    if missing:
        raise GGUFError(f"{source} has no tensor {missing[0]}; the edit is for another model")
    result = GGUFEdit()
    new_data: dict[str, np.ndarray] = {}
    new_type: dict[str, Any] = {}
    s_hat = record.direction.unit
    method = get_method(record.method)
    for t in reader.tensors:
        if t.name not in wanted:
            continue
        m = wanted[t.name]
        # writable: an F32 tensor dequantizes to a read-only view of the source file's memory map (copied then)
        weight = torch.from_numpy(np.require(gguf.quants.dequantize(t.data, t.tensor_type), np.float32, ["C", "W"]))
        view = m.layout.as_out_in(weight)
        edit_weight(view, s_hat, method, record.strength, None if method.factor else m.right)
        if not all_finite(weight):
            raise GGUFError(f"{record.method} at strength {record.strength:g} makes {t.name} NaN or infinite; use a smaller strength")
        own = t.tensor_type.name
        target = getattr(gguf.GGMLQuantizationType, own if own in REQUANTIZABLE else fallback)
        new_data[t.name] = gguf.quants.quantize(weight.numpy(), target)
        new_type[t.name] = target
        result.tensors[t.name] = own if own in REQUANTIZABLE else f"{own}->{fallback}"
    meta = {
        "rosi.version": __version__,
        "rosi.edit.method": record.method,
        "rosi.edit.strength": str(record.strength),
        "rosi.edit.direction": json.dumps(record.direction.info()),
        "rosi.edit.tensors": json.dumps(result.tensors),
        "rosi.base.file": source.name,
        "rosi.base.sha256": base_sha256 or "",
    }
    _write(reader, out, arch, new_data, new_type, meta, record)
    result.copied = len(reader.tensors) - len(new_data)
    return result


def _write(
    reader: Any, out: Path, arch: str, new_data: dict[str, np.ndarray], new_type: dict[str, Any], meta: dict[str, str], record: EditRecord
) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(out), arch=arch, endianess=reader.endianess)
    for f in reader.fields.values():
        if f.name == gguf.Keys.General.ARCHITECTURE or f.name.startswith("GGUF.") or f.name.startswith("rosi."):
            continue
        value_type = f.types[0]
        sub_type = f.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(f.name, f.contents(), value_type, sub_type=sub_type)
    for key, value in meta.items():
        writer.add_string(key, value)
    writer.add_array("rosi.edit.direction_vector", record.direction.vector.tolist())
    for t in reader.tensors:
        data = new_data.get(t.name, t.data)
        writer.add_tensor_info(t.name, data.shape, data.dtype, data.nbytes, new_type.get(t.name, t.tensor_type))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(new_data.get(t.name, t.data), tensor_endianess=reader.endianess)
    writer.close()


def write_gguf_lora(record: EditRecord, model_type: str, n_layers: int, out: Path, base_name: str | None = None) -> Path:
    """llama.cpp's LoRA adapter of ``record`` for a base of this transformers ``model_type``."""
    import gguf

    arch = GGUF_ARCH.get(model_type, model_type)
    names = [gguf_name(m.name, arch, n_layers) for m in record.matrices]  # every name before the file is made
    writer = gguf.GGUFWriter(str(out), arch=arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 1.0)
    if base_name:
        writer.add_string("rosi.base", base_name)
    writer.add_string("rosi.edit.method", record.method)
    writer.add_string("rosi.edit.strength", str(record.strength))
    s = record.direction.unit.numpy().astype(np.float32)
    for m, name in zip(record.matrices, names, strict=True):
        a, b = _lora_pair(m, s)
        writer.add_tensor(f"{name}.lora_a", a)
        writer.add_tensor(f"{name}.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _lora_pair(m: MatrixEdit, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(lora_a, lora_b)`` numpy arrays as llama.cpp reads them (ggml's ne is the numpy shape reversed)."""
    right = m.right.numpy().astype(np.float32)
    if m.kind is WriterKind.EMBEDDING:
        return np.ascontiguousarray(right[:, None]), np.ascontiguousarray(s[:, None])  # [vocab, 1], [hidden, 1]
    if m.kind is WriterKind.EXPERT:
        experts = right.shape[0]
        return np.ascontiguousarray(right[:, None, :]), np.ascontiguousarray(np.repeat(s[None, :, None], experts, axis=0))
    return np.ascontiguousarray(right[None, :]), np.ascontiguousarray(s[:, None])  # [1, in], [out, 1]


def read_rosi_metadata(path: Path) -> dict[str, str]:
    """The ``rosi.*`` keys of a GGUF file (what ``edit_gguf`` recorded)."""
    import gguf

    reader = gguf.GGUFReader(path)
    return {k: str(_field_value(f)) for k, f in reader.fields.items() if k.startswith("rosi.") and k != "rosi.edit.direction_vector"}


def verify_gguf(model: Path, base: Path | None = None) -> Verification:
    """Check a GGUF file rosi edited: its ``rosi.*`` metadata names the edit and, given its base
    file, every tensor the edit did not touch is byte-identical, every edited one present and changed."""
    import gguf

    meta = read_rosi_metadata(model)
    if not meta:
        raise GGUFError(f"{model} holds no rosi.* metadata; it is not a GGUF file rosi edited")
    edited = set(json.loads(meta.get("rosi.edit.tensors", "{}")))
    result = Verification(
        str(model),
        "gguf",
        meta.get("rosi.edit.method", "?"),
        _strength(meta),
        len(edited),
        base=None if base is None else str(base),
        metadata=meta,
    )
    if base is None:
        result.checks.append(
            Check("(metadata)", True, f"{len(edited)} tensors recorded as edited; pass --base to compare them with the base file")
        )
        return result
    ours = {t.name: t for t in gguf.GGUFReader(model).tensors}
    theirs = {t.name: t for t in gguf.GGUFReader(base).tensors}
    if set(ours) != set(theirs):
        result.checks.append(Check("(tensors)", False, f"the tensors differ from the base's ({len(set(ours) ^ set(theirs))} not in both)"))
    for name, t in ours.items():
        if name not in theirs:
            continue
        same = t.tensor_type == theirs[name].tensor_type and np.array_equal(np.asarray(t.data), np.asarray(theirs[name].data))
        if name in edited and same:
            result.checks.append(Check(name, False, "recorded as edited but equals the base"))
        elif name not in edited and not same:
            result.checks.append(Check(name, False, "not recorded as edited but differs from the base"))
    if meta.get("rosi.base.sha256") and meta["rosi.base.sha256"] != _sha(base):
        result.checks.append(Check("(base file)", False, "the base file is not the one the edit was made from (sha256 differs)"))
    if result.ok:
        result.checks.append(
            Check("(tensors)", True, f"{len(edited)} edited tensors changed, {len(ours) - len(edited)} others byte-identical to the base")
        )
    return result


def verify_gguf_lora(model: Path, base: Path | None = None) -> Verification:
    """Check a GGUF LoRA adapter rosi wrote: every edited tensor has both factors, every ``lora_b``
    is one unit direction (``s_hat``; per expert for fused experts) and, given the base ``.gguf``,
    the base is of the adapter's architecture and holds each edited tensor, of a size the factors fit."""
    import gguf

    reader = gguf.GGUFReader(model)
    meta = read_rosi_metadata(model)
    tensors = {t.name: t for t in reader.tensors}
    names = sorted({n.rsplit(".lora_", 1)[0] for n in tensors if ".lora_" in n})
    result = Verification(
        str(model),
        "gguf-lora",
        meta.get("rosi.edit.method", "?"),
        _strength(meta),
        len(names),
        base=None if base is None else str(base),
        metadata=meta,
    )
    halves = [n for n in names if f"{n}.lora_a" not in tensors or f"{n}.lora_b" not in tensors]
    result.checks += [Check(n, False, "has one LoRA factor of the two") for n in halves]
    pairs = {n: (tensors[f"{n}.lora_a"], tensors[f"{n}.lora_b"]) for n in names if n not in halves}
    if not pairs:
        result.checks.append(Check("(adapter)", False, "holds no LoRA factors"))
        return result
    s = min((np.asarray(b.data, dtype=np.float32).reshape(-1) for _, b in pairs.values()), key=len)
    for n, (_, b) in pairs.items():
        rows = np.asarray(b.data, dtype=np.float32).reshape(-1, len(s))
        if not (np.allclose(rows, s, rtol=1e-5, atol=1e-7) and abs(float(np.linalg.norm(s)) - 1) < 1e-4):
            result.checks.append(Check(n, False, "its lora_b is not the unit direction the other tensors' are"))
    if base is not None:
        base_reader = gguf.GGUFReader(base)
        arch, base_arch = (str(_field_value(r.fields["general.architecture"])) for r in (reader, base_reader))
        if arch != base_arch:
            result.checks.append(Check("(base)", False, f"{base} is a {base_arch!r} model, the adapter is for a {arch!r} one"))
        theirs = {t.name: t for t in base_reader.tensors}
        for n, (a, b) in pairs.items():
            experts = int(b.n_elements) // len(s)
            if n not in theirs:
                result.checks.append(Check(n, False, "not in the base"))
            elif int(a.n_elements) * int(b.n_elements) != int(theirs[n].n_elements) * experts:
                result.checks.append(Check(n, False, f"its factors do not fit the base's tensor {theirs[n].shape.tolist()}"))
    if result.ok:
        result.checks.append(
            Check("(adapter)", True, f"{len(pairs)} tensors' factors along one unit direction" + (", fitting the base" if base else ""))
        )
    return result


def _strength(meta: dict[str, str]) -> float:
    try:
        return float(meta.get("rosi.edit.strength", "nan"))
    except ValueError:
        return float("nan")


def _sha(path: Path) -> str:
    from rosi._fs import hash_files

    return hash_files([path])


def planned_record(
    source: Path, direction: Any, method: str, strength: float, targets: tuple[str, ...], layers: tuple[int, ...] | None
) -> EditRecord:
    """The record of an edit of a GGUF file's writers, made without loading its weights (see
    :func:`rosi.export.stream.plan_record`; the factors are computed by :func:`edit_gguf`)."""
    import transformers as T

    from rosi.export.stream import plan_record

    config = T.AutoConfig.from_pretrained(str(source.parent), gguf_file=source.name)
    return plan_record(config, direction, method, strength, targets, layers)
