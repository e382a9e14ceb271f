"""Save an edited model as an ordinary Hugging Face checkpoint, atomically.

The output folder holds what ``save_pretrained`` writes (safetensors weights, config,
generation config), the tokenizer with its chat template, ``rosi.json`` (what was done to
which base model) and ``rosi_edit.safetensors`` (the edit record, enough to revert it). It is
written to a temporary sibling folder and renamed at the end, so it exists complete or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rosi import __version__
from rosi._fs import atomic_directory, check_output
from rosi.edit.record import EditRecord
from rosi.model.architecture import model_type_of
from rosi.model.loading import LoadedModel, ModelSource
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
) -> Path:
    """Write ``model`` (edited or not) to ``out``; refuse an existing ``out`` unless ``overwrite``.

    ``extra`` is merged into ``rosi.json``; ``write_extra(folder)`` may add files to the output
    before it is renamed into place."""
    if isinstance(model, LoadedModel):
        tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        source = source or model.source
        model = model.model
    out = Path(out)
    protect = (Path(source.path),) if source and source.kind in ("folder", "gguf") else ()
    check_output(out, overwrite, protect=protect)
    manifest = build_manifest(model, record=record, source=source, extra=extra)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if record is not None:
            record.save(tmp / RECORD_FILE)
        if write_extra is not None:
            write_extra(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def build_manifest(
    model: CausalLM, *, record: EditRecord | None, source: ModelSource | None, extra: dict[str, Any] | None
) -> dict[str, Any]:
    base = {
        "spec": source.spec if source else None,
        "source": source.kind if source else "memory",
        "revision": source.revision if source else None,
        "model_type": model_type_of(model),
        "name_or_path": getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None),
        "weights_sha256": source.weights_sha256 if source else None,
    }
    manifest: dict[str, Any] = {
        "tool": "rosi",
        "rosi_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": base,
    }
    if record is not None:
        manifest["edit"] = {**record.summary(), "record_file": RECORD_FILE}
    if extra:
        manifest.update(extra)
    return manifest
