"""The options of :func:`rosi.extract` and :func:`rosi.run`, as frozen values the CLI fills.

No torch here: ``rosi --help`` shows these defaults without loading it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rosi.edit.methods import EditForm
from rosi.errors import RosiError
from rosi.judges.markers import DEFAULT_NEW_TOKENS

DEFAULT_BUDGET = 0.10  # allowed rise of refusal on harmless validation prompts during the strength search
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class ExtractOptions:
    """How to extract and select the direction.

    ``form`` is the edit the direction is for: when no candidate passes Arditi's filters,
    selection scores candidates by that edit's effect. ``system_prompt`` is used for extraction
    only (re-aligning uncensored models). ``layer`` and ``position`` pin the direction instead of
    selecting it (both or neither)."""

    form: EditForm = field(default_factory=EditForm)
    system_prompt: str | None = None
    layer: int | None = None
    position: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    progress: bool = True

    def __post_init__(self) -> None:
        if (self.layer is None) != (self.position is None):
            raise RosiError("pin both --layer and --position, or neither (then rosi selects them)")
        if self.position is not None and self.position >= 0:
            raise RosiError(f"--position counts from the end of the prompt and must be negative (-1 = last token), got {self.position}")
        if self.batch_size < 1:
            raise RosiError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class RunOptions(ExtractOptions):
    """Everything :func:`rosi.run` does beyond extraction: the strength (``None``: searched on
    the validation prompts within ``budget``), whether the paper's form is measured beside the
    chosen edit, the reply length judged, and whether an existing output may be replaced."""

    strength: float | None = None
    compare_paper: bool = True
    budget: float = DEFAULT_BUDGET
    new_tokens: int = DEFAULT_NEW_TOKENS
    overwrite: bool = False
    format: str = "checkpoint"  # see rosi.export.formats
    gguf_type: str = "Q8_0"  # --format gguf: what tensors of a type the gguf package cannot quantize become

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.budget) and 0 <= self.budget <= 1):
            raise RosiError(f"--budget is a share of prompts between 0 and 1 (0.1 = 10 points), got {self.budget}")
        if self.new_tokens < 1:
            raise RosiError(f"--max-new-tokens must be at least 1, got {self.new_tokens}")
