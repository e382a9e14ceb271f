"""Re-align an uncensored model: :func:`realign`, the workflow behind ``rosi realign``.

Two kinds of "uncensored" model need two ways back:

- An **abliterated** model had its refusal direction projected out of every residual writer. The
  direction is then gone from the residual stream (no difference of means can find it, with or
  without a system prompt) but not from the weights: it is the one direction none of the writers
  writes along (:mod:`rosi.direction.null`). rosi re-adds it with the ``gate`` edit, whose
  read-out looks at the writers' *inputs* (which ablation left intact: the model still tells
  harmful from harmless requests, it just no longer writes the refusal), fit on single prompts
  as the model will see them (about 1 on harmful, 0 on harmless and look-alike inputs, and kept
  off the benign inputs' principal subspace). The eigenvector's sign is arbitrary: the sign kept is the one whose
  edit raises the first-token refusal log-odds of harmful over harmless validation prompts.
- A model **fine-tuned** to comply (or never aligned) still writes along every direction: its
  refusal signal is weak, and the paper reads it with a safety system prompt in front of both
  extraction sets (:mod:`rosi.prompts.system`); selection and the read-outs then work without it.

``direction="auto"`` takes the first where the weights show an ablation, else the second. The
edit is then chosen, measured and saved by :func:`rosi.workflows.run.run`, without any system prompt.
"""

from __future__ import annotations

import time
from pathlib import Path

from rosi.direction.extraction import direction_metadata
from rosi.direction.null import GAP_DEPTH, Ablation, NullDirection, find_ablation, null_direction, writer_gram, writer_grams
from rosi.direction.score import PassCounter, mean_log_odds, refusal_token_ids
from rosi.direction.vector import Direction
from rosi.edit.methods import METHODS
from rosi.edit.trial import EditTrial
from rosi.errors import RosiError
from rosi.export.checkpoint import input_paths
from rosi.export.formats import check_format_output, check_format_source
from rosi.model.chat import ChatFormat
from rosi.model.loading import LoadedModel
from rosi.prompts import PromptSets
from rosi.workflows.extract import Extraction, activations_and_samples_for, activations_for
from rosi.workflows.options import REALIGN_HARMFUL, REALIGN_HARMLESS, REALIGN_N_VAL, RealignOptions
from rosi.workflows.run import RunReport, run


def realign_prompts(**changes: object) -> PromptSets:
    """The prompt sets ``rosi realign`` uses by default (``changes``: :meth:`PromptSets.load`'s
    arguments on top): the read-out fit on harmful and harmless requests of many styles
    (:data:`~rosi.workflows.options.REALIGN_HARMFUL`, :data:`~rosi.workflows.options.REALIGN_HARMLESS`),
    every validation prompt measured."""
    defaults: dict[str, object] = {"harmful": REALIGN_HARMFUL, "harmless": REALIGN_HARMLESS, "n_val": REALIGN_N_VAL}
    return PromptSets.load(**{**defaults, **changes})  # type: ignore[arg-type]


def find_null(loaded: LoadedModel) -> tuple[NullDirection, Ablation | None]:
    """The direction the model's residual writers write least along, and the direction taken
    out of all of them or of some layers' writers, if one was (see :mod:`rosi.direction.null`)."""
    grams = writer_grams(loaded.model, loaded.architecture)
    return null_direction(writer_gram(g for _, g in grams.values())), find_ablation(grams)


