"""Utility through lm-evaluation-harness: local task files, configurations, and the scoring."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T

from conftest import DATA, needs_data
from rosi.eval.utility import (
    UtilityError,
    local_docs,
    local_task_config,
    parse_tasks,
    pooled_accuracy,
    prepare_local_tasks,
    run_utility,
    sample_docs,
)
from rosi.model.loading import LoadedModel, ModelSource


@needs_data
@pytest.mark.parametrize(
    ("task", "file", "count"),
    [
        ("arc_easy", "arc/arc-easy/test.json", 2376),
        ("arc_challenge", "arc/arc-challenge/test.json", 1172),
        ("hellaswag", "hellaswag/hellaswag_val_sample1000.jsonl", 1000),
    ],
)
def test_local_docs_normalize_the_public_files(task, file, count):
    docs = local_docs(task, DATA)
    first = json.loads((DATA / file).read_text(encoding="utf-8").split("\n", 1)[0])
    assert len(docs) == count
    if task == "hellaswag":
        assert docs[0] == {"question": first["question"], "choices": first["choices"], "answer": first["answer"], "subject": ""}
    else:
        assert docs[0]["question"] == first["centerpiece"] and docs[0]["choices"] == first["options"]
        assert docs[0]["choices"][docs[0]["answer"]] == first["correct_options_literal"][0]


@needs_data
def test_local_mmlu_spans_every_subject():
    docs = local_docs("mmlu", DATA)
    assert len(docs) == 14042 and len({d["subject"] for d in docs}) == 57
    assert all(len(d["choices"]) == 4 and 0 <= d["answer"] < 4 for d in docs)
    sample = sample_docs(docs, 100, seed=0)
    assert len({d["question"] for d in sample}) == 100 and len({d["subject"] for d in sample}) > 20  # drawn across subjects
    assert sample == sample_docs(docs, 100, seed=0) != sample_docs(docs, 100, seed=1)


def test_local_docs_errors(tmp_path):
    with pytest.raises(UtilityError, match="does not exist; pass --data"):
        local_docs("arc_easy", tmp_path)
    with pytest.raises(UtilityError, match="no local task 'boolq'"):
        local_docs("boolq", tmp_path)
    (tmp_path / "arc" / "arc-easy").mkdir(parents=True)
    (tmp_path / "arc" / "arc-easy" / "test.json").write_text('{"question": "no options"}\n', encoding="utf-8")
    with pytest.raises(UtilityError, match="lacks the fields"):
        local_docs("arc_easy", tmp_path)
    (tmp_path / "arc" / "arc-easy" / "test.json").write_text("{oops\n", encoding="utf-8")
    with pytest.raises(UtilityError, match="not valid JSONL"):
        local_docs("arc_easy", tmp_path)


def test_parse_tasks():
    assert parse_tasks("mmlu,local:hellaswag:50, local:mmlu:100") == ({"mmlu": None}, {"hellaswag": 50, "mmlu": 100})
    assert parse_tasks("") == ({}, {})
    with pytest.raises(UtilityError, match="whole number"):
        parse_tasks("local:mmlu:many")
    with pytest.raises(UtilityError, match="no local task 'boolq'"):
        parse_tasks("local:boolq")


def byte_level_model(tmp_path) -> LoadedModel:
    """A tiny random Llama with a real byte-level BPE tokenizer (lm-eval needs one that round-trips text)."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        ["Question: Answer: The following are multiple choice questions"], vocab_size=300, min_frequency=1, show_progress=False
    )
    bpe.add_special_tokens(["<|end|>"])
    tok = T.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|end|>", pad_token="<|end|>")
    torch.manual_seed(0)
    config = T.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=320
    )
    model = T.AutoModelForCausalLM.from_config(config).eval()
    return LoadedModel(model, tok, ModelSource("tiny", "memory", str(tmp_path), ""))


