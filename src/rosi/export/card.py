"""The model card of every checkpoint rosi writes: ``README.md`` in the Hugging Face layout (YAML
front matter with ``base_model``, ``tags``, ``license`` where the base says it, ``library_name``),
saying what was edited, along which direction and how strongly, and what rosi measured."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rosi.edit.methods import get_method
from rosi.edit.record import EditRecord
from rosi.model.loading import LoadedModel, local_folder

TAGS = ("rosi", "safety", "refusal", "rank-one-edit")


def base_license(folder: Path | None) -> str | None:
    """The license the base's own model card states in its front matter (None: not stated)."""
    card = folder / "README.md" if folder is not None else None
    if card is None or not card.is_file():
        return None
    match = re.search(r"^---\s*\n(.*?)\n---", card.read_text(encoding="utf-8", errors="replace"), re.S)
    found = re.search(r"^license:\s*(\S+)\s*$", match.group(1), re.M) if match else None
    return found.group(1).strip("'\"") if found else None


def card_text(base: str, base_folder: Path | None, record: EditRecord, rates: list[dict[str, Any]] | None = None) -> str:
    method = get_method(record.method)
    d = record.direction
    front = ["---", f"base_model: {base}", "tags:", *(f"- {t}" for t in TAGS), "library_name: transformers"]
    license_ = base_license(base_folder)
    if license_:
        front.append(f"license: {license_}")
    front.append("---")
    kinds: dict[str, int] = {}
    for m in record.matrices:
        kinds[m.kind.value] = kinds.get(m.kind.value, 0) + 1
    body = [
        "",
        f"# {base}, edited by rosi",
        "",
        f"This is `{base}` with a rank-one safety edit (Rank-One Safety Injection, made with rosi): every edited "
        "matrix `W` became `W + s_hat r^T`, with `s_hat` the model's own refusal direction, so that it refuses harmful "
        "requests more reliably. Nothing else changed, and the edit can be undone (`rosi revert`).",
        "",
        "| | |",
        "|---|---|",
        f"| method | `{record.method}`: `{method.formula}` ({method.use}) |",
        f"| strength | {method.symbol} = {record.strength:g} |",
        f"| matrices edited | {len(record.matrices)} ({', '.join(f'{n} {k}' for k, n in kinds.items())}) |",
        f"| direction | layer {d.layer}, position {d.position}, from `{d.model}` |",
    ]
    if d.metadata.get("system_prompt"):
        body.append("| extraction system prompt | yes (used to find the direction only) |")
    if rates:
        body += ["", "Refusal rosi measured on its validation prompts (greedy replies, refusal-marker judge):", ""]
        looks = all("lookalike" in r for r in rates)
        body += [
            "| model | harmful refused | harmless refused |" + (" look-alikes refused |" if looks else ""),
            "|---|---|---|" + ("---|" if looks else ""),
        ]
        body += [
            f"| {r['label']} | {r['harmful']:.0%} (n={r['n_harmful']}) | {r['harmless']:.0%} (n={r['n_harmless']}) |"
            + (f" {r['lookalike']:.0%} (n={r['n_lookalike']}) |" if looks else "")
            for r in rates
        ]
        if looks:
            body += ["", "Look-alikes are safe requests that only sound harmful: their refusal is over-refusal."]
    body += [
        "",
        "The edit record (`rosi_edit.safetensors`) holds the direction and every right factor: `rosi verify` checks the "
        "weights against it and the base, `rosi revert` writes the base back.",
        "",
    ]
    return "\n".join(front + body)


def write_card(path: Path, loaded: LoadedModel, record: EditRecord, rates: list[dict[str, Any]] | None = None) -> None:
    path.write_text(card_text(loaded.source.spec, local_folder(loaded.source), record, rates), encoding="utf-8")
