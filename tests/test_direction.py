"""The direction file format: round trip, foreign files, and every bad file."""

import pytest
import torch
from safetensors.torch import save_file

from rosi import Direction
from rosi.errors import DirectionError


def test_round_trip(tmp_path):
    d = Direction(torch.arange(1.0, 9.0), layer=14, position=-1, model="Qwen/Qwen2.5-0.5B-Instruct", metadata={"system_prompt": "Be safe."})
    d.save(tmp_path / "d.safetensors")
    back = Direction.load(tmp_path / "d.safetensors")
    assert torch.equal(back.vector, d.vector) and back.vector.dtype == torch.float32
    assert (back.layer, back.position, back.model, back.metadata) == (14, -1, "Qwen/Qwen2.5-0.5B-Instruct", {"system_prompt": "Be safe."})
    torch.testing.assert_close(back.unit.norm(), torch.tensor(1.0))


def test_foreign_file_with_only_the_tensor_is_accepted(tmp_path):
    save_file({"direction": torch.ones(6, dtype=torch.float16)}, str(tmp_path / "d.safetensors"))
    d = Direction.load(tmp_path / "d.safetensors")
    assert d.size == 6 and d.vector.dtype == torch.float32 and d.layer is None and d.model is None


@pytest.mark.parametrize(
    "tensors,match",
    [
        ({"refusal_dir": torch.ones(4)}, "no tensor named 'direction'.*refusal_dir"),
        ({"direction": torch.zeros(4)}, "zero vector"),
        ({"direction": torch.tensor([1.0, float("nan"), 0.0])}, "non-finite"),
        ({"direction": torch.tensor([1.0, float("inf")])}, "non-finite"),
        ({"direction": torch.ones(2, 3)}, "must be a vector"),
    ],
)
def test_bad_files(tmp_path, tensors, match):
    save_file(tensors, str(tmp_path / "d.safetensors"))
    with pytest.raises(DirectionError, match=match):
        Direction.load(tmp_path / "d.safetensors")


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(DirectionError, match="does not exist"):
        Direction.load(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(DirectionError, match="not a readable safetensors file"):
        Direction.load(tmp_path / "junk.safetensors")


def test_bad_layer_metadata(tmp_path):
    save_file({"direction": torch.ones(3)}, str(tmp_path / "d.safetensors"), metadata={"layer": "middle"})
    with pytest.raises(DirectionError, match="'layer' must be an integer"):
        Direction.load(tmp_path / "d.safetensors")


def test_positions_are_integers():
    with pytest.raises(DirectionError, match="position must be an integer"):
        Direction(torch.ones(3), position="-1")
    with pytest.raises(DirectionError, match="'position' must be an integer"):
        Direction.from_info(torch.ones(3), {"position": "last"})
