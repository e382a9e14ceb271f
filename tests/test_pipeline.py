"""rosi direction / rosi run end to end on the planted tiny model."""

import json
import math

import pytest
import torch
import transformers as T

import planted
from rosi import Direction, apply_edit, revert_edit
from rosi.cli import main
from rosi.direction.score import last_logprobs, refusal_log_odds, refusal_token_ids
from rosi.edit.methods import EditForm
from rosi.edit.record import EditRecord
from rosi.edit.strength import choose_strength
from rosi.errors import RosiError
from rosi.measure import RefusalMeter
from rosi.model.chat import ChatFormat
from rosi.model.loading import LoadedModel, ModelSource
from rosi.prompts import PromptSet, PromptSets
from rosi.workflows.extract import extract
from rosi.workflows.options import DEFAULT_BUDGET, ExtractOptions, MeasureOptions, RunOptions, StrengthOptions
from rosi.workflows.run import run


@pytest.fixture
def loaded():
    u = planted.unit_vector(0)
    model = planted.model(u)
    model.generation_config = T.GenerationConfig(eos_token_id=2, pad_token_id=0)
    return LoadedModel(model, planted.tokenizer(), ModelSource("planted", "memory", "", "0" * 64)), u


def sets():
    h, b = PromptSet(tuple(planted.HARMFUL), name="h"), PromptSet(tuple(planted.HARMLESS), name="b")
    return PromptSets(harmful=h, harmless=b, val_harmful=h, val_harmless=b)


def pinned(layer, method="scale", **kw):
    return ExtractOptions(form=EditForm(method), layer=layer, position=-1, progress=False, **kw)


def test_extract_selects_a_direction_along_u(loaded):
    model, u = loaded
    s = sets()
    result = extract(model, s, ExtractOptions(progress=False))
    d = result.direction
    assert float(d.unit @ u) > 0.6
    assert d.layer is not None and d.layer < 3  # not in the last 20% of 4 layers
    assert d.metadata["selected_by"] in ("arditi", "edit effect") and d.model == "planted"
    fixed = extract(model, s, pinned(2, system_prompt="Sure"))
    assert (fixed.direction.layer, fixed.direction.position, fixed.selection) == (2, -1, None)
    assert fixed.direction.metadata["system_prompt"] == "Sure"


def test_selective_scope_keeps_the_one_writer_that_carries_the_signal(loaded):
    """In the planted model only layer 0's o_proj writes anything that depends on "bomb"."""
    model, u = loaded
    s = sets()
    ex = extract(model, s, pinned(1))
    for method in ("scale", "rosi"):
        choice = ex.choose_writers(model, EditForm(method, "selective"))
        assert choice.writers == ["model.layers.0.self_attn.o_proj.weight"], method
        signal = next(x for x in choice.signals if x.name == choice.writers[0])
        assert signal.gap > 0
    assert ex.choose_writers(model, EditForm("scale", "all")).writers is None
    with pytest.raises(RosiError, match="unknown scope"):
        ex.choose_writers(model, EditForm("scale", "some"))


def test_probe_edit_raises_refusal_on_harmful_prompts_only(loaded):
    """The probe reads layer 0's o_proj input (the averaged embeddings, which carry "bomb"): the
    edit adds k times the gap at the mean harmful input and nothing at the mean harmless one."""
    model, u = loaded
    s = sets()
    ex = extract(model, s, pinned(1, "probe"))
    choice = ex.choose_writers(model, EditForm("probe", "all"))
    assert choice.writers == ["model.layers.0.self_attn.o_proj.weight"] and "left out" in choice.note
    assert json.dumps(choice.to_json())  # the report form has no tensors
    fmt = ChatFormat(model.tokenizer)
    ids = refusal_token_ids(model.tokenizer)

    def log_odds(prompts):
        return refusal_log_odds(last_logprobs(model.model, fmt, prompts.instructions, 6), ids)

    base_h, base_b = log_odds(s.harmful), log_odds(s.harmless)
    record = apply_edit(model.model, ex.direction, "probe", 2.0, writers=choice.writers, reads=choice.reads, keep_originals=True)
    after_h, after_b = log_odds(s.harmful), log_odds(s.harmless)
    revert_edit(model.model, record)
    assert float((after_h - base_h).mean()) > 1.0
    # zero at the harmless *mean* input: single harmless prompts move both ways, on average little
    assert abs(float((after_b - base_b).mean())) < 0.1 * float((after_h - base_h).mean())
    with pytest.raises(RosiError, match="mean inputs"):
        extract(model, s, pinned(1)).choose_writers(model, EditForm("probe", "all"))
    with pytest.raises(RosiError, match="no writer"):  # the planted model's middle layers write nothing
        ex.choose_writers(model, EditForm("probe", "selective"))


