"""What extraction reads off a model: both extraction sets' mean activations, single prompts'
activations for the read-outs fit on them, and what a direction file records of its extraction.

The sequencing (select a candidate, choose writers) is :func:`rosi.workflows.extract.extract`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from rosi._version import __version__
from rosi.direction.activations import (
    ActivationPair,
    PromptSamples,
    collect_activations,
    collect_means_and_samples,
    collect_sample_rows,
    collect_samples,
)
from rosi.model.chat import ChatFormat
from rosi.model.loading import LoadedModel
from rosi.prompts import PromptSets


def extraction_activations(
    loaded: LoadedModel,
    fmt: ChatFormat,
    prompts: PromptSets,
    n_pos: int,
    *,
    writers: bool = True,
    read_inputs: bool = False,
    batch_size: int = 32,
    progress: bool = False,
) -> ActivationPair:
    """Both extraction sets' means: every layer, and (with ``writers``) the measurable writers
    (with ``read_inputs``, their inputs too, for read-out methods)."""
    modules = loaded.architecture.measurable_modules(loaded.model) if writers else {}
    kw: dict[str, Any] = {"writers": modules, "read_inputs": writers and read_inputs, "batch_size": batch_size, "progress": progress}
    return ActivationPair(
        collect_activations(loaded.model, fmt, prompts.harmful.instructions, n_pos, desc="rosi: harmful activations", **kw),
        collect_activations(loaded.model, fmt, prompts.harmless.instructions, n_pos, desc="rosi: harmless activations", **kw),
    )


def prompt_samples(
    loaded: LoadedModel,
    fmt: ChatFormat,
    prompts: PromptSets,
    position: int,
    modules: Mapping[str, nn.Module],
    *,
    batch_size: int = 32,
    progress: bool = False,
    need: str = "this method",
) -> PromptSamples:
    """Single prompts' activations at ``position`` for the read-outs fit on them: the extraction
    sets and the look-alike prompts, with the inputs of ``modules`` (parameter name -> module)."""
    lookalike, _ = prompts.need_lookalikes(need)
    sets = {"harmful": prompts.harmful.instructions, "harmless": prompts.harmless.instructions, "lookalike": lookalike.instructions}
    samples = collect_samples(loaded.model, fmt, sets, position, modules, batch_size=batch_size, progress=progress)
    _say_kept(samples, len(modules), progress)
    return samples


def activations_and_samples(
    loaded: LoadedModel,
    fmt: ChatFormat,
    prompts: PromptSets,
    n_pos: int,
    position: int,
    modules: Mapping[str, nn.Module],
    *,
    read_inputs: bool = False,
    batch_size: int = 32,
    progress: bool = False,
    need: str = "this method",
) -> tuple[ActivationPair, PromptSamples]:
    """:func:`extraction_activations` and :func:`prompt_samples` at a ``position`` known before
    the prompts are read: the extraction sets are read once for both (the look-alike prompts,
    which only the samples need, on their own)."""
    lookalike, _ = prompts.need_lookalikes(need)
    writers = loaded.architecture.measurable_modules(loaded.model)
    kw: dict[str, Any] = {
        "writers": writers,
        "sampled": modules,
        "read_inputs": read_inputs,
        "batch_size": batch_size,
        "progress": progress,
    }
    harmful, harmful_rows = collect_means_and_samples(
        loaded.model, fmt, prompts.harmful.instructions, n_pos, position, desc="rosi: harmful activations", **kw
    )
    harmless, harmless_rows = collect_means_and_samples(
        loaded.model, fmt, prompts.harmless.instructions, n_pos, position, desc="rosi: harmless activations", **kw
    )
    rows = collect_sample_rows(
        loaded.model, fmt, {"lookalike": lookalike.instructions}, position, modules, batch_size=batch_size, progress=progress
    )
    samples = PromptSamples(position, {"harmful": harmful_rows, "harmless": harmless_rows, **rows})
    _say_kept(samples, len(modules), progress)
    return ActivationPair(harmful, harmless), samples


def _say_kept(samples: PromptSamples, n_modules: int, progress: bool) -> None:
    if progress:
        n = sum(samples.count(role) for role in samples.roles)
        print(f"rosi: kept {n} prompts' activations at {n_modules} writers ({samples.nbytes() / 2**20:.0f} MiB)", flush=True)


def direction_metadata(
    loaded: LoadedModel, prompts: PromptSets, fmt: ChatFormat, position: int, selected_by: str, system_prompt: str | None
) -> dict[str, str]:
    """What a direction file records of its extraction (counts, sets, token, how it was chosen)."""
    metadata = {
        "n_harmful": str(len(prompts.harmful)),
        "n_harmless": str(len(prompts.harmless)),
        "harmful": prompts.harmful.name,
        "harmless": prompts.harmless.name,
        "token": loaded.tokenizer.decode([fmt.post_instruction_ids()[position]]),
        "selected_by": selected_by,
        "rosi_version": __version__,
    }
    if system_prompt:
        metadata["system_prompt"] = system_prompt
    return metadata
