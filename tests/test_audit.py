"""rosi audit: the change analysis on known rank-1 and rank-2 edits, the verdicts, the CLI."""

import json

import pytest
import torch

import planted
from conftest import tiny_model
from rosi import Direction, apply_edit
from rosi.audit import audit
from rosi.audit.changes import matrix_change, shared_direction, write_change
from rosi.cli import main
from rosi.model.loading import LoadedModel, ModelSource

ALL = ("attention", "mlp", "embedding")


def unit(n, seed):
    v = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return v / v.norm()


def test_matrix_change_finds_the_rank_and_the_left_direction():
    w = torch.randn(24, 60, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s, t = unit(24, 1), unit(24, 2)
    one = matrix_change("w", 0, w, w + torch.outer(s, unit(60, 3)))
    assert one.rank == 1 and abs(float(one.left @ s)) == pytest.approx(1.0, abs=1e-9)
    two = matrix_change("w", 0, w, w + torch.outer(s, unit(60, 3)) + 0.5 * torch.outer(t, unit(60, 4)))
    assert two.rank == 2
    assert matrix_change("w", 0, w, w.clone()) is None
    # rounding is not rank: a bf16 round trip of a rank-one edit stays rank one
    edited = (w + torch.outer(s, (s @ w))).to(torch.bfloat16).double()
    assert matrix_change("w", 0, w.to(torch.bfloat16).double(), edited).rank == 1


def test_shared_direction_and_write_change():
    s = unit(24, 1)
    changes, pairs = [], []
    for i in range(4):
        w = torch.randn(24, 30 + i, generator=torch.Generator().manual_seed(10 + i), dtype=torch.float64)
        ablated = w - torch.outer(s, s @ w)
        changes.append(matrix_change(f"w{i}", i, w, ablated))
        pairs.append((w, ablated))
    shared = shared_direction(changes)
    assert shared.share == pytest.approx(1.0, abs=1e-9) and abs(float(shared.vector @ s)) == pytest.approx(1.0, abs=1e-9)
    assert all(write_change(w, a, shared.vector) < 1e-9 for w, a in pairs)  # removed
    w = pairs[0][0]
    assert write_change(w, w + 2 * torch.outer(s, s @ w), s) == pytest.approx(3.0)  # scale beta 2: 1 + beta


def loaded_tiny(model, name):
    return LoadedModel(model, planted.tokenizer(), ModelSource(name, "memory", "", "0" * 64))


@pytest.fixture
def models():
    base = tiny_model("llama")
    r = unit(base.config.hidden_size, 7).float()
    ablated = tiny_model("llama")
    apply_edit(ablated, Direction(r), "ablate", 1.0, targets=ALL)
    scaled = tiny_model("llama")
    apply_edit(scaled, Direction(r), "scale", 3.0)
    return loaded_tiny(base, "base"), loaded_tiny(ablated, "ablated"), loaded_tiny(scaled, "scaled"), r


def test_audit_flags_the_ablated_model_and_not_the_base(models):
    base, ablated, scaled, r = models
    d = Direction(r)
    flagged = audit(ablated, direction=d, progress=False)
    assert flagged.flagged and flagged.verdicts[0].startswith("ABLATED: the writers of layers 0-2")
    assert flagged.profiles[0].layers_below(0.1) == [0, 1, 2]
    clean = audit(base, direction=d, progress=False)
    assert not clean.flagged and clean.verdicts[0].startswith("not ablated")
    amplified = audit(scaled, direction=d, progress=False)
    assert not amplified.flagged and any(v.startswith("AMPLIFIED") for v in amplified.verdicts)  # 1 + beta = 4x along r


def test_audit_against_the_base_tells_removal_from_addition(models):
    base, ablated, scaled, r = models
    removed = audit(ablated, base, Direction(r), progress=False)
    assert removed.base["changed_matrices"] == 7 and removed.base["ranks"] == [1]  # 3 layers x 2 writers + the embedding
    assert removed.base["effect"] == "removes" and removed.base["shared_direction_share"] > 0.999
    assert removed.base["cosine_with_least_written"] > 0.999
    added = audit(scaled, base, Direction(r), progress=False)
    assert added.base["effect"] == "adds to" and added.base["changed_matrices"] == 6
    assert any("rank 1" in v for v in added.verdicts)
    assert removed.firing is None  # a removal is not probed for where it adds
    assert added.verdicts[-1].startswith("where it fires")
    if added.firing is not None:  # measured (a random tiny model may not push its harmful prompts at all)
        assert set(added.firing["sets"]) == {"harmful", "harmless", "lookalike"}
    same = audit(base, loaded_tiny(tiny_model("llama"), "copy"), Direction(r), progress=False)
    assert same.base["changed_matrices"] == 0


def test_rank_two_edits_are_reported_as_such(models):
    base, _, _, r = models
    m = tiny_model("llama")
    apply_edit(m, Direction(r), "scale", 1.0)
    apply_edit(m, Direction(unit(r.numel(), 9).float()), "scale", 1.0)
    result = audit(loaded_tiny(m, "two"), base, Direction(r), progress=False)
    assert result.base["ranks"] == [2] and result.base["shared_direction_share"] < 0.9


def test_audit_cli_writes_json_and_a_plot(tmp_path, tokenizer_dir, capsys):
    from conftest import save_tiny

    save_tiny("llama", tmp_path / "base", tokenizer_dir=tokenizer_dir)
    r = unit(32, 7).float()
    d = Direction(r)
    d.save(tmp_path / "d.safetensors")
    assert (
        main(
            [
                "edit",
                str(tmp_path / "base"),
                "--direction",
                str(tmp_path / "d.safetensors"),
                "--method",
                "ablate",
                "--targets",
                "attention,mlp,embedding",
                "--out",
                str(tmp_path / "abl"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    out = tmp_path / "audit"
    assert main(["audit", str(tmp_path / "abl"), "--base", str(tmp_path / "base"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ABLATED" in text and "removes" in text and "edit record: matches the weights" in text
    data = json.loads((out / "audit.json").read_text())
    assert data["flagged"] and data["base"]["effect"] == "removes"
    assert (out / "profile.png").stat().st_size > 1000
    # the folder is rosi's: --overwrite replaces it; a foreign folder is refused
    assert main(["audit", str(tmp_path / "abl"), "--out", str(out), "--overwrite"]) == 0
    assert main(["audit", str(tmp_path / "abl"), "--out", str(tmp_path / "base"), "--overwrite"]) != 0


def test_audit_flags_a_direction_ablated_from_some_layers_only():
    m = tiny_model("llama")
    r = unit(m.config.hidden_size, 7).float()
    apply_edit(m, Direction(r), "ablate", 1.0, layers=(1, 2))
    result = audit(loaded_tiny(m, "partly"), direction=Direction(r), progress=False)
    assert result.flagged and result.verdicts[0].startswith("PARTLY ABLATED: the writers of layers 1-2 write")
    assert result.null["ablation"]["layers"] == [1, 2]


def test_audit_against_the_base_finds_where_an_edit_fires_from_the_weights_alone():
    """The planted look-alike model and a gate edit of it: the audit reads the push from the
    weight change alone, and it is the edit record's own (the change is s_hat r^T)."""
    from rosi.edit.firing import record_reads, token_pushes
    from rosi.edit.methods import EditForm
    from rosi.workflows.extract import extract
    from rosi.workflows.options import ExtractOptions
    from test_gate import lookalike_loaded, lookalike_sets

    base, _ = lookalike_loaded()
    edited, _ = lookalike_loaded()
    form = EditForm("gate", "all", ridge=1e-3)
    extraction = extract(base, lookalike_sets(), ExtractOptions(form=form, layer=1, position=-1, progress=False))
    choice = extraction.choose_writers(base, form)
    record = apply_edit(edited.model, extraction.direction, "gate", 2.0, writers=choice.writers, reads=choice.reads)
    result = audit(edited, base, extraction.direction, progress=False)
    assert result.base["effect"] == "adds to" and result.firing is not None
    assert result.verdicts[-1].startswith("where it fires")
    from rosi.audit.audit import FIRING_PROMPTS
    from rosi.model.chat import DECIDING, ChatFormat
    from rosi.prompts import builtin

    harmful = list(builtin("harmful", "val").take(FIRING_PROMPTS).instructions)
    values, labels = token_pushes(base.model, ChatFormat(base.tokenizer), record_reads(base.model, record), harmful)
    deciding = float(torch.quantile(values[labels == DECIDING].double(), 0.5))
    assert result.firing["reference"] == pytest.approx(abs(deciding), rel=1e-4)  # the record's own push, oriented
