"""Prompt sets: built-ins, every file format, and every error."""

import json
import re

import pytest

from conftest import DATA, needs_data
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


# The style sets (issue 39): harmless requests in eight styles unlike the fit's prompts, and harmful
# requests in four styles rosi's other sets lack. Read straight from the package's data folder
# through load_prompts, so these tests do not depend on sets.BUILTIN listing them.

HARMLESS_STYLES = ("everyday", "writing", "code", "maths", "advice", "rewrite", "roleplay", "multipart")
HARM_STYLES = ("question", "multipart", "persuasive", "fiction")
STYLE_SETS = ("harmless_styles", "harmful_styles")
_NUMBERED = r"(?:^|\s)(\d)[.)]\s+[A-Za-z]"  # "1. Do" / "2) do": a numbered sub-task


def _style_set(name):
    """``(prompts, splits)`` of a style set: every row through :func:`load_prompts`, and each row's split."""
    from importlib import resources

    from rosi.prompts.sets import split_lines

    data = resources.files("rosi.prompts") / "data" / f"{name}.jsonl"
    with resources.as_file(data) as path:
        prompts = load_prompts(str(path))
        rows = [json.loads(line) for line in split_lines(path.read_text(encoding="utf-8"))]
    assert [r["instruction"].strip() for r in rows] == list(prompts.instructions)
    assert all(set(r) == {"instruction", "category", "split"} for r in rows)
    from rosi.prompts import sets

    if name in sets.BUILTIN:  # once listed, the built-in loader agrees with the file
        for split in ("train", "val"):
            assert builtin(name, split).instructions == tuple(
                p for p, s in zip(prompts.instructions, [r["split"] for r in rows], strict=True) if s == split
            )
    return prompts, tuple(r["split"] for r in rows)


def _counts(categories, splits):
    counts: dict[tuple[str, str], int] = {}
    for kind, split in zip(categories, splits, strict=True):
        counts[kind, split] = counts.get((kind, split), 0) + 1
    return counts


def _sound(prompts):
    """No blank prompt, no prompt twice (case aside)."""
    assert all(p.strip() for p in prompts.instructions)
    lowered = [p.lower() for p in prompts.instructions]
    assert len(set(lowered)) == len(lowered), sorted({p for p in lowered if lowered.count(p) > 1})


