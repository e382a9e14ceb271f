"""Choose the refusal direction among all (layer, post-instruction position) candidates.

The criterion is Arditi et al.'s, on validation prompts:

- **bypass**: mean refusal log-odds on harmful prompts with the direction projected out of every
  residual write (lower = the direction is more necessary for refusal);
- **induce**: mean refusal log-odds on harmless prompts with the raw direction added to the
  residual stream after its layer (must be > 0: it is sufficient to cause refusal);
- **kl**: KL divergence of the harmless next-token distribution under the ablation (must be
  <= 0.1: the direction is not needed for ordinary text).

Candidates in the last 20% of layers are dropped; the lowest bypass among the rest wins.
Refusal log-odds is ``log p - log(1 - p)`` with ``p`` the probability of refusal-starting tokens
at the first generated position.

Small models often have no candidate that passes both filters (every ablation moves ordinary text
too much). Then, given a ``trial`` (a context in which the model carries the edit ROSI will
really make along a direction: :data:`EditTrial`, built by :mod:`rosi.edit.trial`), rosi scores the last-token candidate of every layer in the middle of the model by the edit's
effect: mean refusal log-odds on harmful validation prompts with the edit applied, among those
whose harmless refusal log-odds do not rise above the base model's. Without a ``trial`` the
KL filter is relaxed instead (doubled until some candidate passes; lowest bypass).

Scoring every candidate costs three forward passes each (a naive grid: ``3 * layers * positions``).
rosi screens first: one forward and backward pass per prompt set gives, to first order, the bypass
score of every direction (``-r^T M r`` with ``M`` the sum over layers and tokens of gradient x
residual write) and the induce score of every candidate (``gradient . r``). Only the best-screened
candidates are then scored exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from rosi.direction.interventions import ablated, added
from rosi.direction.score import PassCounter, batches, last_logprobs, mean_log_odds, refusal_log_odds, refusal_token_ids
from rosi.direction.vector import Direction
from rosi.metrics import kl_divergence
from rosi.model.architecture import architecture_map
from rosi.model.chat import ChatFormat
from rosi.model.costs import count_forward
from rosi.model.hooks import device_of, forward, hooks, layer_output
from rosi.model.writers import CausalLM

SCREEN_BATCH = 2  # prompts per forward+backward batch of the first-order screen (its activations, kept for the backward pass, set extraction's peak memory: about 0.15 GB a prompt for a 0.5B model in float32; 4 raised a float32 run's peak by 0.2 GiB, 2 costs about 6 s more)
EditTrial = Callable[[Direction], AbstractContextManager[object]]
"""``trial(direction)``: a context in which the model carries the edit of that direction."""


class CandidateStatus(str, Enum):
    SCREENED = "screened"
    LATE_LAYER = "late layer"
    KL_TOO_HIGH = "kl too high"
    INDUCE_NEGATIVE = "induce < 0"
    ELIGIBLE = "eligible"
    CHOSEN = "chosen"  # passed Arditi's filters, lowest bypass
    CHOSEN_BY_EFFECT = "chosen (edit effect: most harmful refusal, harmless refusal not above base)"
    CHOSEN_BY_EFFECT_GAP = "chosen (edit effect: largest harmful-minus-harmless refusal)"
    CHOSEN_RELAXED = "chosen (relaxed: no induce filter, kl threshold doubled until one passes)"


@dataclass(frozen=True)
class SelectionOptions:
    exact_candidates: int = 4  # candidates scored exactly (more, up to max_exact, while none passes)
    max_exact: int = 6
    max_layer_fraction: float = 0.8  # candidates in the last 20% of layers are dropped
    min_layer_fraction: float = 0.25  # the edit-effect fallback tries layers [min, max) of the depth
    kl_threshold: float = 0.1


@dataclass
class CandidateScore:
    layer: int
    position: int  # negative index among the prompt tokens, e.g. -1 = last
    token: str
    norm: float
    screen_bypass: float  # first-order estimate
    screen_induce: float  # first-order estimate
    bypass: float | None = None  # exact, only for candidates scored exactly
    induce: float | None = None
    kl: float | None = None
    # With the edit applied (fallback when no candidate passes the filters): mean refusal log-odds.
    edit_harmful: float | None = None
    edit_harmless: float | None = None
    status: CandidateStatus = CandidateStatus.SCREENED

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value}


@dataclass(frozen=True)
class SelectionCost:
    seconds: float
    forward_batches: int
    backward_batches: int
    candidates: int
    scored_exactly: int
    scored_by_edit_effect: int
    naive_grid_forward_batches: int  # every candidate outside the last 20% of layers, 3 passes per set

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Selection:
    layer: int
    position: int
    direction: torch.Tensor
    scores: list[CandidateScore]
    base_harmful: float  # mean refusal log-odds, no intervention
    base_harmless: float
    refusal_tokens: list[int]
    cost: SelectionCost
    kl_threshold: float  # the threshold that decided (doubled by the relaxed rule)

    def table(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.scores]

    @property
    def strict(self) -> bool:
        """The winner passed Arditi's filters."""
        return any(s.status is CandidateStatus.CHOSEN for s in self.scores)

    @property
    def by_effect(self) -> bool:
        """The winner was chosen by the edit's effect (no candidate passed the filters)."""
        return any(s.status in (CandidateStatus.CHOSEN_BY_EFFECT, CandidateStatus.CHOSEN_BY_EFFECT_GAP) for s in self.scores)

    @property
    def selected_by(self) -> str:
        return "arditi" if self.strict else "edit effect" if self.by_effect else "arditi-relaxed"


