"""The safety direction as a value with a file format.

A direction file is a safetensors file with one float32 tensor named ``direction`` of shape
``[hidden_size]`` (any norm: edits normalise it) and string metadata, at least ``layer``,
``position`` and ``model``. Files written by other tools are accepted as long as they hold that
tensor; missing metadata is read as unknown.

A position is the index of the token the direction was read at, counted from the end of the
prompt among the post-instruction tokens: ``-1`` is the last prompt token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from rosi._fs import atomic_file, regular_file
from rosi.errors import DirectionError, RosiError

TENSOR_NAME = "direction"
MAX_SIZE = 1 << 20  # values: far beyond any hidden size, and a bound on what a foreign file makes rosi read
FORMAT = "rosi-direction/1"


@dataclass(frozen=True)
class Direction:
    vector: torch.Tensor  # float32 [hidden_size], as extracted (not normalised)
    layer: int | None = None  # residual stream after this layer (0-based); None if unknown
    position: int | None = None  # the token it was read at, counted from the prompt's end: -1 = last; None if unknown
    model: str | None = None  # the model it was extracted from
    metadata: dict[str, str] = field(default_factory=dict)  # anything else (system prompt, counts, ...)

    def __post_init__(self) -> None:
        v = self.vector
        if not isinstance(v, torch.Tensor) or v.ndim != 1:
            raise DirectionError(f"a direction must be a vector, got shape {tuple(getattr(v, 'shape', ()))}")
        if not torch.is_floating_point(v):
            raise DirectionError(f"a direction must hold floating-point values, got {v.dtype}")
        for key in ("layer", "position"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise DirectionError(f"a direction's {key} must be an integer or None, got {value!r}")
        v = v.detach().to(device="cpu", dtype=torch.float32).contiguous()
        if not torch.isfinite(v).all():
            raise DirectionError("the direction has non-finite values (NaN or inf, or beyond float32's range); re-extract it")
        norm = torch.linalg.vector_norm(v)
        if not norm > 0:
            raise DirectionError("the direction is the zero vector; re-extract it with prompts that differ")
        if not torch.isfinite(norm):
            raise DirectionError("the direction's length overflows float32; re-extract it")
        object.__setattr__(self, "vector", v)

    @property
    def size(self) -> int:
        return int(self.vector.shape[0])

    @property
    def unit(self) -> torch.Tensor:
        """``vector / |vector|`` (float32)."""
        unit: torch.Tensor = self.vector / torch.linalg.vector_norm(self.vector)
        return unit

    def check_size(self, hidden_size: int) -> None:
        if self.size != hidden_size:
            raise DirectionError(
                f"the direction has {self.size} values but the model's hidden size is {hidden_size}; "
                "use a direction extracted from this model"
            )

    def info(self) -> dict[str, str]:
        """All metadata as strings, as stored in the file."""
        out = {"format": FORMAT, "layer": _str(self.layer), "position": _str(self.position), "model": _str(self.model)}
        out.update(self.metadata)
        return out

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_file(path) as tmp:
            save_file({TENSOR_NAME: self.vector}, str(tmp), metadata=self.info())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Direction:
        path = Path(path)
        _direction_path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                names = list(f.keys())
                _check_kind(path, meta, names)
                if TENSOR_NAME not in names:
                    raise DirectionError(f"{path} has no tensor named {TENSOR_NAME!r} (it has: {sorted(names)[:5] or 'none'}); {FIX}")
                stored = f.get_slice(TENSOR_NAME)
                shape = stored.get_shape()
                if len(shape) != 1 or not 0 < shape[0] <= MAX_SIZE:
                    raise DirectionError(f"{path}: the direction must be a vector of at most {MAX_SIZE} values, got shape {tuple(shape)}")
                vector = f.get_tensor(TENSOR_NAME)
        except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
            raise DirectionError(f"{path} is not a readable safetensors file ({e}); {FIX}") from None
        return cls.from_info(vector, meta, where=str(path))

    @classmethod
    def from_info(cls, vector: torch.Tensor, info: dict[str, Any], where: str = "direction") -> Direction:
        """A direction from its vector and :meth:`info` (as stored in a direction file or an edit record)."""
        meta = {k: str(v) for k, v in info.items()}
        layer, position, model = (meta.pop(k, None) for k in ("layer", "position", "model"))
        meta.pop("format", None)
        return cls(
            vector,
            layer=_int_or_none(layer, "layer", where),
            position=_int_or_none(position, "position", where),
            model=None if model in (None, "unknown") else model,
            metadata=meta,
        )


FIX = "pass a file written by `rosi direction` (or the direction.safetensors of a `rosi run` output)"


def _direction_path(path: Path) -> None:
    """``path`` is a regular file; a folder says what it is, and which file inside it to pass."""
    if path.is_dir():
        inside = path / "direction.safetensors"
        if inside.is_file():
            raise DirectionError(f"direction file {path} is a folder (a rosi output?); pass the direction file inside it, {inside}")
        if (path / "rosi_edit.safetensors").is_file():
            raise DirectionError(f"{path} is a checkpoint folder rosi wrote, not a direction file; {FIX}")
    try:
        regular_file(path, "direction file")
    except RosiError as e:
        raise DirectionError(str(e)) from None


def _check_kind(path: Path, meta: dict[str, str], names: list[str]) -> None:
    """A rosi file of another kind (an edit record, a patch) or of another format version is named as such."""
    if "rosi_patch" in meta or "rosi_edit" in meta:
        kind = "a patch" if "rosi_patch" in meta else "an edit record"
        raise DirectionError(f"{path} is {kind}, not a direction file; {FIX}")
    tag = meta.get("format")
    if tag is not None and tag.startswith("rosi-") and tag != FORMAT:
        raise DirectionError(f"{path} is a rosi file of format {tag!r}, not a direction file ({FORMAT}); {FIX}")
    if TENSOR_NAME not in names and len(names) > 1:
        raise DirectionError(
            f"{path} holds {len(names)} tensors and none named {TENSOR_NAME!r} (a model's weights?), not a direction; {FIX}"
        )


def _str(value: object) -> str:
    return "unknown" if value is None else str(value)


def _int_or_none(text: str | None, key: str, where: str) -> int | None:
    if text is None or text in ("", "unknown"):
        return None
    try:
        return int(text)
    except ValueError:
        raise DirectionError(f"{where}: metadata {key!r} must be an integer, got {text!r}") from None


def is_direction_file(path: Path) -> bool:
    """A direction file rosi wrote (its metadata names the format): what ``--overwrite`` may replace."""
    if not Path(path).is_file():  # a folder, or a pipe that would block the read
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError):
        return False
