"""The generation cache: replies by (model role, prompt) in ``OUT/generations.jsonl``.

Appended and fsynced batch by batch, so a run that stops resumes where it stopped, and another
judge re-scores without generating again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from rosi.model.generation import Generator
from rosi.prompts import split_lines


def prompt_key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:20]


class GenerationCache:
    """Replies by (model role, prompt), kept in a JSONL file that grows batch by batch. A line cut
    short by an interruption is ignored (and its prompt generated again)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.replies: dict[tuple[str, str], str] = {}
        if path.exists():
            for line in split_lines(path.read_text(encoding="utf-8")):
                try:
                    row = json.loads(line)
                    self.replies[(row["model"], row["key"])] = row["reply"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # blank, or the half-written last line of an interrupted run

    def missing(self, model: str, prompts: Sequence[str]) -> list[str]:
        seen: set[str] = set()
        out = []
        for p in prompts:
            k = prompt_key(p)
            if (model, k) not in self.replies and k not in seen:
                seen.add(k)
                out.append(p)
        return out

    def fill(
        self, model: str, prompts: Sequence[str], generator: Generator, *, max_new_tokens: int, desc: str = "", progress: bool = True
    ) -> int:
        """Generate the replies not cached yet; returns how many were generated."""
        # longest first, so each batch holds prompts of similar length (little padding) and a
        # batch too large for memory fails at once, not at the end
        todo = sorted(self.missing(model, prompts), key=len, reverse=True)
        if not todo:
            return 0
        bar = tqdm(total=len(todo), desc=desc or f"{model}: generating", unit="prompt", disable=not progress)
        cut = not _ends_with_newline(self.path)
        with open(self.path, "a", encoding="utf-8") as f:
            if cut:  # end the half-written line of an interrupted run, so the next record starts clean
                f.write("\n")
            for start in range(0, len(todo), generator.batch_size):
                batch = todo[start : start + generator.batch_size]
                replies = generator(batch, max_new_tokens=max_new_tokens)
                for prompt, reply in zip(batch, replies, strict=True):
                    f.write(
                        json.dumps({"model": model, "key": prompt_key(prompt), "prompt": prompt, "reply": reply}, ensure_ascii=False) + "\n"
                    )
                    self.replies[(model, prompt_key(prompt))] = reply
                f.flush()
                os.fsync(f.fileno())
                bar.update(len(batch))
        bar.close()
        return len(todo)

    def get(self, model: str, prompts: Sequence[str]) -> list[str]:
        return [self.replies[(model, prompt_key(p))] for p in prompts]


def _ends_with_newline(path: Path) -> bool:
    """True for a missing or empty file too: nothing to repair."""
    if not path.exists() or path.stat().st_size == 0:
        return True
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
