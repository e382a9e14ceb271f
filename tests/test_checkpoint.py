"""Saving: a standard checkpoint that plain transformers reloads with the same logits, written atomically."""

import json
import subprocess
import sys

import pytest
import torch
import transformers as T

from conftest import ARCHS, save_tiny, tiny_model
from rosi import apply_edit, load, save_checkpoint
from rosi._fs import hash_files
from rosi.edit.record import EditRecord
from rosi.errors import OutputExistsError
from rosi.export.checkpoint import MANIFEST, RECORD_FILE
from test_edit import random_direction

IDS = torch.tensor([[5, 9, 17, 3, 60, 2, 44]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("arch", ARCHS)
def test_save_then_plain_reload_gives_identical_logits(tmp_path, arch):
    model = tiny_model(arch)
    record = apply_edit(model, random_direction(), "rosi", 30.0, targets=("attention", "mlp", "embedding"), untie_embeddings=True)
    save_checkpoint(model, tmp_path / "out", record=record)
    reloaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert torch.equal(logits(reloaded), logits(model))
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["edit"]["matrices_edited"] == len(record.matrices)
    assert EditRecord.load(tmp_path / "out" / RECORD_FILE).summary() == record.summary()


def test_reload_in_a_process_that_never_imports_rosi(tmp_path, tokenizer_dir):
    save_tiny("llama", tmp_path / "base", tokenizer_dir=tokenizer_dir)
    loaded = load(tmp_path / "base", device="cpu")
    apply_edit(loaded.model, random_direction(), "scale", 0.5)
    save_checkpoint(loaded, tmp_path / "out")
    torch.save(logits(loaded.model), tmp_path / "expected.pt")
    script = (
        "import sys, torch, transformers as T\n"
        f"m = T.AutoModelForCausalLM.from_pretrained({str(tmp_path / 'out')!r}).eval()\n"
        f"tok = T.AutoTokenizer.from_pretrained({str(tmp_path / 'out')!r})\n"
        "assert tok.chat_template, 'chat template lost'\n"
        "assert 'rosi' not in sys.modules\n"
        f"with torch.no_grad(): got = m(input_ids=torch.tensor({IDS.tolist()})).logits\n"
        f"assert torch.equal(got, torch.load({str(tmp_path / 'expected.pt')!r})), 'logits differ'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_manifest_is_complete(tmp_path, tokenizer_dir):
    save_tiny("qwen2", tmp_path / "base", tokenizer_dir=tokenizer_dir)
    loaded = load(tmp_path / "base", device="cpu")
    record = apply_edit(loaded.model, random_direction(), "rosi", 12.0)
    save_checkpoint(loaded, tmp_path / "out", record=record)
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", MANIFEST, RECORD_FILE} <= files
    m = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert m["tool"] == "rosi" and m["rosi_version"]
    assert m["base_model"]["weights_sha256"] == hash_files([tmp_path / "base" / "model.safetensors"])
    assert m["base_model"]["model_type"] == "qwen2" and m["base_model"]["source"] == "folder"
    edit = m["edit"]
    assert (edit["method"], edit["strength"], edit["targets"]) == ("rosi", 12.0, ["attention", "mlp"])
    assert edit["matrices_edited"] == 6 and edit["matrices_by_kind"] == {"attention": 3, "mlp": 3}
    assert edit["direction"]["layer"] == "1" and edit["direction"]["position"] == "-1" and edit["direction"]["model"] == "tiny"


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    model = tiny_model("llama")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="already exists"):
        save_checkpoint(model, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    # --overwrite replaces only an output rosi wrote: never a folder of somebody's files
    with pytest.raises(OutputExistsError, match="not an? .*rosi wrote"):
        save_checkpoint(model, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    save_checkpoint(model, tmp_path / "rosi_out")
    (tmp_path / "rosi_out" / "stale.txt").write_text("from before")
    save_checkpoint(model, tmp_path / "rosi_out", overwrite=True)
    assert not (tmp_path / "rosi_out" / "stale.txt").exists() and (tmp_path / "rosi_out" / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "rosi_out"]


def test_input_folder_is_never_the_output(tmp_path):
    save_tiny("llama", tmp_path / "base")
    loaded = load(tmp_path / "base", device="cpu")
    with pytest.raises(OutputExistsError, match="the input"):
        save_checkpoint(loaded, tmp_path / "base", overwrite=True)


def test_failure_during_save_leaves_nothing_and_input_unchanged(tmp_path, tokenizer_dir, monkeypatch):
    save_tiny("llama", tmp_path / "base", tokenizer_dir=tokenizer_dir)
    before = hash_files(sorted((tmp_path / "base").iterdir()))
    loaded = load(tmp_path / "base", device="cpu")
    record = apply_edit(loaded.model, random_direction(), "rosi", 5.0)

    def boom(self, *a, **k):
        raise RuntimeError("disk full")

    # The weights are already written when the tokenizer fails.
    monkeypatch.setattr(type(loaded.tokenizer), "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(loaded, tmp_path / "out", record=record)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]
    assert hash_files(sorted((tmp_path / "base").iterdir())) == before


def test_failure_during_overwrite_keeps_the_old_output(tmp_path, monkeypatch):
    model = tiny_model("llama")
    save_checkpoint(model, tmp_path / "out")
    old = hash_files(sorted((tmp_path / "out").iterdir()))
    monkeypatch.setattr(EditRecord, "save", lambda self, path: (_ for _ in ()).throw(OSError("no space")))
    record = apply_edit(model, random_direction(), "rosi", 5.0)
    with pytest.raises(OSError):
        save_checkpoint(model, tmp_path / "out", record=record, overwrite=True)
    assert hash_files(sorted((tmp_path / "out").iterdir())) == old
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_model_edited_twice_in_memory_is_saved_with_both_edits(tmp_path, tokenizer_dir):
    """Loaded in bfloat16 from a float32 checkpoint, a single edit is streamed from the files in
    float32; with two edits in memory the record holds only the last, so the model in memory is
    saved (and a format that holds one edit is refused)."""
    from conftest import save_tiny
    from rosi import Direction, apply_edit, load
    from rosi.errors import RosiError
    from rosi.export.formats import Edited, save

    save_tiny("llama", tmp_path / "base", tokenizer_dir=tokenizer_dir)
    loaded = load(str(tmp_path / "base"), dtype="bfloat16")
    g = torch.Generator().manual_seed(4)
    apply_edit(loaded.model, Direction(torch.randn(32, generator=g)), "ablate", 1.0, targets=("attention", "mlp", "embedding"))
    record = apply_edit(loaded.model, Direction(torch.randn(32, generator=g)), "scale", 1.0)
    save(Edited(loaded, record), tmp_path / "out", "checkpoint", False)
    again = load(str(tmp_path / "out"), dtype="bfloat16")
    saved = dict(again.model.named_parameters())
    for name, p in loaded.model.named_parameters():
        assert torch.equal(saved[name], p), name
    with pytest.raises(RosiError, match="holds 2 edits"):
        save(Edited(loaded, record), tmp_path / "out.patch", "patch", False)
