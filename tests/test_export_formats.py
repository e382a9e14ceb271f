"""The output-format registry owns each format's whole life: every one of the five saves and
verifies through it (one Verification type), patches apply and checkpoints revert through it,
``rosi.json`` is written by the export layer only, and ``rosi ship`` commands only forward."""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import save_tiny
from rosi import Direction, EditRecord, apply_edit, load
from rosi.cli import main
from rosi.edit.methods import METHODS
from rosi.export import formats
from rosi.export.verification import Verification

SRC = Path(formats.__file__).resolve().parents[1]
LAYERS = 3


def _tiny_gguf(model: torch.nn.Module, path: Path) -> Path:
    """A llama GGUF file of ``model``'s weights in float32 (enough for rosi to edit and verify it)."""
    import gguf

    from rosi.export.gguf import GGUFError, gguf_name

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_block_count(LAYERS)
    for name, tensor in model.state_dict().items():
        try:
            writer.add_tensor(gguf_name(name, "llama", LAYERS), tensor.float().numpy())
        except GGUFError:
            continue
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def world(tmp_path, tokenizer_dir):
    """A tiny llama base (a checkpoint folder and a .gguf of it), a direction, and the base loaded and edited in memory."""
    base = tmp_path / "base"
    model = save_tiny("llama", base, tokenizer_dir=tokenizer_dir)
    _tiny_gguf(model, tmp_path / "base.gguf")
    direction = Direction(torch.randn(32, generator=torch.Generator().manual_seed(4)) * 2, layer=1, position=-1, model="tiny")
    direction.save(tmp_path / "d.safetensors")
    loaded = load(str(base), device="cpu")
    record = apply_edit(loaded.model, direction, "scale", 1.5)
    return tmp_path, loaded, record


def _from_gguf(loaded, path: Path):
    """The model as if loaded from the .gguf of its weights (what --format gguf edits in place)."""
    from rosi._fs import hash_files

    return replace(loaded, source=replace(loaded.source, spec=str(path), kind="gguf", weights_sha256=hash_files([path])))


# What each format's verify takes as the base: a checkpoint folder, or the .gguf it was made from.
OUTS = {"checkpoint": ("ckpt", "base"), "lora": ("lora", "base"), "gguf": ("e.gguf", "base.gguf"), "gguf-lora": ("a.gguf", "base.gguf")}
OUTS["patch"] = ("e.patch", "base")


@pytest.mark.parametrize("fmt", list(formats.FORMATS))
def test_every_format_saves_and_verifies_through_the_registry(world, fmt):
    tmp, loaded, record = world
    assert set(OUTS) == set(formats.FORMATS)
    name, base = OUTS[fmt]
    if fmt == "gguf":  # a gguf is edited in place: the model must come from a .gguf
        loaded = _from_gguf(loaded, tmp / "base.gguf")
    out = formats.save(formats.Edited(loaded, record), tmp / name, fmt, False)
    assert out.exists() and formats.output_format(out).name == fmt
    for against in (None, str(tmp / base)):
        result = formats.verify(out, against)
        assert isinstance(result, Verification), type(result)
        assert (result.format, result.method, result.strength, result.base) == (fmt, "scale", 1.5, against)
        assert result.matrices == len(record.matrices) and result.checks and result.ok, result.report()
        assert json.loads(json.dumps(result.to_json()))["ok"] is True
        assert result.report().startswith(f"rosi: {out}: {fmt}: scale at strength 1.5 on {len(record.matrices)} matrices")


def test_an_edited_gguf_holds_the_edit_the_model_in_memory_has(world):
    import gguf

    tmp, loaded, record = world
    out = formats.save(formats.Edited(_from_gguf(loaded, tmp / "base.gguf"), record), tmp / "e.gguf", "gguf", False)
    tensors = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(out).tensors}
    want = loaded.model.state_dict()["model.layers.1.mlp.down_proj.weight"].numpy()
    np.testing.assert_allclose(tensors["blk.1.ffn_down.weight"].reshape(want.shape), want, rtol=1e-5, atol=1e-6)