@dataclass
class _Scorer:
    """Mean first-token refusal log-odds of the validation prompts, counting the passes."""

    model: CausalLM
    fmt: ChatFormat
    val_harmful: tuple[str, ...]
    val_harmless: tuple[str, ...]
    token_ids: list[int]
    batch_size: int
    counter: PassCounter = field(default_factory=PassCounter)
    progress: bool = False

    def logprobs(self, prompts: Sequence[str]) -> torch.Tensor:
        return last_logprobs(self.model, self.fmt, prompts, self.batch_size, self.counter)

    def log_odds(self, prompts: Sequence[str]) -> float:
        return mean_log_odds(self.model, self.fmt, prompts, self.token_ids, self.batch_size, self.counter)


def select_direction(
    model: nn.Module,
    fmt: ChatFormat,
    candidates: torch.Tensor,
    val_harmful: Sequence[str],
    val_harmless: Sequence[str],
    *,
    options: SelectionOptions = SelectionOptions(),
    trial: EditTrial | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> Selection:
    """Choose among ``candidates`` (``[layers, positions, hidden]``: the difference of means at
    every layer and post-instruction position). Screen every candidate to first order, score the
    best ``exact_candidates`` exactly (more, up to ``max_exact``, while none passes the filters;
    with a ``trial`` the fallback takes over at ``exact_candidates``), and return the winner. If
    none passes, choose by ``trial``'s effect (see the module docstring) among the last-token
    candidates of layers ``[min_layer_fraction, max_layer_fraction)`` of the depth."""
    started = time.perf_counter()
    scorer = _Scorer(model, fmt, tuple(val_harmful), tuple(val_harmless), refusal_token_ids(fmt.tokenizer), batch_size, progress=progress)
    diffs = candidates.to(torch.float32)
    base_harmful_lp = scorer.logprobs(scorer.val_harmful)
    base_harmless_lp = scorer.logprobs(scorer.val_harmless)
    base_harmful = float(refusal_log_odds(base_harmful_lp, scorer.token_ids).mean())
    base_harmless = float(refusal_log_odds(base_harmless_lp, scorer.token_ids).mean())
    scores = _screened(scorer, diffs, base_harmful, base_harmless, options.max_layer_fraction)
    n_pos = diffs.shape[1]
    max_exact = options.exact_candidates if trial is not None else options.max_exact
    evaluated, eligible = _score_exactly(scorer, scores, diffs, base_harmless_lp, options, max_exact, progress)
    kl_threshold = options.kl_threshold
    if eligible:
        best = min(eligible, key=lambda s: _value(s.bypass))
        best.status = CandidateStatus.CHOSEN
    elif trial is not None:
        best = _score_effects(scorer, _effect_candidates(scores, diffs.shape[0], options), diffs, trial, base_harmless, progress)
    else:
        scored = [s for s in scores if s.kl is not None]
        best, kl_threshold = _relaxed_choice(scored, options.kl_threshold, lambda s: _bypass(scorer, s, diffs[s.layer, s.position + n_pos]))
    return Selection(
        layer=best.layer,
        position=best.position,
        direction=diffs[best.layer, best.position + n_pos].clone(),
        scores=scores,
        base_harmful=base_harmful,
        base_harmless=base_harmless,
        refusal_tokens=scorer.token_ids,
        cost=_cost(scorer, scores, evaluated, time.perf_counter() - started),
        kl_threshold=kl_threshold,
    )


def _screened(
    scorer: _Scorer, diffs: torch.Tensor, base_harmful: float, base_harmless: float, max_layer_fraction: float
) -> list[CandidateScore]:
    """Every candidate with its first-order bypass and induce estimates (one forward and backward
    pass over each validation set)."""
    M, _ = _screen(scorer, scorer.val_harmful, "harmful")
    _, G = _screen(scorer, scorer.val_harmless, "harmless")
    M, G = M.to(torch.float32), G.to(torch.float32)
    n_layers, n_pos, _ = diffs.shape
    suffix = scorer.fmt.post_instruction_ids()[-n_pos:]
    late = math.floor(max_layer_fraction * n_layers)
    scores = []
    for layer in range(n_layers):
        for p in range(n_pos):
            r = diffs[layer, p]
            r_hat = r / r.norm()
            scores.append(
                CandidateScore(
                    layer=layer,
                    position=p - n_pos,
                    token=scorer.fmt.tokenizer.decode([suffix[p]]),
                    norm=float(r.norm()),
                    screen_bypass=base_harmful - float(r_hat @ M @ r_hat),
                    screen_induce=base_harmless + float(G[layer] @ r),
                    status=CandidateStatus.LATE_LAYER if layer >= late else CandidateStatus.SCREENED,
                )
            )
    return scores


def _screen(scorer: _Scorer, instructions: tuple[str, ...], role: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward+backward pass over the prompts. Returns
    ``M`` [hidden, hidden] = mean over prompts of sum over layers and tokens of ``g_l d_l^T``
    (``g_l`` the gradient of the refusal score at layer l's output, ``d_l`` the layer's write)
    and ``G`` [layers, hidden] = mean over prompts of sum over tokens of ``g_l``."""
    model = scorer.model
    arch = architecture_map(model)
    layers = arch.layer_modules(model)
    hidden = arch.hidden_size
    M = torch.zeros(hidden, hidden, dtype=torch.float64)
    G = torch.zeros(arch.num_layers, hidden, dtype=torch.float64)
    states: list[torch.Tensor] = []

    def keep(module: nn.Module, args: Any, output: Any) -> None:
        out = layer_output(output)
        if not states:  # the embedding's output: where the graph starts (the weights need no gradient)
            out.requires_grad_(True)
        out.retain_grad()
        states.append(out)

    # the backward pass holds every layer's activations: smaller batches bound its memory (the
    # total work is the same)
    size = min(scorer.batch_size, SCREEN_BATCH)
    for batch in tqdm(
        scorer.fmt.batches(instructions, size, device_of(model)),
        total=batches(len(instructions), size),
        desc=f"rosi: gradient screen, {role} prompts",
        unit="batch",
        disable=not scorer.progress,
    ):
        states.clear()
        mask = batch["attention_mask"].unsqueeze(-1).to(torch.float64)
        with torch.enable_grad(), frozen(model), hooks([(model.get_input_embeddings(), keep)] + [(layer, keep) for layer in layers]):
            logits = forward(model, batch, logits_to_keep=1).logits
            score = refusal_log_odds(torch.log_softmax(logits[:, -1, :].float(), dim=-1), scorer.token_ids).sum()
            score.backward()
        for i in range(1, len(states)):  # each layer's write is what it adds to the stream
            g = _grad(states[i]) * mask
            d = (states[i] - states[i - 1]).detach().to(torch.float64) * mask
            M += (g.reshape(-1, hidden).T @ d.reshape(-1, hidden)).cpu()
            G[i - 1] += g.sum(dim=(0, 1)).cpu()
        g0 = _grad(states[0]) * mask  # the embedding's write is the stream it starts
        M += (g0.reshape(-1, hidden).T @ states[0].detach().to(torch.float64).mul(mask).reshape(-1, hidden)).cpu()
    model.zero_grad(set_to_none=True)
    # counted in batches of the run's size, like every other pass (the work does not depend on the
    # split); in the phase table a backward pass counts as two forward batches (about its cost)
    count_forward(3 * batches(len(instructions), scorer.batch_size))
    scorer.counter.forward += batches(len(instructions), scorer.batch_size)
    scorer.counter.backward += batches(len(instructions), scorer.batch_size)
    return M / len(instructions), G / len(instructions)


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """No parameter gradients: the screen needs the gradients at the activations only (and the
    weights' would cost a copy of the model and a third of the backward pass)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _grad(state: torch.Tensor) -> torch.Tensor:
    assert state.grad is not None  # retained by the hook; every layer's output feeds the score
    return state.grad.to(torch.float64)


def _score_exactly(
    scorer: _Scorer,
    scores: list[CandidateScore],
    diffs: torch.Tensor,
    base_harmless_lp: torch.Tensor,
    options: SelectionOptions,
    max_exact: int,
    progress: bool,
) -> tuple[int, list[CandidateScore]]:
    """KL, induce and bypass of the best-screened candidates, each only while the candidate still
    passes (KL, then induce: the filters; bypass ranks the ones that pass); returns how many were
    scored and those that pass Arditi's filters."""
    queue = sorted((s for s in scores if s.status is CandidateStatus.SCREENED), key=lambda s: s.screen_bypass)
    n_pos = diffs.shape[1]
    eligible: list[CandidateScore] = []
    evaluated = 0
    bar = tqdm(total=options.exact_candidates, desc="rosi: scoring candidates", unit="candidate", disable=not progress)
    for s in queue:
        if evaluated >= max_exact or (evaluated >= options.exact_candidates and eligible):
            break
        r = diffs[s.layer, s.position + n_pos]
        with ablated(scorer.model, r):
            s.kl = float(kl_divergence(base_harmless_lp, scorer.logprobs(scorer.val_harmless)).mean())
        if s.kl > options.kl_threshold:
            s.status = CandidateStatus.KL_TOO_HIGH
        else:
            with added(scorer.model, s.layer, r):
                s.induce = scorer.log_odds(scorer.val_harmless)
            if s.induce < 0:
                s.status = CandidateStatus.INDUCE_NEGATIVE
            else:
                _bypass(scorer, s, r)
                s.status = CandidateStatus.ELIGIBLE
                eligible.append(s)
        evaluated += 1
        if evaluated > bar.total:  # none eligible yet: scoring goes on past the planned number
            bar.total = evaluated
        bar.update(1)
    bar.close()
    return evaluated, eligible


def _bypass(scorer: _Scorer, s: CandidateScore, r: torch.Tensor) -> float:
    """The candidate's bypass score (mean refusal log-odds on harmful prompts with it ablated), once."""
    if s.bypass is None:
        with ablated(scorer.model, r):
            s.bypass = scorer.log_odds(scorer.val_harmful)
    return s.bypass


EFFECT_TOLERANCE = 1e-3  # log-odds: "not above the base model" up to float noise (an edit that leaves harmless prompts alone)


def _effect_candidates(scores: list[CandidateScore], n_layers: int, options: SelectionOptions) -> list[CandidateScore]:
    """The last-token candidates of layers ``[min, max)`` of the depth (all last-token ones if none)."""
    lo, hi = math.floor(options.min_layer_fraction * n_layers), math.floor(options.max_layer_fraction * n_layers)
    last = [s for s in scores if s.position == -1]
    return [s for s in last if lo <= s.layer < hi] or last


def _score_effects(
    scorer: _Scorer, candidates: list[CandidateScore], diffs: torch.Tensor, trial: EditTrial, base_harmless: float, progress: bool
) -> CandidateScore:
    """The candidate whose edit gives the most harmful refusal while harmless refusal stays at or
    below the base model's; if none does, the largest harmful-minus-harmless effect.

    Harmful prompts are scored for every candidate first; harmless ones only down the harmful
    ranking until one candidate passes (all of them only when none does)."""
    n_pos = diffs.shape[1]

    def with_edit(s: CandidateScore, prompts: tuple[str, ...]) -> float:
        with trial(Direction(diffs[s.layer, s.position + n_pos], layer=s.layer, position=s.position)):
            return scorer.log_odds(prompts)

    for s in tqdm(candidates, desc="rosi: edit effect on harmful prompts", unit="candidate", disable=not progress):
        s.edit_harmful = with_edit(s, scorer.val_harmful)
    ranked = sorted(candidates, key=lambda s: _value(s.edit_harmful), reverse=True)
    with tqdm(total=len(ranked), desc="rosi: edit effect on harmless prompts", unit="candidate", disable=not progress) as bar:
        for s in ranked:
            s.edit_harmless = with_edit(s, scorer.val_harmless)
            bar.update(1)
            if s.edit_harmless <= base_harmless + EFFECT_TOLERANCE:
                s.status = CandidateStatus.CHOSEN_BY_EFFECT
                return s
    best = max(ranked, key=lambda s: _value(s.edit_harmful) - _value(s.edit_harmless))
    best.status = CandidateStatus.CHOSEN_BY_EFFECT_GAP
    return best


def _relaxed_choice(
    scored: list[CandidateScore], kl_threshold: float, bypass: Callable[[CandidateScore], float]
) -> tuple[CandidateScore, float]:
    """No candidate passed both filters (small models often fail them): drop the induce filter
    and double the KL threshold until some candidate is under it; lowest bypass among those."""
    threshold = kl_threshold if kl_threshold > 0 else 1e-3  # doubling must be able to grow it
    while True:
        under = [s for s in scored if s.kl is not None and s.kl <= threshold]
        if under:
            best: CandidateScore = min(under, key=bypass)
            best.status = CandidateStatus.CHOSEN_RELAXED
            return best, threshold
        threshold *= 2


def _cost(scorer: _Scorer, scores: list[CandidateScore], evaluated: int, seconds: float) -> SelectionCost:
    n_h, n_b, b = len(scorer.val_harmful), len(scorer.val_harmless), scorer.batch_size
    in_range = sum(1 for s in scores if s.status is not CandidateStatus.LATE_LAYER)
    return SelectionCost(
        seconds=round(seconds, 2),
        forward_batches=scorer.counter.forward,
        backward_batches=scorer.counter.backward,
        candidates=len(scores),
        scored_exactly=evaluated,
        scored_by_edit_effect=sum(1 for s in scores if s.edit_harmful is not None),
        naive_grid_forward_batches=batches(n_h, b) + batches(n_b, b) + in_range * (batches(n_h, b) + 2 * batches(n_b, b)),
    )


def _value(x: float | None) -> float:
    assert x is not None  # only scored candidates are compared
    return x