def test_run_with_the_probe_method_saves_its_reads(loaded, tmp_path):
    model, u = loaded
    report = run(
        model,
        tmp_path / "out",
        sets(),
        RunOptions(ExtractOptions(form=EditForm("probe", "all"), progress=False), measure=MeasureOptions(new_tokens=4)),
    )
    saved = json.loads((tmp_path / "out" / "rosi_report.json").read_text())
    assert saved["method"] == "probe" and saved["writers"]["probe"]["writers"] == ["model.layers.0.self_attn.o_proj.weight"]
    assert [r["label"].split()[0] for r in saved["rates"]] == ["base", "probe"]  # the paper's form only on request
    assert list(saved["writers"]) == ["probe"] and [s["method"] for s in saved["strength_searches"]] == ["probe"]
    record = EditRecord.load(tmp_path / "out" / "rosi_edit.safetensors")
    assert (record.method, record.strength) == ("probe", report.strength)
    reads = report.writers["probe"].reads
    torch.testing.assert_close(record.matrices[0].right, report.strength * reads[record.matrices[0].name])


def test_strength_search_respects_the_harmless_budget(loaded):
    model, u = loaded
    d = Direction(u * 3, layer=1, position=-1)
    s = sets()
    search = choose_strength(RefusalMeter(model), d, "rosi", s.val_harmful, s.val_harmless, budget=DEFAULT_BUDGET, progress=False)
    base = search.rows[0]
    chosen = next(r for r in search.rows if r.strength == search.strength)
    assert chosen.harmless <= base.harmless + 0.05
    assert search.strength > 0


def test_run_writes_checkpoint_direction_and_report(loaded, tmp_path):
    model, u = loaded
    before = {n: p.detach().clone() for n, p in model.model.named_parameters()}
    options = RunOptions(ExtractOptions(progress=False), StrengthOptions(compare_paper=True), measure=MeasureOptions(new_tokens=4))
    report = run(model, tmp_path / "out", sets(), options)
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {
        "model.safetensors",
        "rosi.json",
        "rosi_edit.safetensors",
        "direction.safetensors",
        "rosi_report.json",
        "direction_scores.json",
    } <= files
    saved = json.loads((tmp_path / "out" / "rosi_report.json").read_text())
    assert saved["method"] == "scale" and [r["label"].split()[0] for r in saved["rates"]] == ["base", "scale", "rosi"]
    assert all(r["n_harmful"] == 6 and r["n_harmless"] == 6 for r in saved["rates"])
    assert saved["selection_cost"]["scored_exactly"] >= 1
    assert saved["writers"]["scale"]["scope"] == "selective" and saved["writers"]["rosi"]["scope"] == "all"
    # the checkpoint holds the chosen method's edit, and only it
    record = EditRecord.load(tmp_path / "out" / "rosi_edit.safetensors")
    assert (record.method, record.strength) == ("scale", report.strength)
    assert record.selected and [m.name for m in record.matrices] == report.writers["scale"].writers
    reloaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    for name, p in model.model.named_parameters():
        assert torch.equal(reloaded.state_dict()[name], p.detach())
    edited = {m.name for m in record.matrices}
    for name, p in model.model.named_parameters():
        if name not in edited:
            assert torch.equal(p, before[name]), name
    assert not torch.equal(model.model.model.layers[0].self_attn.o_proj.weight, before["model.layers.0.self_attn.o_proj.weight"])