def test_verify_fails_where_an_output_is_not_its_record(world):
    import gguf
    from safetensors.torch import load_file, save_file

    tmp, loaded, record = world
    formats.save(formats.Edited(loaded, record), tmp / "e.patch", "patch", False)
    other = tmp / "other"
    save_tiny("llama", other)
    weights = load_file(other / "model.safetensors")
    weights["model.layers.1.mlp.down_proj.weight"] += 0.1
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    result = formats.verify(tmp / "e.patch", str(other))
    assert not result.ok and "differs from the one the patch was made for" in result.report()
    # a GGUF adapter whose lora_b is not the direction
    formats.save(formats.Edited(loaded, record), tmp / "a.gguf", "gguf-lora", False)
    reader = gguf.GGUFReader(tmp / "a.gguf", "r+")
    b = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight.lora_b")
    b.data[...] *= 2
    reader.data.flush()
    result = formats.verify(tmp / "a.gguf")
    assert not result.ok and "blk.0.ffn_down.weight" in [c.name for c in result.checks if not c.ok]


def test_a_patch_is_made_from_files_applied_and_reverted_through_the_registry(world):
    tmp, loaded, record = world
    direction = Direction.load(tmp / "d.safetensors")
    plan = formats.Planned(str(tmp / "base"), direction, METHODS["scale"], 1.5, ("attention", "mlp"), None)
    assert formats.edit_from_files("checkpoint", plan, tmp / "x") is None  # a checkpoint is saved from the loaded model
    assert formats.edit_from_files("patch", replace(plan, method=METHODS["probe"]), tmp / "x") is None  # a read-out form needs the model
    done = formats.edit_from_files("patch", plan, tmp / "e.patch")
    assert done is not None and done.startswith("scale patch (strength 1.5)") and formats.verify(tmp / "e.patch", str(tmp / "base")).ok
    applied = formats.apply(tmp / "e.patch", str(tmp / "base"), tmp / "applied")
    assert len(applied.matrices) == len(record.matrices) and formats.verify(tmp / "applied", str(tmp / "base")).ok
    removed = formats.revert(tmp / "applied", tmp / "reverted")
    assert removed.method == "scale" and (tmp / "reverted" / "model.safetensors").is_file()


def test_every_rosi_json_is_one_shape_written_by_export(world):
    """The manifests of a saved checkpoint, an exported adapter, an applied patch and a reverted
    checkpoint all come from rosi.export.checkpoint: who wrote them, when, and what."""
    from rosi.export.checkpoint import read_manifest

    tmp, loaded, record = world
    formats.save(formats.Edited(loaded, record), tmp / "ckpt", "checkpoint", False)
    assert main(["export", "lora", str(tmp / "ckpt"), "--out", str(tmp / "lora")]) == 0
    assert main(["patch", str(tmp / "ckpt"), "--out", str(tmp / "e.patch")]) == 0
    assert main(["apply", str(tmp / "e.patch"), str(tmp / "base"), "--out", str(tmp / "applied")]) == 0
    assert main(["revert", str(tmp / "ckpt"), "--out", str(tmp / "reverted")]) == 0
    for folder, key in (("ckpt", "edit"), ("lora", "edit"), ("applied", "patch"), ("reverted", "edit_removed")):
        manifest = read_manifest(tmp / folder)
        assert manifest is not None and {"tool", "rosi_version", "created", key} <= set(manifest), folder
    assert read_manifest(tmp / "lora")["format"] == "lora" and read_manifest(tmp / "lora")["base_model"]["spec"] == str(tmp / "base")
    assert EditRecord.load(tmp / "lora" / "rosi_edit.safetensors").method == "scale"


def test_only_the_export_layer_writes_rosi_json():
    """No module outside rosi.export names the manifest file or its writers (the foundation's
    ``is_rosi_folder`` reads the name as its default marker)."""
    writers = {"MANIFEST", "build_manifest", "new_manifest", "write_manifest"}
    found = []
    for path in SRC.rglob("*.py"):
        if path.is_relative_to(SRC / "export") or path == SRC / "_fs.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value == "rosi.json":
                found.append(f"{path.name}:{node.lineno}: 'rosi.json'")
            elif isinstance(node, ast.Name | ast.alias) and getattr(node, "id", getattr(node, "name", None)) in writers:
                found.append(f"{path.name}:{node.lineno}: {getattr(node, 'id', getattr(node, 'name', ''))}")
    assert not found, found


def test_the_ship_commands_only_forward_to_the_registry():
    """cli/ship.py holds no format logic: the export layer reached only through the registry module."""
    ship = SRC / "cli" / "ship.py"
    assert len(ship.read_text(encoding="utf-8").splitlines()) < 150
    imported = set()
    for node in ast.walk(ast.parse(ship.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rosi.export"):
            imported |= {f"{node.module}.{a.name}" for a in node.names}
    assert imported == {"rosi.export.formats"}, imported