def test_lm_eval_scores_each_question_once(tmp_path):
    """Each question appears once per choice, each copy naming another choice as the answer: whatever
    the model prefers, exactly one copy is right, so accuracy must be exactly 1/(choices)."""
    questions = [("Which is a colour?", ["red", "seven", "Paris", "run"]), ("Pick a number.", ["three", "blue", "cat", "up"])]
    docs = [{"question": q, "choices": c, "answer": a, "subject": "tests"} for q, c in questions for a in range(4)]
    for task in ("mmlu", "arc_easy"):
        data = tmp_path / f"{task}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
        out = run_utility(byte_level_model(tmp_path), local_configs=[local_task_config(task, data)], batch_size=4)
        result = out[task].to_json()
        acc = result["accuracy"]
        assert (acc["k"], acc["n"]) == (2, 8), acc
        assert acc["ci95"][0] < 0.25 < acc["ci95"][1]
        assert ("accuracy_norm" in result) == (task == "arc_easy")


@needs_data
def test_prepare_local_tasks_writes_configs_and_samples(tmp_path):
    configs = prepare_local_tasks({"arc_challenge": 7, "hellaswag": 5}, DATA, tmp_path / "tasks")
    assert [c["task"] for c in configs] == ["rosi_arc_challenge", "rosi_hellaswag"]
    lines = (tmp_path / "tasks" / "arc_challenge.jsonl").read_text().splitlines()
    assert len(lines) == 7 and json.loads((tmp_path / "tasks" / "hellaswag.json").read_text())["dataset_path"] == "json"
    out = run_utility(byte_level_model(tmp_path), local_configs=configs, batch_size=8)
    assert out["arc_challenge"].accuracy.n == 7 and out["hellaswag"].accuracy.n == 5


def test_groups_are_pooled_over_their_leaf_tasks():
    """lm-eval's result layout for a group (mmlu -> mmlu_stem -> subjects): every question counts once."""
    out = {
        "group_subtasks": {"mmlu": ["mmlu_stem", "mmlu_law"], "mmlu_stem": ["mmlu_algebra", "mmlu_physics"], "mmlu_law": []},
        "results": {
            "mmlu": {"acc,none": 0.9},  # lm-eval's own aggregate: not used
            "mmlu_stem": {"acc,none": 0.9},
            "mmlu_algebra": {"acc,none": 0.5},
            "mmlu_physics": {"acc,none": 0.25},
            "mmlu_law": {"acc,none": 0.75},
        },
        "n-samples": {"mmlu_algebra": {"effective": 10}, "mmlu_physics": {"effective": 20}, "mmlu_law": {"effective": 4}},
    }
    got = pooled_accuracy(out, "mmlu").to_json()
    assert (got["accuracy"]["k"], got["accuracy"]["n"], got["tasks"]) == (5 + 5 + 3, 34, 3)
    assert "accuracy_norm" not in got
    assert pooled_accuracy(out, "mmlu_physics").accuracy.k == 5
    with pytest.raises(UtilityError, match="no accuracy for 'bleu_task'"):
        pooled_accuracy({"results": {"bleu_task": {"bleu,none": 3.0}}, "n-samples": {"bleu_task": {"effective": 3}}}, "bleu_task")


def test_per_question_scores_are_in_file_order_and_pair_up(tmp_path):
    """Each question once per choice: in every group of four copies exactly one is right, and the
    same model scored twice gives the same flags (a paired difference of zero)."""
    from rosi.eval.utility import per_question
    from rosi.metrics import PairedDifference

    questions = [("Which is a colour?", ["red", "seven", "Paris", "run"]), ("Pick a number.", ["three", "blue", "cat", "up"])]
    docs = [{"question": q, "choices": c, "answer": a, "subject": "tests"} for q, c in questions for a in range(4)]
    data = tmp_path / "mmlu.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    loaded = byte_level_model(tmp_path)
    flags = per_question(loaded, [local_task_config("mmlu", data)], batch_size=4)["mmlu"]
    assert len(flags) == 8 and sum(flags[:4]) == 1 and sum(flags[4:]) == 1
    again = per_question(loaded, [local_task_config("mmlu", data)], batch_size=4)["mmlu"]
    assert PairedDifference.of(flags, again).difference == 0