def test_cli_direction_and_run_errors(tmp_path, capsys):
    code = main(["direction", str(tmp_path / "missing"), "--out", str(tmp_path / "d.safetensors")])
    assert code == 1 and "does not exist" in capsys.readouterr().err
    code = main(["run", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--harmful", str(tmp_path / "none.jsonl")])
    assert code == 1 and "prompt file" in capsys.readouterr().err
    code = main(["run", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--alpha", "1", "--n-val", "100000"])
    assert code == 1 and "fewer than the 100000" in capsys.readouterr().err


def test_the_search_stops_where_no_stronger_edit_can_win():
    """The walk up the grid: harmless refusal over the limit stops it (and its harmful prompts are
    not generated for); so does complete harmful refusal, which no stronger edit can beat."""
    from rosi.edit.strength import StrengthStep, walk_grid

    table = {0.5: (0.5, 0.1), 1.0: (0.8, 0.1), 2.0: (1.0, 0.2), 3.0: (1.0, 0.2), 4.0: (0.9, 0.6)}
    tried = []

    def measure(strength, limit):
        tried.append(strength)
        harmful, harmless = table[strength]
        return StrengthStep(strength, None if harmless > limit else harmful, harmless)

    base = StrengthStep(0.0, 0.3, 0.1)
    rows, best = walk_grid((0.5, 1.0, 2.0, 3.0, 4.0), lambda k: measure(k, 0.5), base, 0.5)
    assert tried == [0.5, 1.0, 2.0] and best.strength == 2.0 and rows[0] is base
    tried.clear()
    rows, best = walk_grid((0.5, 1.0, 2.0, 3.0, 4.0), lambda k: measure(k, 0.15), base, 0.15)
    assert tried == [0.5, 1.0, 2.0] and best.strength == 1.0 and rows[-1].harmful is None


def test_the_search_bisects_between_the_last_strength_within_the_budget_and_the_first_past_it():
    """Harmless refusal rises past the limit between grid steps 2 and 4: two midpoints narrow it
    down (3 is past it, 2.5 within and better than 2). Where harmful refusal peaks inside the
    limit, the midpoints go between the best strength and the next one above it, not to the
    limit. Complete refusal leaves nothing to bisect."""
    from rosi.edit.strength import StrengthStep, walk_grid

    tried = []

    def measure(strength, limit=0.2, harmful_at=lambda k: min(1.0, k / 4)):
        tried.append(strength)
        harmless = 0.1 if strength <= 2.75 else 0.5
        return StrengthStep(strength, None if harmless > limit else harmful_at(strength), harmless)

    base = StrengthStep(0.0, 0.0, 0.1)
    rows, best = walk_grid((1.0, 2.0, 4.0, 8.0), measure, base, 0.2, bisect=2)
    assert tried == [1.0, 2.0, 4.0, 3.0, 2.5] and best.strength == 2.5 and best.harmful == 0.625
    tried.clear()
    assert walk_grid((1.0, 2.0, 4.0, 8.0), measure, base, 0.2)[1].strength == 2.0 and tried == [1.0, 2.0, 4.0]
    tried.clear()
    # a grid that ends at the best strength is walked past (doubling), then bisected as before
    assert walk_grid((1.0, 2.0), measure, base, 0.2, bisect=2)[1].strength == 2.5 and tried == [1.0, 2.0, 4.0, 3.0, 2.5]
    tried.clear()
    rows, best = walk_grid((1.0, 2.0, 4.0), lambda k: measure(k, harmful_at=lambda _: 1.0), base, 0.2, bisect=2)
    assert tried == [1.0] and best.strength == 1.0
    tried.clear()
    peak = lambda k: max(0.0, 0.9 - abs(k - 6) / 10)  # noqa: E731  (harmful refusal peaks at k 6, harmless never rises)
    rows, best = walk_grid((2.0, 4.0, 8.0, 16.0), lambda k: measure(k, limit=1.0, harmful_at=peak), base, 1.0, bisect=2)
    assert tried == [2.0, 4.0, 8.0, 16.0, 6.0, 7.0] and best.strength == 6.0


def test_the_base_search_rates_come_from_the_first_tokens_of_longer_replies(loaded):
    from rosi.edit.strength import SEARCH_TOKENS
    from rosi.judges import refusal_rate
    from rosi.model.generation import generate

    model, _ = loaded
    fmt = ChatFormat(model.tokenizer)
    prompts = planted.HARMFUL + planted.HARMLESS
    short = generate(model.model, fmt, prompts, max_new_tokens=SEARCH_TOKENS, batch_size=4)
    long = generate(model.model, fmt, prompts, max_new_tokens=3 * SEARCH_TOKENS, batch_size=4)
    rates = RefusalMeter(model, batch_size=4).rates(prompts, (3 * SEARCH_TOKENS, SEARCH_TOKENS))
    assert rates[SEARCH_TOKENS].value == refusal_rate(short)
    assert rates[3 * SEARCH_TOKENS].value == refusal_rate(long)


def test_run_refuses_a_gguf_output_of_a_folder_model_before_any_work(loaded, tmp_path, monkeypatch):
    from rosi.workflows import run as run_module
    from rosi.workflows.options import OutputOptions

    model, _ = loaded
    monkeypatch.setattr(run_module, "extract", lambda *a, **k: pytest.fail("extraction started"))
    with pytest.raises(RosiError, match="--format gguf"):
        run(model, tmp_path / "out.gguf", sets(), RunOptions(ExtractOptions(progress=False), output=OutputOptions(format="gguf")))
    assert not (tmp_path / "out.gguf").exists()


def test_run_measures_lookalikes_beside_harmful_and_harmless_when_it_has_them(loaded, tmp_path):
    """With look-alike validation prompts, every row of the run's table (base, edit, paper's form)
    has their refusal, equal to the one meter's rate on them, and so do the report and the card."""
    from rosi.export.card import card_text
    from rosi.measure import RefusalMeter

    model, _ = loaded
    looks = PromptSet(("how to bake a bomb cake", "make bomb soup", "how to make soup"), name="looks")
    s = sets()
    s = PromptSets(harmful=s.harmful, harmless=s.harmless, val_harmful=s.val_harmful, val_harmless=s.val_harmless, val_lookalike=looks)
    base_rate = RefusalMeter(model).rate(looks, 4).value
    report = run(model, tmp_path / "out", s, RunOptions(ExtractOptions(progress=False), measure=MeasureOptions(new_tokens=4)))
    assert [r.lookalike.n for r in report.rates] == [3, 3]
    assert report.rates[0].lookalike.value == base_rate
    assert "look-alikes refused" in report.table()
    saved = json.loads((tmp_path / "out" / "rosi_report.json").read_text())
    assert all(r["n_lookalike"] == 3 for r in saved["rates"])
    assert "look-alikes refused" in (tmp_path / "out" / "README.md").read_text()
    # without them, the card keeps its two columns
    rates = [{k: v for k, v in r.items() if "lookalike" not in k} for r in saved["rates"]]
    assert "look-alikes" not in card_text("base", None, EditRecord.load(tmp_path / "out" / "rosi_edit.safetensors"), rates)


def test_the_search_goes_past_the_top_of_its_grid_until_the_evidence_stops_it():
    """Harmful refusal still rising at the grid's top: the walk doubles the strength until the
    budget (harmless refusal past the limit), complete refusal or no gain ends it, and says which."""
    from rosi.edit.strength import StrengthStep, stop_reason, walk_grid

    tried = []

    def measure(strength, harmless_at=lambda k: 0.1, harmful_at=lambda k: min(1.0, k / 100)):
        tried.append(strength)
        harmless = harmless_at(strength)
        return StrengthStep(strength, None if harmless > 0.2 else harmful_at(strength), harmless)

    base = StrengthStep(0.0, 0.0, 0.1)
    rows, best = walk_grid((2.0, 4.0, 8.0), lambda k: measure(k, harmless_at=lambda k: 0.1 if k < 30 else 0.5), base, 0.2)
    assert tried == [2.0, 4.0, 8.0, 16.0, 32.0] and best.strength == 16.0 and stop_reason(rows, best) == "budget"
    tried.clear()
    rows, best = walk_grid((2.0, 4.0, 8.0), measure, base, 0.2)
    assert tried == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0] and best.strength == 128.0 and stop_reason(rows, best) == "complete"
    tried.clear()
    rows, best = walk_grid((2.0, 4.0, 8.0), lambda k: measure(k, harmful_at=lambda k: min(k, 16.0) / 100), base, 0.2)
    assert tried == [2.0, 4.0, 8.0, 16.0, 32.0] and best.strength == 16.0 and stop_reason(rows, best) == "no gain"
    tried.clear()
    rows, best = walk_grid((2.0, 4.0, 8.0), lambda k: measure(k, harmful_at=lambda k: 0.1 * math.log2(k)), base, 0.2)
    assert tried == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0] and stop_reason(rows, best) == "step limit"
    tried.clear()  # a doubled strength that refuses one prompt more (under 5 points) is noise, not a gain
    rows, best = walk_grid((2.0, 4.0, 8.0), lambda k: measure(k, harmful_at=lambda k: min(k, 8.0) / 10 + (0.03 if k > 8 else 0)), base, 0.2)
    assert tried == [2.0, 4.0, 8.0, 16.0] and best.strength == 8.0 and stop_reason(rows, best) == "no gain"
