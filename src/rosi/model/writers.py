"""The vocabulary of residual writers: what kinds there are, how a weight stores its matrix, and
which kinds each edit target selects. Which parameters are writers in a given architecture is
:mod:`rosi.model.architecture`'s business; this module only names the parts (and needs no torch,
so the CLI can list the targets without importing it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

# A transformers causal LM (a PreTrainedModel, or any nn.Module with its methods). Typed as Any:
# torch types a module's attributes as ``Tensor | Module``, so transformers' own methods
# (get_input_embeddings, generate, save_pretrained, ...) cannot be checked through nn.Module.
CausalLM = Any


class WriterKind(str, Enum):
    EMBEDDING = "embedding"
    ATTENTION = "attention"
    MLP = "mlp"
    EXPERT = "expert"


class Layout(str, Enum):
    """How a weight stores its ``[out, in]`` matrix (``out`` = residual stream)."""

    OUT_IN = "out_in"  # nn.Linear
    IN_OUT = "in_out"  # GPT-2 Conv1D, and embeddings ([vocab, hidden]: row t is token t's output)
    EXPERTS_OUT_IN = "experts_out_in"  # fused experts [num_experts, out, in]

    def as_out_in(self, weight: Tensor) -> Tensor:
        return weight.transpose(-1, -2) if self is Layout.IN_OUT else weight


# Edit targets a user can choose, and the writer kinds each one selects.
TARGETS: dict[str, tuple[WriterKind, ...]] = {
    "attention": (WriterKind.ATTENTION,),
    "mlp": (WriterKind.MLP, WriterKind.EXPERT),
    "embedding": (WriterKind.EMBEDDING,),
}
DEFAULT_TARGETS: tuple[str, ...] = ("attention", "mlp")
# Writer kinds whose module returns the writer's own output ``W x (+ b)`` as [batch, seq, hidden]
# (fused expert stacks mix experts, the embedding indexes rows), so their outputs and inputs can
# be measured by hooks.
MEASURABLE: tuple[WriterKind, ...] = (WriterKind.ATTENTION, WriterKind.MLP)


@dataclass(frozen=True)
class ResidualWriter:
    name: str  # parameter name in model.named_parameters()
    kind: WriterKind
    layout: Layout
    layer: int | None  # None for the embedding
    post_norm: str | None = None  # module that normalises this writer's output before the add
    gate: str | None = None  # module whose per-token scalar multiplies this writer's output

    @property
    def module(self) -> str:
        """The module that owns the weight (for fused experts, the experts module)."""
        return self.name.rsplit(".", 1)[0]

    @property
    def measurable(self) -> bool:
        return self.kind in MEASURABLE

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "layout": self.layout.value,
            "layer": self.layer,
            "post_norm": self.post_norm,
            "gate": self.gate,
        }
