"""rosi: Rank-One Safety Injection for open-weight chat LLMs.

The pipeline, one module each: :mod:`rosi.loading` (get a model), :mod:`rosi.architecture`
(which matrices write the residual stream), :mod:`rosi.direction` (the safety direction as a
value with a file format), :mod:`rosi.rank_one` (the edit math), :mod:`rosi.edit` (apply and
revert), :mod:`rosi.checkpoint` (save a standard checkpoint).
"""

__version__ = "0.1.0"

from rosi.architecture import ArchitectureMap, ResidualWriter, WriterKind, architecture_map  # noqa: E402
from rosi.checkpoint import save_checkpoint  # noqa: E402
from rosi.direction import Direction  # noqa: E402
from rosi.edit import EditRecord, apply_edit, revert_edit  # noqa: E402
from rosi.errors import RosiError  # noqa: E402
from rosi.loading import LoadedModel, load  # noqa: E402

__all__ = [
    "ArchitectureMap",
    "Direction",
    "EditRecord",
    "LoadedModel",
    "ResidualWriter",
    "RosiError",
    "WriterKind",
    "__version__",
    "apply_edit",
    "architecture_map",
    "load",
    "revert_edit",
    "save_checkpoint",
]