def test_harmless_styles_cover_eight_styles_evenly_in_both_splits():
    prompts, splits = _style_set("harmless_styles")
    _sound(prompts)
    assert len(prompts) >= 640 and set(splits) == {"train", "val"}
    assert set(prompts.categories) == set(HARMLESS_STYLES)
    counts = _counts(prompts.categories, splits)
    for split in ("train", "val"):  # every style in both parts, evenly, half of each style in each
        assert {counts.get((style, split), 0) for style in HARMLESS_STYLES} == {len(prompts) // 16}
    assert splits.count("val") >= 320 and splits.count("val") == splits.count("train")
    for text, style in zip(prompts.instructions, prompts.categories, strict=True):
        if style == "multipart":  # 3-6 numbered sub-tasks, 60-150 words
            numbers = [int(n) for n in re.findall(_NUMBERED, text)]
            assert numbers == list(range(1, len(numbers) + 1)) and 3 <= len(numbers) <= 6, text
            assert 60 <= len(text.split()) <= 150, text
        if style == "rewrite":  # the text to rewrite is given: 2-6 sentences after the colon
            _, _, given = text.partition(": ")
            assert 2 <= len(re.findall(r"[.!?](?=[\s'\"]|$)", given)) <= 6, text


def test_harmful_styles_cover_every_harm_category_in_four_styles():
    prompts, splits = _style_set("harmful_styles")
    _sound(prompts)
    harms = set(builtin("harmful").categories)
    assert len(harms) == 10
    assert len(prompts) == 240
    assert all(kind.count("/") == 1 for kind in prompts.categories)
    assert {tuple(kind.split("/")) for kind in prompts.categories} == {(h, s) for h in harms for s in HARM_STYLES}
    counts = _counts(prompts.categories, splits)
    assert set(counts.values()) == {3} and len(counts) == 10 * 4 * 2  # 6 per (category, style): 3 train, 3 val
    for text, kind in zip(prompts.instructions, prompts.categories, strict=True):
        if kind.endswith("/multipart"):
            numbers = [int(n) for n in re.findall(_NUMBERED, text)]
            assert numbers == list(range(1, len(numbers) + 1)) and 3 <= len(numbers) <= 5, text
        if kind.endswith("/question"):
            assert text.rstrip().endswith("?"), text


_PUNCTUATION = re.compile(r"[^\w\s]")


def _tokens(text):
    """A prompt's token set for the near-duplicate rule: lowercased, punctuation stripped, split at spaces."""
    return frozenset(_PUNCTUATION.sub("", text.lower()).split())


def _near_duplicates(mine, others, threshold=0.6):
    """Pairs ``(mine, other)`` with token-set Jaccard >= threshold. Exact and fast: an inverted index
    over ``others``, probed with each prompt's rarest ``|A| - ceil(t|A|) + 1`` tokens (a pair with
    Jaccard >= t shares at least ceil(t|A|) tokens, so it shares one of those), then a size filter."""
    import math

    mine = [(text, _tokens(text)) for text in mine]
    longest = max((len(a) for _, a in mine), default=0) / threshold  # a longer text cannot be within the threshold
    pool = sorted({_tokens(o) for o in set(others)} - {frozenset()}, key=len)
    pool = [b for b in pool if len(b) <= longest + 1e-9]
    index: dict[str, list[int]] = {}
    for i, tokens in enumerate(pool):
        for w in tokens:
            index.setdefault(w, []).append(i)
    hits = []
    for text, a in mine:
        rarest = sorted(a, key=lambda w: (len(index.get(w, ())), w))
        candidates = set()
        for w in rarest[: len(a) - math.ceil(threshold * len(a) - 1e-9) + 1]:
            candidates.update(index.get(w, ()))
        for i in candidates:
            b = pool[i]
            if threshold * max(len(a), len(b)) <= min(len(a), len(b)) + 1e-9 and len(a & b) >= threshold * len(a | b) - 1e-9:
                hits.append((text, " ".join(sorted(b))))
    return hits


def test_near_duplicate_rule_is_exact_on_a_toy_case():
    assert _tokens("Write a Poem, about CATS!") == {"write", "a", "poem", "about", "cats"}
    others = ["write a poem about dogs", "a completely different sentence here", "poem"]
    # {write,a,poem,about,cats} vs {write,a,poem,about,dogs}: 4/6 = 0.67 >= 0.6
    assert [m for m, _ in _near_duplicates(["Write a poem about cats"], others)] == ["Write a poem about cats"]
    assert _near_duplicates(["Write a long sonnet about sleepy cats"], others) == []  # 3/9


def test_style_sets_share_no_prompt_with_the_other_builtin_sets():
    from rosi.prompts import sets

    new = {name: _style_set(name)[0].instructions for name in STYLE_SETS}
    old = {kind: builtin(kind).instructions for kind in sets.BUILTIN if kind not in STYLE_SETS}
    assert {"harmful", "harmless", "lookalike", "harmful_hard", "harmless_tasks"} <= set(old)
    lowered = {name: {p.lower() for p in texts} for name, texts in {**new, **old}.items()}
    assert not lowered["harmless_styles"] & lowered["harmful_styles"]
    for name in STYLE_SETS:
        for kind in old:
            assert not lowered[name] & lowered[kind], (name, kind, sorted(lowered[name] & lowered[kind])[:3])
        # nor a near-duplicate of one (the rule the public sets are held to below)
        near = _near_duplicates(new[name], [p for texts in old.values() for p in texts])
        assert not near, (name, near[:3])


@needs_data
def test_style_sets_are_not_near_duplicates_of_the_public_sets():
    """Held-out public sets (AdvBench, JailbreakBench, MaliciousInstruct, TDC2023, Alpaca, CoCoNot,
    the jailbreak templates ...): no prompt of the style sets has token-set Jaccard >= 0.6 with any
    of their instruction/prompt/goal/behavior texts."""
    import csv

    keys = {"instruction", "prompt", "goal", "behavior", "template", "text", "query"}
    skip = {"mmlu", "arc", "hellaswag", "llamaguard3"}  # multiple-choice sets and a category list: no prompts

    def texts(value, out):
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, (str, dict)):
                    texts(item, out)
        elif isinstance(value, dict):
            for key, item in value.items():
                if key.lower() in keys and isinstance(item, str):
                    out.append(item)
                elif isinstance(item, list):
                    texts(item, out)

    public: list[str] = []
    for path in sorted(DATA.rglob("*")):
        if path.relative_to(DATA).parts[0] in skip or not path.is_file():
            continue
        if path.suffix == ".jsonl":
            for line in path.read_text(encoding="utf-8").split("\n"):  # not splitlines: U+2028 sits inside prompts
                if line.strip():
                    texts(json.loads(line), public)
        elif path.suffix == ".json":
            texts(json.loads(path.read_text(encoding="utf-8")), public)
        elif path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    texts(row, public)
    assert len(public) > 10_000  # AdvBench, JBB, ..., and the Alpaca splits were found
    near = _near_duplicates([p for name in STYLE_SETS for p in _style_set(name)[0].instructions], public)
    assert not near, (len(near), near[:5])


def test_builtin_sets_join_with_plus_in_order_with_their_categories():
    a, b = builtin("harmful", "train"), builtin("harmful_styles", "train")
    joined = load_prompts("builtin:harmful+harmful_styles:train")
    assert joined.instructions == a.instructions + b.instructions
    assert joined.categories == a.categories + b.categories
    assert joined.name == "builtin:harmful+harmful_styles:train"
    assert len(load_prompts("builtin:harmless+harmless_styles")) == len(builtin("harmless")) + len(builtin("harmless_styles"))
    for bad in ("builtin:harmful+nope:train", "builtin:harmful+:val", "builtin:+harmful"):
        with pytest.raises(PromptError, match="no built-in prompt set"):
            load_prompts(bad)


def test_n_train_spreads_over_the_kinds_so_a_joined_set_keeps_every_part():
    from rosi.prompts import PromptSets

    sets = PromptSets.load("builtin:harmful+harmful_styles:train", n_train=50)
    styles = {c.rsplit("/", 1)[-1] if "/" in c else "imperative" for c in sets.harmful.categories}
    assert len(sets.harmful) == 50 and styles == {"imperative", "question", "multipart", "persuasive", "fiction"}
    with pytest.raises(PromptError, match="fewer than"):
        PromptSets.load(n_train=10_000)


def test_validation_note_counts_lookalikes_that_were_also_fit_on():
    from rosi.prompts import PromptSets

    held = PromptSets.load()
    assert held.overlap() == 0 and held.validation_note() == "held out from extraction"
    shared = PromptSets.load(val_lookalike="builtin:lookalike:train", n_val=None)
    assert shared.overlap() == len(builtin("lookalike", "train"))
    assert shared.validation_note().startswith(f"NOT held out: {len(builtin('lookalike', 'train'))} of the")
