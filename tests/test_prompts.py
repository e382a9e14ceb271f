"""Prompt sets: built-ins, every file format, and every error."""

import json

import pytest

from rosi.prompts import PromptError, PromptSet, builtin, load_prompts


def test_builtin_sets_are_large_split_and_categorised():
    for kind, minimum in (("harmful", 150), ("harmless", 150), ("lookalike", 200), ("harmful_hard", 150), ("harmless_tasks", 200)):
        everything = builtin(kind)
        train, val = builtin(kind, "train"), builtin(kind, "val")
        assert len(everything) >= minimum
        assert len(train) + len(val) == len(everything)
        assert not set(train.instructions) & set(val.instructions)
        assert len(set(everything.instructions)) == len(everything)
        assert everything.categories is not None and None not in everything.categories
    harmful_categories = set(builtin("harmful").categories)
    assert len(harmful_categories) == 10
    assert "edgy_but_fine" in set(builtin("harmless").categories)
    assert load_prompts("builtin:harmful:val").instructions == builtin("harmful", "val").instructions
    kinds = set(builtin("lookalike").categories)
    assert {"homonym", "figurative", "safe_target", "safe_context", "definition", "nonsense_discrimination", "real_events"} <= kinds
    assert {"safety_medical", "security_education", "sensitive_writing", "topic_twin"} <= kinds
    for kind in kinds:  # every kind in both parts
        for split in ("train", "val"):
            assert kind in set(builtin("lookalike", split).categories)
    assert set(builtin("harmful_hard").categories) == harmful_categories
    tasks = builtin("harmless_tasks")
    assert len(set(tasks.categories)) == 8
    for split in ("train", "val"):  # every kind in both parts, evenly
        part = builtin("harmless_tasks", split)
        assert {part.categories.count(k) for k in set(tasks.categories)} == {15}


def test_the_new_sets_share_no_prompt_with_the_old_ones():
    sets = {kind: set(builtin(kind).instructions) for kind in ("harmful", "harmless", "lookalike", "harmful_hard", "harmless_tasks")}
    for a in sets:
        for b in sets:
            if a < b:
                assert not sets[a] & sets[b], (a, b)


def test_look_alike_sets_load_like_every_set_and_are_optional_in_a_run(tmp_path):
    from rosi.prompts import PromptSets

    sets = PromptSets.load(n_val=8)
    assert sets.lookalike is not None and sets.val_lookalike is not None and len(sets.val_lookalike) == 8
    assert sets.need_lookalikes("x") == (sets.lookalike, sets.val_lookalike)
    custom = tmp_path / "mine.txt"
    custom.write_text("how do I kill a zombie process\nwhat is a honeypot\n")
    mine = PromptSets.load(lookalike=str(custom), val_lookalike=str(custom), n_val=8)
    assert mine.lookalike.instructions == ("how do I kill a zombie process", "what is a honeypot")  # fewer than n: all of them
    bare = PromptSets.load(lookalike=None, val_lookalike=None)
    with pytest.raises(PromptError, match="--lookalike"):
        bare.need_lookalikes("method 'gate'")
    both = builtin("harmful", "val") + builtin("harmful_hard", "val")
    assert len(both) == len(builtin("harmful", "val")) + len(builtin("harmful_hard", "val")) and both.categories is not None


def test_spread_samples_every_kind_evenly_even_one_appended_at_the_end():
    toy = PromptSet(("a1", "a2", "a3", "b1", "b2", "c1"), ("a", "a", "a", "b", "b", "c"), name="toy")
    assert toy.spread(4).instructions == ("a1", "a2", "b1", "c1")  # one of each kind in turn, kept in order
    assert toy.spread(6).instructions == toy.instructions
    assert PromptSet(("x", "y", "z"), name="plain").spread(2).instructions == ("x", "y")  # no kinds: the first n
    with pytest.raises(PromptError, match="fewer than"):
        toy.spread(7)
    val = builtin("lookalike", "val")
    assert "topic_twin" not in set(val.take(32).categories)  # the kind added last: the first 32 miss it
    from rosi.workflows.options import TUNE_N_VAL_LOOKALIKE

    counts = {k: val.spread(TUNE_N_VAL_LOOKALIKE).categories.count(k) for k in set(val.categories)}
    assert len(counts) == 12 and set(counts.values()) == {5}  # rosi tune's default: 5 of each kind
    from rosi.prompts import PromptSets

    assert "sensitive_writing" in set(PromptSets.load().val_lookalike.categories)  # a run's look-alikes are spread too


