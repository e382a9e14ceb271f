"""Save an edited model as an ordinary Hugging Face checkpoint, atomically.

The output folder holds what ``save_pretrained`` writes (safetensors weights, config,
generation config), the tokenizer with its chat template, ``rosi.json`` (what was done to
which base model) and ``rosi_edit.safetensors`` (the edit record, enough to revert it). It is
written to a temporary sibling folder and renamed at the end, so it exists complete or not at all.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from rosi._fs import atomic_directory, check_output, is_rosi_folder, regular_file
from rosi._version import __version__
from rosi.edit.apply import edits_applied
from rosi.edit.record import EditRecord
from rosi.errors import EditError, ManifestError, RosiError, first_line
from rosi.export.stream import stream_edit, streamable
from rosi.model.architecture import model_type_of
from rosi.model.finite import all_finite
from rosi.model.hooks import offloaded
from rosi.model.loading import LoadedModel, ModelSource, checkpoint_dtype, local_folder
from rosi.model.writers import CausalLM

MANIFEST = "rosi.json"
RECORD_FILE = "rosi_edit.safetensors"


def save_checkpoint(
    model: LoadedModel | CausalLM,
    out: str | Path,
    *,
    record: EditRecord | None = None,
    tokenizer: Any = None,
    source: ModelSource | None = None,
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
    write_extra: Callable[[Path], None] | None = None,
    weights_from: Path | None = None,
) -> Path:
    """Write ``model`` (edited or not) to ``out``; refuse an existing ``out`` unless ``overwrite``.

    ``extra`` is merged into ``rosi.json``; ``write_extra(folder)`` may add files to the output
    before it is renamed into place. With ``weights_from`` (the local safetensors folder the model
    was loaded from) the weights are that checkpoint's, in its own precision, with ``record``
    applied tensor by tensor (:mod:`rosi.export.stream`), instead of the model's in memory (which
    may have been loaded in a lower precision for speed)."""
    if isinstance(model, LoadedModel):
        tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        source = source or model.source
        model = model.model
    out = Path(out)
    protect = input_paths(source)
    check_output(out, overwrite, protect=protect, owned=is_rosi_output, what="checkpoint")
    check_finite(model)
    manifest = build_manifest(model, record=record, source=source, extra=extra)
    if weights_from is None and any(offloaded(p) for p in model.parameters()):
        weights_from = _offloaded_source(source, record)
    with atomic_directory(out, overwrite=overwrite, owned=is_rosi_output, protect=protect) as tmp:
        if weights_from is not None and record is not None:
            record = stream_edit(weights_from, tmp, record)
            for name in ("config.json", "generation_config.json"):
                if (weights_from / name).is_file():
                    shutil.copyfile(weights_from / name, tmp / name)
        else:
            model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if record is not None:
            record.save(tmp / RECORD_FILE)
        if write_extra is not None:
            write_extra(tmp)
        write_manifest(tmp, manifest)
    return out


def _offloaded_source(source: ModelSource | None, record: EditRecord | None) -> Path:
    """A model spread over devices has no weights in memory to save: they come from its local
    checkpoint, edited tensor by tensor."""
    folder = local_folder(source) if source is not None else None
    if record is None or folder is None or not streamable(folder, record):
        raise EditError(
            "the model's weights are offloaded (--device-map), so they are written from its local safetensors checkpoint, "
            "and this one cannot be edited on disk; load it without --device-map"
        )
    return folder


def is_rosi_output(path: Path) -> bool:
    """A checkpoint folder rosi wrote (its ``rosi.json`` says so): the only kind ``--overwrite`` replaces."""
    return path.is_dir() and is_rosi_folder(path, MANIFEST)


# rosi.json's fields rosi reads back, and the JSON types each may have (None: null)
_TEXT = (str, type(None))
_BASE_FIELDS = {"spec": _TEXT, "source": _TEXT, "revision": _TEXT, "model_type": _TEXT, "name_or_path": _TEXT, "weights_sha256": _TEXT}
_EDIT_FIELDS = {"method": (str,), "strength": (int, float), "record_file": (str,), "matrices_edited": (int,), "targets": (list,)}


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The ``rosi.json`` of a folder rosi wrote, its fields checked (None: the folder has none).
    A file that is not JSON, not rosi's, or whose fields have the wrong types is a
    :class:`~rosi.errors.ManifestError` naming it."""
    path = Path(folder) / MANIFEST
    if not (path.exists() or path.is_symlink()):
        return None
    fix = "it is not a manifest rosi wrote: write the folder again with rosi (or remove rosi.json and name the base with --base)"
    try:
        regular_file(path, "manifest")
        data = json.loads(path.read_text(encoding="utf-8"))
    except RosiError as e:
        raise ManifestError(str(e)) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ManifestError(f"{path} is not valid JSON ({type(e).__name__}: {first_line(str(e))}); {fix}") from None
    except OSError as e:
        raise ManifestError(f"{path} cannot be read ({e.strerror}); {fix}") from None
    problem = _manifest_problem(data)
    if problem:
        raise ManifestError(f"{path}: {problem}; {fix}")
    return dict(data)


