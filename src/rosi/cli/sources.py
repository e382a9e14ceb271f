"""Where a command's model and inputs come from: the loading options the flags give, the model
loaded with them, a system prompt given as text or file, and the local inputs no output may touch
(a base's local checkpoint and an edit record's base are the export layer's: rosi.export.bases).
The library is imported inside the functions: ``rosi --help`` imports this module."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


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
