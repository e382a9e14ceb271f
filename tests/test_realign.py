"""Re-alignment and the null direction: the math on tiny random models, the workflow on the planted model."""

from dataclasses import replace

import pytest
import torch
import transformers as T

import planted
from conftest import tiny_model
from rosi import Direction, apply_edit
from rosi.cli import build_parser
from rosi.cli.build import prompt_sets as _prompts
from rosi.cli.build import realign_options as _realign_options
from rosi.direction.null import (
    GAP_DEPTH,
    ISOLATED,
    find_ablation,
    gram,
    layer_profile,
    null_direction,
    write_ratio,
    writer_gram,
    writer_grams,
)
from rosi.direction.score import last_logprobs, refusal_log_odds, refusal_token_ids
from rosi.edit.methods import METHODS, EditForm
from rosi.errors import RosiError
from rosi.model.architecture import architecture_map
from rosi.model.chat import ChatFormat
from rosi.model.loading import LoadedModel, ModelSource
from rosi.prompts import DEFAULT_N_VAL, PromptSet, PromptSets, builtin
from rosi.prompts.system import SYSTEM_PROMPTS, system_prompt
from rosi.workflows.extract import activations_for, extract
from rosi.workflows.options import (
    REALIGN_BISECT,
    REALIGN_FORM,
    REALIGN_GRID,
    MeasureOptions,
    RealignOptions,
    StrengthOptions,
    realign_extract,
    realign_strength,
)
from rosi.workflows.realign import find_null, realign

ALL = ("attention", "mlp", "embedding")


def ablated_tiny(seed: int = 3):
    model = tiny_model("llama")
    r = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(seed))
    apply_edit(model, Direction(r), "ablate", 1.0, targets=ALL)
    return model, r / r.norm()


def test_gram_and_write_ratio_match_their_definitions():
    w = torch.randn(16, 40, generator=torch.Generator().manual_seed(0))
    g = gram(w)
    torch.testing.assert_close(g, (w @ w.T).double() / w.double().norm() ** 2)
    d = torch.randn(16, generator=torch.Generator().manual_seed(1))
    d = d / d.norm()
    assert write_ratio(g, d) == pytest.approx(float((d @ w).norm() * 16**0.5 / w.norm()), rel=1e-5)
    # the mean of the squared ratio over an orthonormal basis is 1
    assert sum(write_ratio(g, e) ** 2 for e in torch.eye(16)) / 16 == pytest.approx(1.0, rel=1e-6)


def test_the_null_direction_of_an_ablated_model_is_the_ablated_direction():
    model, r = ablated_tiny()
    arch = architecture_map(model)
    null = null_direction(writer_gram(g for _, g in writer_grams(model, arch).values()))
    assert null.found and null.isolation < 1e-6
    assert abs(float(null.vector @ r)) > 0.9999
    grams = writer_grams(model, arch)
    assert max(layer_profile(grams, r).values()) < 1e-3


def test_an_ordinary_model_has_no_null_direction():
    model = tiny_model("llama")
    null = null_direction(writer_gram(g for _, g in writer_grams(model, architecture_map(model)).values()))
    assert not null.found and null.isolation > ISOLATED


def test_a_partial_ablation_leaves_the_other_writers_and_no_isolated_direction():
    """Abliterated in the MLPs only: the attention writers still write along r, so nothing is
    isolated, and the profile shows which layers lost it (the MLPs' share, not zero)."""
    model = tiny_model("llama")
    r = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(5))
    apply_edit(model, Direction(r), "ablate", 1.0, targets=("mlp",))
    grams = writer_grams(model, architecture_map(model))
    down = {k: v for k, v in grams.items() if "down_proj" in k}
    assert max(layer_profile(down, r / r.norm()).values()) < 1e-3
    assert min(v for k, v in layer_profile(grams, r / r.norm()).items() if k is not None) > 0.05
    assert find_ablation(grams) is None  # an MLP alone is no layer: attention still writes r


def test_a_direction_ablated_from_some_layers_is_found_there():
    model = tiny_model("llama")
    r = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(5))
    apply_edit(model, Direction(r), "ablate", 1.0, layers=(0, 2))
    grams = writer_grams(model, architecture_map(model))
    assert not null_direction(writer_gram(g for _, g in grams.values())).found
    ablation = find_ablation(grams)
    assert ablation is not None and ablation.layers == (0, 2) and abs(float(ablation.vector @ r / r.norm())) > 0.999


def test_system_prompts_are_builtin_or_text():
    assert system_prompt("builtin:plain") == SYSTEM_PROMPTS["plain"]
    assert system_prompt("Be safe.") == "Be safe."
    with pytest.raises(RosiError, match="builtin:plain"):
        system_prompt("builtin:nope")


def test_realign_options_are_checked():
    options = RealignOptions()
    assert options.extract.form == REALIGN_FORM and options.extract.form.spec.samples and options.extract.form.null_space
    assert options.extract.system_prompt == SYSTEM_PROMPTS["plain"]
    args = build_parser().parse_args(["realign", "MODEL", "--out", "OUT"])  # the CLI's defaults are the library's
    from_cli = _realign_options(args, "checkpoint")
    assert from_cli == options and from_cli.extract.form == REALIGN_FORM
    assert from_cli.strength.bisect == REALIGN_BISECT > 0 and from_cli.strength.grid == REALIGN_GRID
    # realign measures its few-point harmless budget on every validation prompt (one prompt of
    # rosi run's 32 is 3.1 points); rosi run keeps its 32 per set
    prompts = _prompts(args)
    assert len(prompts.val_harmless) == len(builtin("harmless", "val")) >= 100
    assert len(prompts.val_harmful) == len(builtin("harmful", "val"))
    assert len(_prompts(build_parser().parse_args(["run", "MODEL", "--out", "OUT"])).val_harmless) == DEFAULT_N_VAL
    with pytest.raises(RosiError, match="direction source"):
        RealignOptions(direction="somewhere")
    with pytest.raises(RosiError, match="grid"):
        RealignOptions(strength=StrengthOptions(grid=(1.0, float("nan"))))
    with pytest.raises(RosiError, match="--bisect"):
        RealignOptions(strength=StrengthOptions(bisect=9))


