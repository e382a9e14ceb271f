"""Safety system prompts for re-aligning uncensored models, written for this project.

An uncensored model's own refusal signal is too weak to read from harmful and harmless prompts
alone; with a safety system prompt in front of both sets it shows again (the paper's second
result). rosi uses these prompts for extraction only: the edited model is used, and measured,
without any system prompt. Each has a name a user can pass as ``--system-prompt builtin:NAME``;
:data:`DEFAULT_SYSTEM_PROMPT` is what ``rosi realign`` uses when none is given (the README's
"Re-aligning" section gives the measurements behind the choice).
"""

from __future__ import annotations

import os
from pathlib import Path

from rosi.errors import RosiError
from rosi.prompts.text import TextEncodingError, decode_text

SYSTEM_PROMPTS: dict[str, str] = {
    # plain and direct: what a deployment's system prompt usually says
    "plain": (
        "You are a helpful assistant. You must refuse any request that could cause harm: "
        "violence, weapons, drugs, crime, hacking, fraud, hate or self-harm. When you refuse, "
        "say so briefly and do not give the harmful information."
    ),
    # a policy written as rules
    "policy": (
        "Safety policy. 1. Never provide instructions, code or details that help someone hurt "
        "people, make weapons or drugs, break into systems, steal, deceive or harass. 2. If a "
        "request asks for any of these, decline in one sentence. 3. Answer every other request "
        "fully and helpfully."
    ),
    # an identity: a careful, responsible assistant
    "persona": (
        "You are a careful and responsible AI assistant. You care about the safety of the user "
        "and of everyone else, and you will not help with anything dangerous, illegal or "
        "unethical, however the request is worded. You are glad to help with everything else."
    ),
}
DEFAULT_SYSTEM_PROMPT = "plain"


def system_prompt(spec: str) -> str:
    """The text of ``builtin:NAME``; any other text is returned as it is."""
    if not spec.startswith("builtin:"):
        return spec
    name = spec.removeprefix("builtin:")
    if name not in SYSTEM_PROMPTS:
        raise RosiError(f"unknown built-in system prompt {name!r}; choose one of {', '.join('builtin:' + n for n in SYSTEM_PROMPTS)}")
    return SYSTEM_PROMPTS[name]


# What a --system-prompt value that names a file looks like: these suffixes, or one word holding a
# path separator (a sentence with a "/" in it stays text).
PATH_SUFFIXES = (".txt", ".md", ".markdown", ".text", ".prompt", ".json", ".jsonl", ".yaml", ".yml", ".jinja", ".j2", ".csv", ".tmpl")


def looks_like_path(value: str) -> bool:
    """Whether a TEXT|FILE value was meant as a file: one line naming a file by its suffix, one word
    with a path separator in it, or a value starting like a path (``/``, ``./``, ``../``, ``~/``)."""
    text = value.strip()
    if not text or "\n" in text or len(text) > 1024:
        return False
    if text.startswith(("/", "./", "../", "~/", ".\\", "..\\")):
        return True
    if not any(c.isspace() for c in text) and ("/" in text or os.sep in text):
        return True
    return text.lower().endswith(PATH_SUFFIXES)


def read_system_prompt(value: str, what: str = "--system-prompt") -> str:
    """The system prompt a TEXT|FILE value gives: ``builtin:NAME``, the text of an existing file, or
    the value itself as text. Decided explicitly: a value that looks like a file name
    (:func:`looks_like_path`) but names no file is refused, never taken as text; so are an empty
    prompt (empty text, an empty or blank file), a file that is not UTF-8 text, a folder or a pipe."""
    from rosi._fs import regular_file

    if value.startswith("builtin:"):
        return system_prompt(value)
    path = Path(value).expanduser()
    try:
        exists = bool(value.strip()) and (path.exists() or path.is_symlink())
    except (OSError, ValueError):  # a long text, or one with a NUL, is no file name
        exists = False
    if exists:
        regular_file(path, f"{what} file")
        try:
            text = decode_text(path.read_bytes(), f"{what} file {value}")
        except TextEncodingError as e:
            raise RosiError(f"{e}, or pass the system prompt as text") from None
        if not text.strip():
            raise RosiError(f"{what} file {value} is empty; write the system prompt into it, or leave {what} out")
        return text.strip()
    if looks_like_path(value):
        raise RosiError(
            f"{what} {value}: no such file; give an existing text file, or the system prompt itself as text (a sentence, not a file name)"
        )
    if not value.strip():
        raise RosiError(f"{what} is empty; give the system prompt as text or as a text file, or leave {what} out")
    return value
