"""The edit record: what an edit did to which matrices, enough to describe, save and revert it.

Saved as one safetensors file (``rosi_edit.safetensors`` in every checkpoint rosi writes): the
direction, every right factor (``right/<parameter name>``), and the rest as JSON metadata. A
rank-two edit (``surgical``) adds its second direction (``second_direction``) and each matrix's
second right factor (``right2/<parameter name>``): ``W' = W + outer(s_hat, right) + outer(f_hat, right2)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rosi._fs import atomic_file
from rosi.direction.vector import Direction
from rosi.model.writers import Layout, WriterKind

RECORD_FORMAT = "rosi-edit/1"


@dataclass(frozen=True)
class MatrixEdit:
    name: str
    kind: WriterKind
    layout: Layout
    layer: int | None
    right: torch.Tensor  # float32 right factor on the CPU: W' = W + outer(s_hat, right) in [out, in] layout
    right2: torch.Tensor | None = None  # rank-two edits: the factor along the record's second direction


@dataclass
class EditRecord:
    """What an edit did, enough to describe, save and revert it."""

    method: str
    strength: float
    direction: Direction
    targets: tuple[str, ...]
    layers: tuple[int, ...] | None
    matrices: tuple[MatrixEdit, ...]
    untied_embeddings: bool = False
    # The writers were narrowed to a chosen subset (``apply_edit(writers=...)``), e.g. by
    # :func:`rosi.edit.scope.select_writers`; ``matrices`` lists the ones edited.
    selected: bool = False
    # Bit-exact copies of the edited weights (only with keep_originals=True; never saved).
    originals: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)
    # Writers whose weights accelerate offloaded carry the edit as a forward hook (never saved).
    hooks: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # Rank-two edits: the second left direction (``surgical``: the false-refusal direction, unit).
    second: Direction | None = None

    @property
    def rank(self) -> int:
        return 1 if self.second is None else 2

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for m in self.matrices:
            kinds[m.kind.value] = kinds.get(m.kind.value, 0) + 1
        return {
            "method": self.method,
            "strength": self.strength,
            "targets": list(self.targets),
            "layers": None if self.layers is None else list(self.layers),
            "selected": self.selected,
            "matrices_edited": len(self.matrices),
            "matrices_by_kind": kinds,
            "untied_embeddings": self.untied_embeddings,
            "direction": self.direction.info(),
            **({"second_direction": self.second.info()} if self.second is not None else {}),
        }

    def save(self, path: str | Path, extra: dict[str, str] | None = None) -> Path:
        """One safetensors file: the direction, every right factor, and the rest as JSON metadata
        (``extra``: more metadata entries, e.g. a patch's base identity)."""
        path = Path(path)
        tensors = {"direction": self.direction.vector}
        tensors.update({f"right/{m.name}": m.right.contiguous() for m in self.matrices})
        if self.second is not None:
            tensors["second_direction"] = self.second.vector
            tensors.update({f"right2/{m.name}": m.right2.contiguous() for m in self.matrices if m.right2 is not None})
        header = {
            "format": RECORD_FORMAT,
            **{k: v for k, v in self.summary().items() if k != "matrices_by_kind"},
            "matrices": [{"name": m.name, "kind": m.kind.value, "layout": m.layout.value, "layer": m.layer} for m in self.matrices],
        }
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata={"rosi_edit": json.dumps(header), **(extra or {})})
        return path

    @classmethod
    def load(cls, path: str | Path) -> EditRecord:
        with safe_open(str(path), framework="pt") as f:
            header: dict[str, Any] = json.loads((f.metadata() or {})["rosi_edit"])
            direction = Direction.from_info(f.get_tensor("direction"), header["direction"], where=str(path))
            keys = set(f.keys())
            second = None
            if "second_direction" in header:
                second = Direction.from_info(f.get_tensor("second_direction"), header["second_direction"], where=str(path))
            matrices = tuple(
                MatrixEdit(
                    m["name"],
                    WriterKind(m["kind"]),
                    Layout(m["layout"]),
                    m["layer"],
                    f.get_tensor(f"right/{m['name']}"),
                    f.get_tensor(f"right2/{m['name']}") if second is not None and f"right2/{m['name']}" in keys else None,
                )
                for m in header["matrices"]
            )
        return cls(
            method=header["method"],
            strength=float(header["strength"]),
            direction=direction,
            targets=tuple(header["targets"]),
            layers=None if header["layers"] is None else tuple(header["layers"]),
            matrices=matrices,
            untied_embeddings=bool(header["untied_embeddings"]),
            selected=bool(header.get("selected", False)),
            second=second,
        )
