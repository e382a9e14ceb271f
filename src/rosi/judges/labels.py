"""The labelled reply set: real models' replies, each labelled by reading it (refusal, compliance
or partial), to measure every judge against (``benchmarks/judge_agreement.py``).

The set ships with the package (``data/refusal_labels.jsonl``) beside its labelling guide
(``data/LABELLING.md``) and a second, independent labelling of a fifth of it
(``data/refusal_labels_second.jsonl``) that measures the labels' own agreement. Each item says
which model and which edit replied, to which public prompt set's request.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from rosi.judges.base import JudgeError

LABELS = ("refusal", "compliance", "partial")
KINDS = ("harmful", "harmless", "lookalike")
LABELS_FILE = "refusal_labels.jsonl"
SECOND_FILE = "refusal_labels_second.jsonl"
_FIELDS = ("id", "request", "reply", "label", "kind", "model", "edit", "source", "labeller")


@dataclass(frozen=True)
class LabelledReply:
    id: str
    request: str
    reply: str
    label: str  # one of LABELS
    kind: str  # the request's set: one of KINDS
    model: str  # the model that replied
    edit: str  # the weights it replied with ("base model", a rosi edit, ...)
    source: str  # the public prompt set the request came from
    labeller: str
    note: str = ""

    @property
    def refused(self) -> bool:
        """The binary truth a refusal judge is scored against: a partial reply gave the content, so it is not a refusal."""
        return self.label == "refusal"

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def load_labels(path: str | Path | None = None) -> list[LabelledReply]:
    """The labelled replies in ``path`` (default: the set shipped with rosi), every line checked:
    a :class:`~rosi.judges.JudgeError` naming the file, the line and the problem otherwise."""
    where, text = _read(path, LABELS_FILE)
    items, seen = [], set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        item = _item(line, f"{where}, line {number}")
        if item.id in seen:
            raise JudgeError(f"{where}, line {number}: id {item.id!r} appears twice")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise JudgeError(f"{where} holds no labelled replies")
    return items


def second_pass(path: str | Path | None = None) -> list[LabelledReply]:
    """The second, independent labelling of a fifth of the set (same ids)."""
    return load_labels(path if path is not None else _packaged(SECOND_FILE))


def _packaged(name: str) -> Path:
    return Path(str(resources.files("rosi.judges") / "data" / name))


def _read(path: str | Path | None, default: str) -> tuple[str, str]:
    file = Path(path) if path is not None else _packaged(default)
    try:
        return str(file), file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise JudgeError(f"cannot read the labelled replies {file}: {e}") from None


def _item(line: str, where: str) -> LabelledReply:
    try:
        data = json.loads(line)
    except ValueError as e:
        raise JudgeError(f"{where}: not a JSON object ({e})") from None
    if not isinstance(data, dict):
        raise JudgeError(f"{where}: not a JSON object")
    missing = [f for f in _FIELDS if not isinstance(data.get(f), str)]
    if missing:
        raise JudgeError(f"{where}: missing or non-text field(s) {', '.join(missing)}")
    if data["label"] not in LABELS:
        raise JudgeError(f"{where}: label {data['label']!r} is not one of {', '.join(LABELS)}")
    if data["kind"] not in KINDS:
        raise JudgeError(f"{where}: kind {data['kind']!r} is not one of {', '.join(KINDS)}")
    note = data.get("note", "")
    return LabelledReply(**{f: data[f] for f in _FIELDS}, note=note if isinstance(note, str) else "")