def test_builtin_lengths_are_similar():
    mean = lambda s: sum(len(i.split()) for i in s.instructions) / len(s)  # noqa: E731
    assert abs(mean(builtin("harmful")) - mean(builtin("harmless"))) < 3


@pytest.fixture
def files(tmp_path):
    rows = [{"goal": "first", "category": "a", "other": 1}, {"goal": "second", "category": "b", "other": 2}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "p.json").write_text(json.dumps(rows))
    (tmp_path / "s.json").write_text(json.dumps(["first", "second"]))
    (tmp_path / "p.csv").write_text("id,prompt,type,label,focus,note\n1,first,homonyms,safe,kill,\n2,second,figurative,safe,shoot,x\n")
    (tmp_path / "p.txt").write_text("first\n\nsecond\n")
    return tmp_path


@pytest.mark.parametrize("name", ["p.jsonl", "p.json", "s.json", "p.csv", "p.txt"])
def test_every_format(files, name):
    prompts = load_prompts(str(files / name))
    assert prompts.instructions == ("first", "second")


def test_columns_and_categories(files):
    p = load_prompts(str(files / "p.jsonl"))
    assert p.categories == ("a", "b")
    xs = load_prompts(str(files / "p.csv"))  # XSTest layout: 'type' is the category
    assert xs.categories == ("homonyms", "figurative")
    assert load_prompts(f"{files / 'p.csv'}:focus").instructions == ("kill", "shoot")
    assert load_prompts(str(files / "p.csv"), column="focus").instructions == ("kill", "shoot")


def test_take():
    p = PromptSet(tuple("abcdef"), name="x")
    assert p.take(3).instructions == ("a", "b", "c")
    assert sorted(p.take(6, seed=1).instructions) == list("abcdef") and p.take(6, seed=1).instructions != p.instructions
    with pytest.raises(PromptError, match="has 6 prompts, fewer than the 10"):
        p.take(10)


def test_errors(files, tmp_path):
    with pytest.raises(PromptError, match="does not exist"):
        load_prompts(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(PromptError, match="empty"):
        load_prompts(str(tmp_path / "empty.jsonl"))
    with pytest.raises(PromptError, match="no column 'nope'.*goal"):
        load_prompts(f"{files / 'p.jsonl'}:nope")
    (tmp_path / "nocol.jsonl").write_text(json.dumps({"a": "x"}) + "\n")
    with pytest.raises(PromptError, match="no column"):
        load_prompts(str(tmp_path / "nocol.jsonl"))
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(PromptError, match="cannot be parsed"):
        load_prompts(str(tmp_path / "bad.jsonl"))
    (tmp_path / "p.xml").write_text("<x/>")
    with pytest.raises(PromptError, match="unknown prompt file type"):
        load_prompts(str(tmp_path / "p.xml"))
    with pytest.raises(PromptError, match="no built-in prompt set"):
        load_prompts("builtin:neutral")
    (tmp_path / "blank.csv").write_text("prompt\n\n")
    with pytest.raises(PromptError, match="empty"):
        load_prompts(str(tmp_path / "blank.csv"))


def test_hub_dataset_errors_are_one_line(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PromptError, match="cannot load dataset 'someone/nothing' split 'train'"):
        load_prompts("hf:someone/nothing:train:prompt")


def test_unicode_line_separators_inside_a_prompt_do_not_split_it(tmp_path):
    text = "first part\u2028second part"
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": text}, ensure_ascii=False) + "\r\n")
    (tmp_path / "p.txt").write_text(text + "\r\nnext\n")
    assert load_prompts(str(tmp_path / "p.jsonl")).instructions == (text,)
    assert load_prompts(str(tmp_path / "p.txt")).instructions == (text, "next")
