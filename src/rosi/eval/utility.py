"""Utility (capability) through lm-evaluation-harness: rosi writes no harness of its own.

Two ways to name tasks:

- **by lm-eval name** (``mmlu``, ``hellaswag``, ``arc_easy``, ``arc_challenge``, ``boolq``,
  ``truthfulqa_mc2``, ...): the harness's own task definitions, which download their datasets from
  the Hugging Face hub (users with a network);
- **offline, local**: ``local:mmlu``, ``local:arc_easy``, ``local:arc_challenge``,
  ``local:hellaswag`` read the public files of a local data folder (the layout documented in
  docs/eval.md: ``mmlu/<subject>/test.json``, ``arc/arc-easy/test.json``, ``arc/arc-challenge/test.json``,
  ``hellaswag/hellaswag_val_sample1000.jsonl``). rosi samples the questions (seeded; MMLU across all
  subjects), writes them as JSONL, and hands lm-eval a task configuration over that file (zero-shot,
  log-likelihood multiple choice, the prompt layouts of lm-eval's own MMLU / ARC / HellaSwag tasks).
  The configurations are saved beside the results, so a run can be repeated with ``lm_eval`` alone.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from rosi.errors import RosiError
from rosi.eval.results import UtilityScore
from rosi.metrics import Rate
from rosi.prompts import split_lines

PAPER_TASKS = ("mmlu", "hellaswag", "arc_easy", "arc_challenge", "boolq", "truthfulqa_mc2")
LOCAL_FILES = {
    "mmlu": "mmlu/*/test.json",
    "arc_easy": "arc/arc-easy/test.json",
    "arc_challenge": "arc/arc-challenge/test.json",
    "hellaswag": "hellaswag/hellaswag_val_sample1000.jsonl",
}


class UtilityError(RosiError):
    """A utility benchmark could not be prepared or run."""


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in split_lines(path.read_text(encoding="utf-8"))]
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise UtilityError(f"{path} is not valid JSONL ({e})") from None


def local_docs(task: str, data_dir: str | Path) -> list[dict[str, Any]]:
    """Every question of a local task, normalized to ``{question, choices, answer, subject}``
    (``answer``: the index of the right choice)."""
    if task not in LOCAL_FILES:
        raise UtilityError(f"no local task {task!r}; local tasks: {', '.join(LOCAL_FILES)}")
    data_dir = Path(data_dir)
    pattern = LOCAL_FILES[task]
    files = sorted(data_dir.glob(pattern))
    if not files:
        raise UtilityError(f"local:{task} needs {data_dir / pattern}, which does not exist; pass --data with the public-data folder")
    docs = []
    for path in files:
        for row in _read_jsonl(path):
            try:
                if task == "hellaswag":
                    docs.append({"question": row["question"], "choices": list(row["choices"]), "answer": int(row["answer"]), "subject": ""})
                else:  # the nutcracker layout of MMLU and ARC
                    subject = path.parent.name.replace("_", " ") if task == "mmlu" else ""
                    docs.append(
                        {
                            "question": row["centerpiece"],
                            "choices": list(row["options"]),
                            "answer": int(row["correct_options_idx"][0]),
                            "subject": subject,
                        }
                    )
            except (KeyError, IndexError, TypeError, ValueError):
                raise UtilityError(f"{path}: a row lacks the fields of the {task} layout: {str(row)[:200]}") from None
    return docs


def sample_docs(docs: list[dict[str, Any]], n: int | None, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` questions drawn without replacement (seeded), or all of them."""
    if n is None or n >= len(docs):
        return list(docs)
    return random.Random(seed).sample(docs, n)


def local_task_config(task: str, data_file: Path) -> dict[str, Any]:
    """An lm-eval task configuration over a normalized JSONL file (zero-shot multiple choice)."""
    if task == "mmlu":
        text = (
            "The following are multiple choice questions (with answers) about {{subject}}.\n\n{{question.strip()}}\n"
            "{% for c in choices %}{{'ABCDEFGH'[loop.index0]}}. {{c}}\n{% endfor %}Answer:"
        )
        choice: Any = "{{'ABCDEFGH'[:choices|length]|list}}"
        metrics = ["acc"]
    elif task in ("arc_easy", "arc_challenge"):
        text, choice, metrics = "Question: {{question}}\nAnswer:", "{{choices}}", ["acc", "acc_norm"]
    else:  # hellaswag: the context already carries its activity label
        text, choice, metrics = "{{question}}", "{{choices}}", ["acc", "acc_norm"]
    return {
        "task": f"rosi_{task}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": text,
        "doc_to_choice": choice,
        "doc_to_target": "answer",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in metrics],
        "metadata": {"version": 1.0, "source": "rosi local task"},
    }