def realign(loaded: LoadedModel, out: str | Path, prompts: PromptSets, options: RealignOptions | None = None) -> RunReport:
    """Find the way back for an uncensored model, then search, measure and save the edit as
    :func:`rosi.workflows.run.run` does (the report's direction metadata says which way was taken)."""
    options = options or RealignOptions()
    check_format_output(Path(out), options.output.format, options.output.overwrite, protect=input_paths(loaded.source))
    check_format_source(options.output.format, loaded.source.spec, [options.extract.form.method], gguf_type=options.output.gguf_type)
    null, ablation = find_null(loaded)
    _say(options, f"rosi: {_verdict(null, ablation)}")
    if options.direction == "null" and ablation is None:
        raise RosiError(
            f"no direction was taken out of this model's writers (its least-written one has {null.isolation:.2g} of the next one's "
            "eigenvalue, not near 0, and no two layers share one); use --direction extracted"
        )
    if options.direction == "extracted" or (options.direction == "auto" and ablation is None):
        return run(loaded, out, prompts, options.run)
    if not options.extract.form.spec.survives_ablation:
        fits = [name for name, m in METHODS.items() if m.survives_ablation]
        raise RosiError(
            f"method {options.extract.form.method!r} reads the writers' own component along the direction, which ablation set to zero; "
            f"use --method {' or '.join(fits)}"
        )
    assert ablation is not None
    return run(loaded, out, prompts, options.run, extractor=lambda: extract_null(loaded, prompts, options, ablation))


def extract_null(loaded: LoadedModel, prompts: PromptSets, options: RealignOptions, ablation: Ablation) -> Extraction:
    """The null direction as a :class:`Direction` at the last prompt token (or the pinned
    position), its length the gap at :data:`GAP_DEPTH` of the depth (or the pinned layer), its
    sign the one whose edit raises refusal; with the activations of the extraction prompts,
    without any system prompt."""
    started = time.perf_counter()
    fmt = ChatFormat(loaded.tokenizer)
    n_pos = len(fmt.post_instruction_ids())
    layer = options.extract.layer if options.extract.layer is not None else int(GAP_DEPTH * loaded.architecture.num_layers)
    position = options.extract.position if options.extract.position is not None else -1
    # the position is known before the prompts are read: one read gives the means and the samples
    samples = None
    if options.extract.form.spec.samples:
        activations, samples = activations_and_samples_for(loaded, fmt, prompts, n_pos, position, options.extract)
    else:
        activations = activations_for(loaded, fmt, prompts, n_pos, options.extract)
    gap = float(activations.direction_at(layer, position).norm())
    if not gap > 0:
        raise RosiError(f"harmful and harmless prompts do not differ at layer {layer}: pin another --layer")
    selected_by = f"the null direction of {len(ablation.layers)} layers' writers, length the gap at layer {layer}"
    metadata = direction_metadata(loaded, prompts, fmt, position, selected_by, None)
    metadata["system_prompt_used"] = "none (the null direction is read from the weights)"
    trial = EditTrial(loaded.model, loaded.architecture, activations, options.extract.form)
    ids = refusal_token_ids(loaded.tokenizer)
    counter = PassCounter()
    scores = {}
    for sign in (1.0, -1.0):
        candidate = Direction(sign * gap * ablation.vector, layer=layer, position=position, model=loaded.source.spec, metadata=metadata)
        with trial(candidate):
            scores[sign] = mean_log_odds(
                loaded.model, fmt, prompts.val_harmful.instructions, ids, options.extract.batch_size, counter
            ) - mean_log_odds(loaded.model, fmt, prompts.val_harmless.instructions, ids, options.extract.batch_size, counter)
    sign = max(scores, key=lambda s: scores[s])
    metadata["sign_log_odds_gap"] = f"{scores[sign]:.3f} (other sign {scores[-sign]:.3f})"
    direction = Direction(sign * gap * ablation.vector, layer=layer, position=position, model=loaded.source.spec, metadata=metadata)
    return Extraction(direction, None, round(time.perf_counter() - started, 2), activations, samples)


def _verdict(null: NullDirection, ablation: Ablation | None) -> str:
    if ablation is None:
        return f"no direction was ablated from the writers (the least-written one has {null.isolation:.2g} of the next one's eigenvalue)"
    where = "every writer" if null.found else f"the writers of {len(ablation.layers)} layers"
    return f"a direction was ablated from {where}: re-adding it where the input looks harmful"


def _say(options: RealignOptions, message: str) -> None:
    if options.extract.progress:
        print(message, flush=True)
