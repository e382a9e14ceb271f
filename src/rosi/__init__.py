"""rosi: Rank-One Safety Injection for open-weight chat LLMs.

The package reads as the pipeline (the map, by floor: docs/development.md):
:mod:`rosi.model` (load a model, map its residual writers) -> :mod:`rosi.direction` (extract and
select the refusal direction) -> :mod:`rosi.edit` (the methods, the rank-one edit and its record,
writers, strength) -> :mod:`rosi.export` (the output formats: checkpoint, adapters, GGUF, patch)
-> :mod:`rosi.workflows` (``extract``, ``run``, realign, tune) -> :mod:`rosi.cli`. Beside it,
:mod:`rosi.prompts` holds the prompt sets, :mod:`rosi.judges` and :mod:`rosi.measure` the one
refusal meter, and :mod:`rosi.eval` and :mod:`rosi.audit` measure any model. The names below are
the public API; they are imported on first use, so ``import rosi`` (and ``rosi --help``) does not
load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rosi._version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "ArchitectureMap": "rosi.model.architecture",
    "architecture_map": "rosi.model.architecture",
    "LoadedModel": "rosi.model.loading",
    "LoadOptions": "rosi.model.loading",
    "load": "rosi.model.loading",
    "ResidualWriter": "rosi.model.writers",
    "WriterKind": "rosi.model.writers",
    "PromptSet": "rosi.prompts.sets",
    "PromptSets": "rosi.prompts.sets",
    "Direction": "rosi.direction.vector",
    "METHODS": "rosi.edit.methods",
    "EditForm": "rosi.edit.methods",
    "apply_edit": "rosi.edit.apply",
    "revert_edit": "rosi.edit.apply",
    "apply_record": "rosi.edit.apply",
    "EditRecord": "rosi.edit.record",
    "save_checkpoint": "rosi.export.checkpoint",
    "ExtractOptions": "rosi.workflows.options",
    "RunOptions": "rosi.workflows.options",
    "RealignOptions": "rosi.workflows.options",
    "TuneOptions": "rosi.workflows.options",
    "StrengthOptions": "rosi.workflows.options",
    "MeasureOptions": "rosi.workflows.options",
    "OutputOptions": "rosi.workflows.options",
    "RefusalMeter": "rosi.measure.meter",
    "RefusalRate": "rosi.measure.rate",
    "extract": "rosi.workflows.extract",
    "run": "rosi.workflows.run",
    "EvalOptions": "rosi.eval.evaluate",
    "evaluate": "rosi.eval.evaluate",
    "RosiError": "rosi.errors",
}

__all__ = [
    "ArchitectureMap",
    "Direction",
    "EditForm",
    "EditRecord",
    "EvalOptions",
    "ExtractOptions",
    "LoadOptions",
    "LoadedModel",
    "METHODS",
    "MeasureOptions",
    "OutputOptions",
    "PromptSet",
    "PromptSets",
    "RealignOptions",
    "RefusalMeter",
    "RefusalRate",
    "ResidualWriter",
    "RosiError",
    "RunOptions",
    "StrengthOptions",
    "TuneOptions",
    "WriterKind",
    "__version__",
    "apply_edit",
    "apply_record",
    "architecture_map",
    "evaluate",
    "extract",
    "load",
    "revert_edit",
    "run",
    "save_checkpoint",
]  # the names of _EXPORTS, and the version (a test keeps the two in step)

if TYPE_CHECKING:
    from rosi.direction.vector import Direction
    from rosi.edit.apply import apply_edit, apply_record, revert_edit
    from rosi.edit.methods import METHODS, EditForm
    from rosi.edit.record import EditRecord
    from rosi.errors import RosiError
    from rosi.eval.evaluate import EvalOptions, evaluate
    from rosi.export.checkpoint import save_checkpoint
    from rosi.measure.meter import RefusalMeter
    from rosi.measure.rate import RefusalRate
    from rosi.model.architecture import ArchitectureMap, architecture_map
    from rosi.model.loading import LoadedModel, LoadOptions, load
    from rosi.model.writers import ResidualWriter, WriterKind
    from rosi.prompts.sets import PromptSet, PromptSets
    from rosi.workflows.extract import extract
    from rosi.workflows.options import (
        ExtractOptions,
        MeasureOptions,
        OutputOptions,
        RealignOptions,
        RunOptions,
        StrengthOptions,
        TuneOptions,
    )
    from rosi.workflows.run import run


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rosi' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