# --- the planted model -------------------------------------------------------------------------


def planted_loaded(ablate: bool):
    u = planted.unit_vector(0)
    model = planted.model(u)
    model.generation_config = T.GenerationConfig(eos_token_id=2, pad_token_id=0)
    if ablate:
        apply_edit(model, Direction(u), "ablate", 1.0, targets=("attention", "embedding"))
    return LoadedModel(model, planted.tokenizer(), ModelSource("planted", "memory", "", "0" * 64)), u


def sets():
    h, b = PromptSet(tuple(planted.HARMFUL), name="h"), PromptSet(tuple(planted.HARMLESS), name="b")
    return PromptSets(harmful=h, harmless=b, val_harmful=h, val_harmless=b)


def log_odds(loaded, prompts):
    fmt = ChatFormat(loaded.tokenizer)
    return refusal_log_odds(last_logprobs(loaded.model, fmt, prompts), refusal_token_ids(loaded.tokenizer)).mean().item()


@pytest.mark.parametrize("method", ["probe", "gate"])
def test_realign_re_adds_the_ablated_planted_direction(tmp_path, method):
    loaded, u = planted_loaded(ablate=True)
    before_h, before_b = log_odds(loaded, planted.HARMFUL), log_odds(loaded, planted.HARMLESS)
    assert before_h < 0  # ablated: "bomb" no longer makes the model refuse
    null, ablation = find_null(loaded)
    assert null.found and abs(float(null.vector @ u)) > 0.999 and abs(float(ablation.vector @ u)) > 0.999
    options = RealignOptions(
        extract=realign_extract(form=EditForm(method, "all"), progress=False),
        strength=realign_strength(compare_paper=False),
        measure=MeasureOptions(new_tokens=4),
    )
    prompts = sets()
    if method == "gate":  # fit on single prompts: harmful to 1, harmless (and look-alike) to 0
        prompts = replace(prompts, lookalike=prompts.harmless, val_lookalike=prompts.harmless)
    report = realign(loaded, tmp_path / "out", prompts, options)
    assert "null direction" in report.direction["selected_by"]
    after = Direction.load(tmp_path / "out" / "direction.safetensors")
    assert float(after.unit @ u) > 0.999  # the sign chosen is the one that refuses
    assert after.layer == int(GAP_DEPTH * 4)
    gain_h = log_odds(loaded, planted.HARMFUL) - before_h
    gain_b = log_odds(loaded, planted.HARMLESS) - before_b
    assert gain_h > 1 and gain_b < 0.25 * gain_h  # the edit fires where the input holds "bomb"
    assert [r.label.split()[0] for r in report.rates] == ["base", method]
    assert report.strength in REALIGN_GRID


def test_realign_refuses_a_null_direction_where_none_was_ablated(tmp_path):
    loaded, _ = planted_loaded(ablate=False)
    # the planted model's zero writers leave many directions unwritten: not one isolated direction
    with pytest.raises(RosiError, match="no direction was taken out"):
        realign(loaded, tmp_path / "out", sets(), RealignOptions(extract=realign_extract(progress=False), direction="null"))
    model, _ = ablated_tiny()
    tok = planted.tokenizer()
    tiny = LoadedModel(model, tok, ModelSource("tiny", "memory", "", "0" * 64))
    with pytest.raises(RosiError, match="use --method rosi or probe or gate or surgical") as refused:
        realign(tiny, tmp_path / "out", sets(), RealignOptions(extract=realign_extract(form=EditForm("scale"), progress=False)))
    named = str(refused.value).rsplit("use --method ", 1)[1].split(" or ")
    assert set(named) == {name for name, m in METHODS.items() if m.survives_ablation} and "scale" not in named


def test_extraction_reads_candidates_with_the_system_prompt_and_writers_without_it():
    loaded, _ = planted_loaded(ablate=False)
    s = sets()
    sp = "Sure bake"
    options = realign_extract(form=EditForm("probe", "all"), system_prompt=sp, layer=1, position=-1, progress=False)
    result = extract(loaded, s, options)
    with_sp, plain = ChatFormat(loaded.tokenizer, sp), ChatFormat(loaded.tokenizer)
    n_pos = len(plain.post_instruction_ids())
    expected_direction = activations_for(loaded, with_sp, s, n_pos, options, writers=False).direction_at(1, -1)
    torch.testing.assert_close(result.direction.vector, expected_direction)
    expected_writers = activations_for(loaded, plain, s, n_pos, options)
    for name, value in expected_writers.harmful.writer_inputs.items():
        torch.testing.assert_close(result.activations.harmful.writer_inputs[name], value)
    assert result.direction.metadata["scored_with_system_prompt"] == "false"
    both = extract(
        loaded,
        s,
        realign_extract(
            form=EditForm("probe", "all"), system_prompt=sp, layer=1, position=-1, progress=False, score_with_system_prompt=True
        ),
    )
    assert both.direction.metadata["scored_with_system_prompt"] == "true"
    with_sp_writers = activations_for(loaded, with_sp, s, n_pos, options)
    name = next(iter(with_sp_writers.harmful.writer_inputs))
    torch.testing.assert_close(both.activations.harmful.writer_inputs[name], with_sp_writers.harmful.writer_inputs[name])
