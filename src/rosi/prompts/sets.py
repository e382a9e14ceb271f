"""Prompt sets: the harmful and harmless instructions a direction is extracted and judged on.

A spec names where prompts come from:

- ``builtin:harmful`` / ``builtin:harmless`` / ``builtin:lookalike`` / ``builtin:harmful_hard``,
  several joined by ``+`` (``builtin:harmful+harmful_styles:train``),
  optionally ``:train`` or ``:val`` (rosi's own sets, written for this project, with fixed
  splits; ``lookalike``: safe prompts that sound harmful, by kind; ``harmful_hard``: harmful
  requests in indirect, role-played, fictional, multi-step, academic, obfuscated and
  professional disguises, which a stronger model does not already refuse every time;
  ``harmless_tasks``: ordinary requests in the imperative form harmful ones take: lists,
  recipes, rewrites, short creative writing, persuasion, classification, dialogues, plans;
  ``harmless_styles``: ordinary requests in eight styles, by style: everyday, writing, code,
  maths, advice, rewrites of a given text, role-play, long multi-part requests;
  ``harmful_styles``: harmful requests over the ten harm categories as questions, multi-part
  requests, persuasive writing and fiction, category ``HARM/STYLE``);
- a file: ``.jsonl``, ``.json`` (a list of objects or strings), ``.csv`` or ``.txt`` (one prompt
  a line), optionally ``FILE:COLUMN`` to pick the column;
- a Hugging Face dataset: ``hf:ID[:SPLIT][:COLUMN]``, e.g. ``hf:mlabonne/harmful_behaviors``;
- an XSTest-layout CSV: ``xstest:FILE[:safe|:unsafe]`` (default ``safe``: the over-refusal
  contrast prompts).

Without a column, the first of :data:`TEXT_COLUMNS` present is used. Files are read as UTF-8,
UTF-16 or UTF-32, with or without a byte-order mark (:mod:`rosi.prompts.text`).
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from rosi._fs import regular_file
from rosi.errors import RosiError, first_line
from rosi.prompts.text import TextEncodingError, decode_text

DEFAULT_N_VAL = 32  # validation prompts per set for selection, the strength search and the measurement
TEXT_COLUMNS = ("instruction", "prompt", "goal", "behavior", "Behavior", "Goal", "question", "text", "query")
CATEGORY_COLUMNS = ("category", "Category", "type")
BUILTIN = ("harmful", "harmless", "lookalike", "harmful_hard", "harmless_tasks", "harmless_styles", "harmful_styles")


class PromptError(RosiError):
    """A prompt set cannot be read or is not usable as asked."""


@dataclass(frozen=True)
class PromptSet:
    instructions: tuple[str, ...]
    categories: tuple[str | None, ...] | None = None
    name: str = "prompts"

    def __post_init__(self) -> None:
        if not self.instructions:
            raise PromptError(f"prompt set {self.name!r} is empty")
        if self.categories is not None and len(self.categories) != len(self.instructions):
            raise PromptError(f"prompt set {self.name!r}: {len(self.categories)} categories for {len(self.instructions)} instructions")

    def __len__(self) -> int:
        return len(self.instructions)

    def __add__(self, other: PromptSet) -> PromptSet:
        """Both sets, this one first (categories kept where both have them)."""
        categories = None if self.categories is None or other.categories is None else self.categories + other.categories
        return PromptSet(self.instructions + other.instructions, categories, name=f"{self.name}+{other.name}")

    def spread(self, n: int) -> PromptSet:
        """``n`` prompts spread evenly over the categories: one of each category in turn (in the
        order they first appear, each category's prompts in order), so a kind appended at the end
        of a set is sampled as often as the first ones. Without categories, the first ``n``."""
        if self.categories is None:
            return self.take(n)
        self.take(n)  # the same checks on n
        by_kind: dict[str | None, list[int]] = {}
        for i, kind in enumerate(self.categories):
            by_kind.setdefault(kind, []).append(i)
        queues = list(by_kind.values())
        picked: list[int] = []
        depth = 0
        while len(picked) < n:
            picked += [q[depth] for q in queues if depth < len(q)][: n - len(picked)]
            depth += 1
        return self._subset(sorted(picked))

    def halves(self) -> tuple[PromptSet, PromptSet]:
        """Two disjoint halves, every category split evenly between them (its prompts in turn): a
        part that ranks candidates and a part that confirms the ones ranked best, never ranking."""
        if len(self) < 2:
            raise PromptError(f"prompt set {self.name!r} has {len(self)} prompt, too few to split into a ranking and a confirmation part")
        kinds = self.categories if self.categories is not None else (None,) * len(self)
        by_kind: dict[str | None, list[int]] = {}
        for i, kind in enumerate(kinds):
            by_kind.setdefault(kind, []).append(i)
        parts: tuple[list[int], list[int]] = ([], [])
        for indices in by_kind.values():  # each kind alternately, starting with the smaller part: both within one overall
            first = 0 if len(parts[0]) <= len(parts[1]) else 1
            for j, i in enumerate(indices):
                parts[(first + j) % 2].append(i)
        return self._subset(sorted(parts[0]), f"{self.name}:rank"), self._subset(sorted(parts[1]), f"{self.name}:confirm")

    def _subset(self, idx: list[int], name: str | None = None) -> PromptSet:
        """The prompts at ``idx`` (with their categories), named ``name`` (default: this set's name)."""
        return PromptSet(
            tuple(self.instructions[i] for i in idx),
            None if self.categories is None else tuple(self.categories[i] for i in idx),
            name=self.name if name is None else name,
        )

    def take(self, n: int | None, *, seed: int | None = None) -> PromptSet:
        """The first ``n`` prompts (a seeded random sample when ``seed`` is given)."""
        if n is None:
            return self
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PromptError(f"the number of prompts to take from {self.name!r} must be a whole number >= 1, got {n!r}")
        if n > len(self):
            raise PromptError(f"prompt set {self.name!r} has {len(self)} prompts, fewer than the {n} asked for")
        idx = list(range(len(self)))
        if seed is not None:
            random.Random(seed).shuffle(idx)
        return self._subset(idx[:n])


@dataclass(frozen=True)
class PromptSets:
    """The sets of a run: extraction (``harmful``, ``harmless``) and validation (``val_*``:
    selection, the strength search and the measurement); and safe look-alike prompts
    (``lookalike`` for fitting the ``gate``/``surgical`` read-outs, ``val_lookalike`` for
    ``rosi tune``'s measurement), which the other methods do not use."""

    harmful: PromptSet
    harmless: PromptSet
    val_harmful: PromptSet
    val_harmless: PromptSet
    lookalike: PromptSet | None = None
    val_lookalike: PromptSet | None = None

    def need_lookalikes(self, what: str) -> tuple[PromptSet, PromptSet]:
        """Both look-alike sets, or a clear error naming ``what`` needs them."""
        if self.lookalike is None or self.val_lookalike is None:
            raise PromptError(f"{what} needs look-alike prompts: pass --lookalike and --val-lookalike (or load the built-in ones)")
        return self.lookalike, self.val_lookalike

    def overlap(self) -> int:
        """How many validation prompts are also extraction prompts (0: held out)."""
        extraction = set(self.harmful.instructions) | set(self.harmless.instructions)
        extraction |= set(self.lookalike.instructions) if self.lookalike is not None else set()
        return sum(1 for p in self._validation() if p in extraction)

    def validation_sets(self) -> dict[str, PromptSet]:
        """The validation sets measured for every model state, by role: ``harmful``, ``harmless``,
        and ``lookalike`` where there are look-alike prompts."""
        sets = {"harmful": self.val_harmful, "harmless": self.val_harmless}
        return sets | ({"lookalike": self.val_lookalike} if self.val_lookalike is not None else {})

    def _validation(self) -> tuple[str, ...]:
        return tuple(p for s in self.validation_sets().values() for p in s.instructions)

    def validation_note(self) -> str:
        """What the run's validation figures are, in words (for its printed table)."""
        n = len(self._validation())
        shared = self.overlap()
        return "held out from extraction" if shared == 0 else f"NOT held out: {shared} of the {n} were also extraction prompts"

    @classmethod
    def load(
        cls,
        harmful: str = "builtin:harmful:train",
        harmless: str = "builtin:harmless:train",
        val_harmful: str = "builtin:harmful:val",
        val_harmless: str = "builtin:harmless:val",
        *,
        lookalike: str | None = "builtin:lookalike:train",
        val_lookalike: str | None = "builtin:lookalike:val",
        n_train: int | None = None,
        n_val: int | None = DEFAULT_N_VAL,
    ) -> PromptSets:
        """The sets from specs (see :func:`load_prompts`; by default rosi's own sets and splits),
        ``n_train`` of each extraction set spread over its kinds (a joined set's parts included) and
        the first ``n_val`` of each validation set (look-alike sets: ``None`` leaves them out; ``n``
        of them are spread over their kinds)."""
        return cls(
            _spread(load_prompts(harmful), n_train),
            _spread(load_prompts(harmless), n_train),
            load_prompts(val_harmful).take(n_val),
            load_prompts(val_harmless).take(n_val),
            _optional(lookalike, n_train),
            _optional(val_lookalike, n_val),
        )


def _spread(prompts: PromptSet, n: int | None) -> PromptSet:
    """``n`` of ``prompts`` spread over their kinds (all of them for None)."""
    return prompts if n is None else prompts.spread(n)


def _optional(spec: str | None, n: int | None) -> PromptSet | None:
    """``n`` prompts of ``spec`` spread over its kinds (:meth:`PromptSet.spread`; all of them
    when it has fewer: look-alike sets are extras of a run), or None without a spec."""
    if spec is None:
        return None
    prompts = load_prompts(spec)
    return prompts if n is None or n >= len(prompts) else prompts.spread(n)


def load_prompts(spec: str, *, column: str | None = None) -> PromptSet:
    """Read a prompt set from a spec (see the module docstring)."""
    if spec.startswith("builtin:"):
        return builtin(*spec.removeprefix("builtin:").split(":", 1))
    if spec.startswith("hf:"):
        return _from_hub(spec.removeprefix("hf:"), column)
    if spec.startswith("xstest:"):
        rest = spec.removeprefix("xstest:")
        head, _, label = rest.rpartition(":")
        return load_xstest(head, label) if head and label in ("safe", "unsafe") else load_xstest(rest)
    path, column = _split_column(spec, column)
    prompt_file(path, "prompt file")
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl", ".json", ".csv"):
        raise PromptError(f"{path}: unknown prompt file type {suffix!r}; use .jsonl, .json, .csv or .txt")
    text = _read_text(path, f"{path} cannot be parsed as {suffix}:")
    try:
        if suffix == ".txt":
            rows: list[Any] = [line.strip() for line in split_lines(text)]
            if column:
                raise PromptError(f"{path}: a .txt file has one prompt a line and no columns; drop the :{column}")
        elif suffix == ".jsonl":
            rows = [json.loads(line) for line in split_lines(text)]
        elif suffix == ".json":
            data = json.loads(text)
            rows = data if isinstance(data, list) else _only_list(data, path)
        else:
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except (json.JSONDecodeError, csv.Error, RecursionError) as e:
        raise PromptError(f"{path} cannot be parsed as {suffix} ({type(e).__name__}: {first_line(str(e))})") from None
    if suffix == ".csv" and not rows and text.strip():
        raise PromptError(f"prompt set {path.name!r} is empty: {path} has a header line and no rows")
    return _from_rows(rows, column, name=path.name, strict=True, where=str(path))


def _read_text(path: Path, context: str) -> str:
    """A prompt file's text in UTF-8, UTF-16 or UTF-32, with or without a byte-order mark
    (:func:`~rosi.prompts.text.decode_text`); ``context`` starts an error's line."""
    try:
        return decode_text(path.read_bytes(), "it")
    except TextEncodingError as e:
        raise PromptError(f"{context} {e}") from None
    except OSError as e:
        raise PromptError(f"prompt file {path} cannot be read ({e.strerror})") from None


def prompt_file(path: Path, what: str) -> Path:
    """``path`` if it is a regular file (a missing path, a folder, a pipe or a device is a clear error)."""
    try:
        return regular_file(path, what)
    except RosiError as e:
        raise PromptError(str(e)) from None


XSTEST_COLUMNS = ("id", "prompt", "type", "label", "focus", "note")


def load_xstest(path: str | Path, label: str = "safe") -> PromptSet:
    """An XSTest-layout CSV (columns ``id,prompt,type,label,focus,note``): the prompts whose
    ``label`` is ``safe`` (the over-refusal contrast set; ``unsafe`` for the others), with
    ``type`` as the category."""
    if label not in ("safe", "unsafe"):
        raise PromptError(f"XSTest label must be safe or unsafe, got {label!r}")
    path = prompt_file(Path(path), "XSTest file")
    text = _read_text(path, f"{path} cannot be parsed as CSV:")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [c for c in ("prompt", "type", "label") if c not in (reader.fieldnames or [])]
        if missing:
            raise PromptError(f"{path} is not in the XSTest layout ({','.join(XSTEST_COLUMNS)}): missing column(s) {', '.join(missing)}")
        rows = [r for r in reader if (r.get("label") or "").strip().lower() == label]
    except csv.Error as e:
        raise PromptError(f"{path} cannot be parsed as CSV ({type(e).__name__}: {first_line(str(e))})") from None
    if not rows:
        raise PromptError(f"{path} has no rows labelled {label!r}")
    return _from_rows(rows, "prompt", name=f"xstest:{path.name}:{label}", strict=True, where=str(path))


def split_lines(text: str) -> list[str]:
    """Non-blank lines split at newlines only: ``str.splitlines`` also splits at U+2028 and other
    Unicode separators, which may sit inside a JSON string or a prompt."""
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


def builtin(kind: str, split: str | None = None) -> PromptSet:
    """rosi's own prompts: one of :data:`BUILTIN` (or several joined by ``+``, in that order, e.g.
    ``harmful+harmful_styles``), ``train``, ``val`` or both (None)."""
    if "+" in kind:
        sets = [builtin(part, split) for part in kind.split("+")]
        joined = sets[0]
        for more in sets[1:]:
            joined = joined + more
        return PromptSet(joined.instructions, joined.categories, name=f"builtin:{kind}" + (f":{split}" if split else ""))
    if kind not in BUILTIN:
        raise PromptError(f"no built-in prompt set {kind!r}; choose {' or '.join(BUILTIN)}")
    if split not in (None, "train", "val"):
        raise PromptError(f"built-in split must be train or val, got {split!r}")
    text = resources.files("rosi.prompts").joinpath("data").joinpath(f"{kind}.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in split_lines(text)]
    rows = [r for r in rows if split is None or r["split"] == split]
    return _from_rows(rows, "instruction", name=f"builtin:{kind}" + (f":{split}" if split else ""))


def _split_column(spec: str, column: str | None) -> tuple[Path, str | None]:
    path = Path(spec)
    if not path.exists() and ":" in spec:
        head, tail = spec.rsplit(":", 1)
        if Path(head).exists():
            return Path(head), column or tail
    return path, column


def _only_list(data: object, path: Path) -> list[Any]:
    lists = [v for v in data.values() if isinstance(v, list)] if isinstance(data, dict) else []
    if len(lists) != 1:
        raise PromptError(f"{path}: expected a JSON list of prompts (or an object holding one list)")
    return lists[0]


def _from_rows(rows: list[Any], column: str | None, *, name: str, strict: bool = False, where: str | None = None) -> PromptSet:
    """The prompts of ``rows`` (all strings, or all objects with a text column). ``strict`` (a
    file the user gave, named ``where``): a blank prompt, a row without the column, or a value
    that is not text is an error naming the row; otherwise (a hub dataset) blank rows are skipped."""
    where = where or name
    if not rows:
        raise PromptError(f"prompt set {name!r} is empty" + (f": {where} holds no prompts" if strict else ""))
    if all(isinstance(r, str) for r in rows):
        if column:
            raise PromptError(f"{where}: plain strings have no column {column!r}")
        texts = [r.strip() for r in rows]
        blank = next((i for i, t in enumerate(texts) if not t), None)
        if blank is not None:
            raise PromptError(f"{where}: prompt {blank + 1} is blank; remove it or give it text")
        return PromptSet(tuple(texts), name=name)
    if not all(isinstance(r, dict) for r in rows):
        bad = next(i for i, r in enumerate(rows) if not isinstance(r, dict))
        raise PromptError(f"{where}: each row must be an object (or every row a string); row {bad + 1} is {type(rows[bad]).__name__}")
    keys = list(rows[0])
    chosen = column or next((c for c in TEXT_COLUMNS if c in keys), None)
    if chosen is None or chosen not in keys:
        raise PromptError(f"{where}: no column {column or 'with prompts'!r} (columns: {keys}); name one with FILE:COLUMN")
    if strict:
        for i, r in enumerate(rows):
            value = r.get(chosen)
            if chosen not in r or value is None:
                raise PromptError(f"{where}: row {i + 1} has no {chosen!r} (its fields: {list(r)[:6]}); every row needs a prompt there")
            if not isinstance(value, str):
                raise PromptError(f"{where}: row {i + 1}'s {chosen!r} is a {type(value).__name__}, not text; every prompt must be a string")
            if not value.strip():
                raise PromptError(f"{where}: row {i + 1} has a blank {chosen!r}; remove the row or give it a prompt")
    texts = [str(r.get(chosen) or "").strip() for r in rows]
    keep = [i for i, t in enumerate(texts) if t]
    if not keep:
        raise PromptError(f"{where}: column {chosen!r} is empty in every row")
    category_column = next((c for c in CATEGORY_COLUMNS if c in keys), None)
    categories = None
    if category_column:
        values = [rows[i].get(category_column) for i in keep]
        categories = tuple(None if v in (None, "") else str(v) for v in values)
    return PromptSet(tuple(texts[i] for i in keep), categories, name=name)


def _from_hub(rest: str, column: str | None) -> PromptSet:
    parts = rest.split(":")
    dataset_id = parts[0]
    split = parts[1] if len(parts) > 1 and parts[1] else "train"
    column = column or (parts[2] if len(parts) > 2 else None)
    try:
        import datasets
    except ImportError:
        raise PromptError("hf: prompt sets need the 'datasets' package: pip install datasets") from None
    try:
        data = datasets.load_dataset(dataset_id, split=split)
    except Exception as e:  # noqa: BLE001 - the hub client raises many types; all mean "cannot get it"
        raise PromptError(f"cannot load dataset {dataset_id!r} split {split!r} from the hub ({type(e).__name__}: {e})") from None
    return _from_rows(list(data), column, name=f"hf:{dataset_id}:{split}")
