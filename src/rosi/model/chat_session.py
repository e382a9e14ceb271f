"""``rosi chat``: a conversation in the terminal, replies streamed as they are generated; with two
models (a base and its edit) each message is answered by both, one after the other."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import torch

from rosi.errors import RosiError
from rosi.model.chat import ChatFormat, ChatTemplateError
from rosi.model.hooks import device_of
from rosi.model.loading import LoadedModel

HELP = "type a message; /reset starts a new conversation, /exit (or end of input) quits"


def chat(
    models: Sequence[tuple[str, LoadedModel]],
    *,
    system_prompt: str | None = None,
    max_new_tokens: int = 256,
    read: Callable[[], str | None] | None = None,
    out: TextIO | None = None,
) -> int:
    """Read messages (``read``: stdin lines by default) and answer each with every model."""
    for _, loaded in models:
        check_chat_model(loaded)
    out = out or sys.stdout
    read = read or _stdin_line
    histories: dict[str, list[dict[str, str]]] = {name: [] for name, _ in models}
    print(f"rosi chat: {', '.join(f'{name} = {m.source.spec}' for name, m in models)}; {HELP}", file=out, flush=True)
    while True:
        message = read()
        if message is None or message.strip() == "/exit":
            return 0
        if message.strip() == "/reset":
            histories = {name: [] for name, _ in models}
            print("rosi chat: new conversation", file=out, flush=True)
            continue
        if not message.strip():
            continue
        for name, loaded in models:
            histories[name].append({"role": "user", "content": message})
            if len(models) > 1:
                print(f"[{name}] ", end="", file=out, flush=True)
            reply = _stream_reply(loaded, histories[name], system_prompt, max_new_tokens, out)
            histories[name].append({"role": "assistant", "content": reply})


def check_chat_model(loaded: LoadedModel) -> None:
    """A model rosi can chat with: a tokenizer, and a chat template to format the conversation."""
    spec = loaded.source.spec
    if loaded.tokenizer is None:
        raise RosiError(f"{spec} has no tokenizer (no tokenizer files beside its weights); chat with a model folder that has them")
    try:
        ChatFormat(loaded.tokenizer)
    except ChatTemplateError as e:
        raise ChatTemplateError(f"{spec}: {e}") from None


def _stdin_line() -> str | None:
    try:
        line = input("> ")
    except EOFError:
        return None
    except UnicodeDecodeError as e:
        raise RosiError(f"standard input is not UTF-8 text (byte {e.object[e.start : e.start + 1]!r}); type or pipe UTF-8 text") from None
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes kept as surrogates (the C locale's stdin)
        raise RosiError("standard input is not UTF-8 text; type or pipe UTF-8 text (and set a UTF-8 locale)") from None
    return line


def _stream_reply(loaded: LoadedModel, history: list[dict[str, str]], system_prompt: str | None, max_new_tokens: int, out: TextIO) -> str:
    from transformers import TextIteratorStreamer

    tok = loaded.tokenizer
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + history
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tok(text, return_tensors="pt", add_special_tokens=False).to(device_of(loaded.model))
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    kwargs: dict[str, Any] = {**inputs, "max_new_tokens": max_new_tokens, "do_sample": False, "streamer": streamer}
    kwargs["pad_token_id"] = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    worker = threading.Thread(target=_generate, args=(loaded.model, kwargs), daemon=True)
    worker.start()
    parts = []
    for piece in streamer:
        parts.append(piece)
        print(piece, end="", file=out, flush=True)
    worker.join()
    print(file=out, flush=True)
    return "".join(parts)


@torch.no_grad()
def _generate(model: Any, kwargs: dict[str, Any]) -> None:
    model.generate(**kwargs)