def _manifest_problem(data: object) -> str | None:
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    if data.get("tool") != "rosi":
        return f"its tool is {data.get('tool', 'missing')!r}, not 'rosi'"
    for key in ("rosi_version", "created", "format", "patch", "reverted_from"):
        if key in data and not isinstance(data[key], str):
            return f"{key} is {_json_type(data[key])}, not text"
    for key, fields in (("base_model", _BASE_FIELDS), ("edit", _EDIT_FIELDS), ("edit_removed", {})):
        if key not in data:
            continue
        value = data[key]
        if not isinstance(value, dict):
            return f"{key} is {_json_type(value)}, not an object"
        for name, types in fields.items():
            if name in value and (not isinstance(value[name], types) or isinstance(value[name], bool)):
                return f"{key}.{name} is {_json_type(value[name])}, not {'text' if str in types else _json_type(types[0]())}"
    return None


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "text", bool: "true/false", int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def manifest_base(folder: Path) -> str | None:
    """The base model spec a rosi output's ``rosi.json`` names (None: no manifest, or none named)."""
    manifest = read_manifest(folder)
    base = (manifest or {}).get("base_model") or {}
    spec: str | None = base.get("spec")
    return spec


def input_paths(source: ModelSource | None) -> tuple[Path, ...]:
    """The local paths a model was loaded from (the user's file or folder, and rosi's GGUF
    conversion of it): no output may be written over, around or inside them."""
    if source is None or source.kind not in ("folder", "gguf"):
        return ()
    paths = {Path(source.path)}
    if source.kind == "gguf" and Path(source.spec).expanduser().exists():
        paths.add(Path(source.spec).expanduser())
    return tuple(paths)


@torch.no_grad()
def check_finite(model: CausalLM) -> None:
    """Refuse to save a model with a NaN or infinite weight (an edit too strong for its dtype)."""
    for name, tensor in model.state_dict().items():
        if tensor.device.type == "meta":
            continue  # offloaded: written from the checkpoint on disk, checked there
        if not all_finite(tensor):
            raise EditError(f"{name} holds NaN or infinite values; nothing was saved (a smaller strength keeps the weights finite)")


def build_manifest(
    model: CausalLM, *, record: EditRecord | None, source: ModelSource | None, extra: dict[str, Any] | None
) -> dict[str, Any]:
    """The ``rosi.json`` of ``model`` (loaded from ``source``) with ``record`` applied."""
    base = {
        "spec": source.spec if source else None,
        "source": source.kind if source else "memory",
        "revision": source.revision if source else None,
        "model_type": model_type_of(model),
        "name_or_path": getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None),
        "weights_sha256": source.weights_sha256 if source else None,
    }
    return new_manifest(base, record, extra)


def new_manifest(base: dict[str, Any] | None, record: EditRecord | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``rosi.json``: who wrote it and when, the base model (``base``: what is known of it),
    the edit (``record``'s summary and where the record is) and ``extra`` entries. Every
    ``rosi.json`` rosi writes is one of these, written by :func:`write_manifest`."""
    out: dict[str, Any] = {"tool": "rosi", "rosi_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if base is not None:
        out["base_model"] = base
    if record is not None:
        out["edit"] = {**record.summary(), "record_file": RECORD_FILE}
    out.update(extra or {})
    return out


def write_manifest(folder: Path, data: dict[str, Any]) -> Path:
    path = Path(folder) / MANIFEST
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def checkpoint_weights(loaded: LoadedModel, record: EditRecord) -> Path | None:
    """The local checkpoint to write the edited weights from, when the model in memory was loaded
    in another precision than the checkpoint's (e.g. bfloat16 for speed from a float32 checkpoint):
    the saved weights then keep the checkpoint's own. None: save the model in memory."""
    folder = local_folder(loaded.source)
    if folder is None:
        return None
    if (
        edits_applied(loaded.model) > 1 or record.rank > 1
    ):  # the record holds only the last of them (or a second term): save what is in memory
        return None
    if any(offloaded(p) for p in loaded.model.parameters()):
        return folder if streamable(folder, record) else None  # save_checkpoint says why it cannot save
    stored = checkpoint_dtype(folder)
    in_memory = next(loaded.model.parameters()).dtype
    if stored is None or stored == in_memory or not streamable(folder, record):
        return None
    return folder