def prepare_local_tasks(tasks: dict[str, int | None], data_dir: str | Path, folder: Path, seed: int = 0) -> list[dict[str, Any]]:
    """Sample each local task's questions into ``folder`` and return the lm-eval configurations."""
    folder.mkdir(parents=True, exist_ok=True)
    configs = []
    for task, n in tasks.items():
        docs = sample_docs(local_docs(task, data_dir), n, seed)
        data_file = folder / f"{task}.jsonl"
        data_file.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
        config = local_task_config(task, data_file)
        (folder / f"{task}.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        configs.append(config)
    return configs


def parse_tasks(spec: str) -> tuple[dict[str, int | None], dict[str, int | None]]:
    """``mmlu:100,local:hellaswag:50,...`` -> (hub tasks, local tasks), each task -> question count
    (None: all)."""
    hub: dict[str, int | None] = {}
    local: dict[str, int | None] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        target = hub
        if item.startswith("local:"):
            target, item = local, item.removeprefix("local:")
        name, _, count = item.partition(":")
        if count and not count.isdigit():
            raise UtilityError(f"utility task {item!r}: the count after ':' must be a whole number")
        if target is local and name not in LOCAL_FILES:
            raise UtilityError(f"no local task {name!r}; local tasks: {', '.join(LOCAL_FILES)}")
        target[name] = int(count) if count else None
    return hub, local


def run_utility(
    loaded: Any,
    *,
    hub_tasks: dict[str, int | None] | None = None,
    local_configs: list[dict[str, Any]] | None = None,
    batch_size: int = 16,
) -> dict[str, UtilityScore]:
    """Run lm-eval on an in-memory model. Per task (or group, pooled): accuracy, and ``acc_norm``
    where the task has it, as rates with Wilson intervals. For hub tasks the count is lm-eval's
    ``limit``: questions per leaf task."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UtilityError("utility benchmarks need lm-evaluation-harness: pip install 'rosi[eval]' (or pass --utility none)") from None
    device = str(next(loaded.model.parameters()).device)
    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size, device=device)
    results: dict[str, UtilityScore] = {}
    jobs: list[tuple[list[Any], int | None]] = [([c], None) for c in local_configs or []]
    jobs += [([name], n) for name, n in (hub_tasks or {}).items()]
    manager = TaskManager()
    for tasks, limit in jobs:
        top = tasks[0] if isinstance(tasks[0], str) else tasks[0].get("task") or tasks[0].get("group")
        try:
            out = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, task_manager=manager, log_samples=False, bootstrap_iters=0)
        except Exception as e:  # noqa: BLE001 - lm-eval and datasets raise many types; all mean "this task cannot run"
            raise UtilityError(f"lm-eval could not run {top!r} ({type(e).__name__}: {e})") from None
        results[str(top).removeprefix("rosi_")] = pooled_accuracy(out or {}, str(top))
    return results


def per_question(loaded: Any, local_configs: list[dict[str, Any]], *, batch_size: int = 16) -> dict[str, list[bool]]:
    """Run lm-eval on local tasks and return, per task, whether each question (in the task file's
    order) was answered right: what a paired comparison of two models on the same questions
    needs (:class:`rosi.metrics.PairedDifference`)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise UtilityError("utility benchmarks need lm-evaluation-harness: pip install 'rosi[eval]'") from None
    device = str(next(loaded.model.parameters()).device)
    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size, device=device)
    results = {}
    for config in local_configs:
        name = str(config["task"])
        try:
            out = lm_eval.simple_evaluate(model=lm, tasks=[config], log_samples=True, bootstrap_iters=0)
        except Exception as e:  # noqa: BLE001 - lm-eval raises many types; all mean "this task cannot run"
            raise UtilityError(f"lm-eval could not run {name!r} ({type(e).__name__}: {e})") from None
        samples = sorted((out or {}).get("samples", {}).get(name, []), key=lambda r: int(r["doc_id"]))
        if not samples:
            raise UtilityError(f"lm-eval returned no per-question results for {name!r}")
        results[name.removeprefix("rosi_")] = [bool(r["acc"]) for r in samples]
    return results


def pooled_accuracy(out: dict[str, Any], name: str) -> UtilityScore:
    """Accuracy of a task, or of a group (e.g. ``mmlu``) pooled over its leaf tasks (every question
    counts once), from an lm-eval result."""
    tree: dict[str, list[str]] = out.get("group_subtasks", {})
    rows, counts = out.get("results", {}), out.get("n-samples", {})

    def leaves(task: str) -> list[str]:
        return [leaf for child in tree[task] for leaf in leaves(child)] if tree.get(task) else [task]

    k = k_norm = n = 0
    has_norm = True
    for leaf in leaves(name):
        size = int((counts.get(leaf) or {}).get("effective", 0))
        row = rows.get(leaf, {})
        if not size or row.get("acc,none") is None:
            continue
        n += size
        k += round(row["acc,none"] * size)
        has_norm = has_norm and row.get("acc_norm,none") is not None
        k_norm += round((row.get("acc_norm,none") or 0.0) * size)
    if not n:
        raise UtilityError(f"lm-eval returned no accuracy for {name!r}; rosi reports multiple-choice tasks (acc)")
    return UtilityScore(Rate(k, n), Rate(k_norm, n) if has_norm else None, len(leaves(name)) if tree.get(name) else None)
