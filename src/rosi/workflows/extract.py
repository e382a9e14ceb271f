"""The first step of every workflow: :func:`extract` the refusal direction (difference of means,
then selection on validation prompts), with what the edit needs to choose its writers."""

from __future__ import annotations

import time
from dataclasses import dataclass

from torch import nn

from rosi.direction.activations import ActivationPair, PromptSamples
from rosi.direction.extraction import activations_and_samples, direction_metadata, extraction_activations, prompt_samples
from rosi.direction.selection import Selection, select_direction
from rosi.direction.tokens import REPLY_TOKENS, TokenMoments, collect_token_moments
from rosi.direction.vector import Direction
from rosi.edit.methods import EditForm
from rosi.edit.scope import WriterChoice, choose_writers, probe_layer_range, probe_writers
from rosi.edit.trial import EditTrial
from rosi.errors import RosiError
from rosi.model.chat import ChatFormat
from rosi.model.generation import generate_replies
from rosi.model.loading import LoadedModel
from rosi.prompts import PromptSets
from rosi.workflows.options import ExtractOptions


@dataclass(frozen=True)
class Extraction:
    direction: Direction
    selection: Selection | None  # None when the layer and position were pinned
    seconds: float
    # Mean activations of both extraction sets (layers, and the measurable writers' outputs and,
    # for read-out methods, inputs), for choosing which writers to edit.
    activations: ActivationPair
    # Single prompts at the direction's position, for methods fit on them (gate, surgical).
    samples: PromptSamples | None = None
    # Every token of the benign prompts and their replies, as second moments (token-level fits).
    moments: TokenMoments | None = None

    def choose_writers(self, loaded: LoadedModel, form: EditForm) -> WriterChoice:
        """The writers ``form`` edits for this direction."""
        return choose_writers(loaded.model, loaded.architecture, self.direction, self.activations, form, self.samples, self.moments)


def extract(loaded: LoadedModel, prompts: PromptSets, options: ExtractOptions | None = None) -> Extraction:
    """Difference of means at every (layer, post-instruction position) of the extraction prompts;
    select one on the validation prompts, or take the pinned ``options.layer``/``position``.

    With a system prompt the candidates are read with it in front of both sets. Selection scores
    them, and the writers are measured, with it too when ``options.score_with_system_prompt``,
    otherwise without it (in a second pass over the extraction prompts)."""
    options = options or ExtractOptions()
    started = time.perf_counter()
    fmt = ChatFormat(loaded.tokenizer, options.system_prompt)
    plain = fmt if options.score_with_system_prompt or not options.system_prompt else ChatFormat(loaded.tokenizer)
    n_pos = len(fmt.post_instruction_ids())
    _check_pin(loaded, options, n_pos)
    if plain is fmt:
        activations = candidates = activations_for(loaded, fmt, prompts, n_pos, options)
    else:
        candidates = activations_for(loaded, fmt, prompts, n_pos, options, writers=False)
        activations = activations_for(loaded, plain, prompts, n_pos, options)
    selection = None
    layer, position = options.layer, options.position
    if layer is None or position is None:
        selection = select_direction(
            loaded.model,
            plain,
            candidates.differences(),
            prompts.val_harmful.instructions,
            prompts.val_harmless.instructions,
            trial=EditTrial(loaded.model, loaded.architecture, activations, options.form),
            batch_size=options.batch_size,
            progress=options.progress,
        )
        layer, position = selection.layer, selection.position
    metadata = direction_metadata(
        loaded, prompts, fmt, position, "pinned" if selection is None else selection.selected_by, options.system_prompt
    )
    if options.system_prompt:
        metadata["scored_with_system_prompt"] = str(plain is fmt).lower()
    direction = Direction(
        candidates.direction_at(layer, position), layer=layer, position=position, model=loaded.source.spec, metadata=metadata
    )
    samples = samples_for(loaded, plain, prompts, position, options.form.scope, options) if options.form.spec.samples else None
    moments = moments_for(loaded, plain, prompts, position, options) if options.form.tokens else None
    return Extraction(direction, selection, round(time.perf_counter() - started, 2), activations, samples, moments)


def activations_for(
    loaded: LoadedModel, fmt: ChatFormat, prompts: PromptSets, n_pos: int, options: ExtractOptions, writers: bool = True
) -> ActivationPair:
    """Both extraction sets' means, with the writers' inputs where ``options.form`` reads them."""
    return extraction_activations(
        loaded,
        fmt,
        prompts,
        n_pos,
        writers=writers,
        read_inputs=options.form.spec.needs_reads,
        batch_size=options.batch_size,
        progress=options.progress,
    )


def activations_and_samples_for(
    loaded: LoadedModel, fmt: ChatFormat, prompts: PromptSets, n_pos: int, position: int, options: ExtractOptions
) -> tuple[ActivationPair, PromptSamples]:
    """:func:`activations_for` and :func:`samples_for` from one read of the extraction prompts,
    where the position is known before they are read (realign's; :func:`extract` selects its
    position from the means, so it reads the prompts again for the samples)."""
    return activations_and_samples(
        loaded,
        fmt,
        prompts,
        n_pos,
        position,
        fit_modules(loaded, options.form.scope),
        read_inputs=options.form.spec.needs_reads,
        batch_size=options.batch_size,
        progress=options.progress,
        need=f"method {options.form.method!r}",
    )


def fit_modules(loaded: LoadedModel, scope: str) -> dict[str, nn.Module]:
    """The measurable writers a fitted read-out edits: the middle layers' (``selective``) or all."""
    arch = loaded.architecture
    modules = arch.measurable_modules(loaded.model)
    if scope != "all":
        keep = set(probe_writers(arch.select(), probe_layer_range(arch.num_layers)))
        modules = {name: m for name, m in modules.items() if name in keep}
    return modules


def moments_for(loaded: LoadedModel, fmt: ChatFormat, prompts: PromptSets, position: int, options: ExtractOptions) -> TokenMoments:
    """The token-level fit's evidence (:func:`collect_token_moments`): the harmful extraction
    prompts at the read positions; the harmless and look-alike ones at every token, followed by
    the unedited model's own greedy replies."""
    lookalike, _ = prompts.need_lookalikes(f"the token-level {options.form.method} fit")
    benign = [*prompts.harmless.instructions, *lookalike.instructions]
    replies = generate_replies(
        loaded.model, fmt, benign, max_new_tokens=REPLY_TOKENS, batch_size=options.batch_size, progress=options.progress
    )
    modules = fit_modules(loaded, options.form.scope)
    moments = collect_token_moments(
        loaded.model,
        fmt,
        prompts.harmful.instructions,
        benign,
        replies,
        modules,
        read=options.form.read,
        position=position,
        batch_size=max(1, options.batch_size // 2),
        progress=options.progress,
    )
    if options.progress:
        counts = moments.counts()
        print(
            f"rosi: token moments of {len(modules)} writers: {counts['harmful']} harmful rows, "
            f"{counts['benign_read'] + counts['benign_tokens']} benign token rows ({moments.nbytes() / 2**20:.0f} MiB)",
            flush=True,
        )
    return moments


def samples_for(
    loaded: LoadedModel, fmt: ChatFormat, prompts: PromptSets, position: int, scope: str, options: ExtractOptions
) -> PromptSamples:
    """Single prompts' activations at the inputs of the writers ``scope`` edits (the middle
    layers', or all), for the read-outs fit on them."""
    modules = fit_modules(loaded, scope)
    return prompt_samples(
        loaded,
        fmt,
        prompts,
        position,
        modules,
        batch_size=options.batch_size,
        progress=options.progress,
        need=f"method {options.form.method!r}",
    )


def _check_pin(loaded: LoadedModel, options: ExtractOptions, n_pos: int) -> None:
    if options.form.spec.effect_strength is None:
        raise RosiError(f"rosi selects directions for the methods rosi run offers, not {options.form.method!r}")
    n_layers = loaded.architecture.num_layers
    if options.layer is not None and not 0 <= options.layer < n_layers:
        raise RosiError(f"--layer {options.layer} is out of range: the model has layers 0..{n_layers - 1}")
    if options.position is not None and not -n_pos <= options.position < 0:
        raise RosiError(f"--position {options.position} is out of range: post-instruction positions are -{n_pos}..-1")
