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

Small models often have no candidate that passes both filters (Qwen2.5-Coder-0.5B-Instruct has
none: KL > 0.3 everywhere). Then, given an ``edit`` (what ROSI will really do with a direction),
rosi scores the last-token candidate of every layer in the middle of the model by the edit's
effect: mean refusal log-odds on harmful validation prompts with the edit applied, among those
whose harmless refusal log-odds do not rise above the base model's. Without an ``edit`` the
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
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from rosi.activations import forward, hooks, layer_output
from rosi.architecture import architecture_map
from rosi.chat import ChatFormat
from rosi.errors import RosiError
from rosi.generation import next_token_logprobs

# edit(layer, position, direction): a context in which the model carries the edit of that direction.
EditFactory = Callable[[int, int, torch.Tensor], AbstractContextManager[object]]

REFUSAL_STARTS = ("I", "As", "Sorry", "Unfortunately", "I'm", "I’m")


def refusal_token_ids(tokenizer) -> list[int]:
    """First token of each refusal-starting word, with and without a leading space."""
    ids: set[int] = set()
    for word in REFUSAL_STARTS:
        for text in (word, " " + word):
            encoded = tokenizer(text, add_special_tokens=False).input_ids
            if encoded and encoded[0] != tokenizer.unk_token_id:
                ids.add(int(encoded[0]))
    if not ids:
        raise RosiError("none of the refusal-starting words (I, As, Sorry, ...) is a token of this tokenizer")
    return sorted(ids)


def refusal_log_odds(logprobs: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    """Per row: ``log p - log(1 - p)``, ``p`` the mass on the refusal tokens."""
    refusal = torch.zeros(logprobs.shape[-1], dtype=torch.bool, device=logprobs.device)
    refusal[token_ids] = True
    log_p = torch.logsumexp(logprobs.masked_fill(~refusal, -torch.inf), dim=-1)
    log_not_p = torch.logsumexp(logprobs.masked_fill(refusal, -torch.inf), dim=-1)  # stable (and differentiable) near p = 1
    return log_p - log_not_p


def kl_divergence(base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Per row KL(base || other) of two log-probability tensors."""
    return (base.exp() * (base - other)).sum(dim=-1)


@contextmanager
def ablated(model: nn.Module, direction: torch.Tensor) -> Iterator[None]:
    """Project ``direction`` out of every write to the residual stream (and so out of the stream)."""
    r_hat = direction / direction.norm()
    points = architecture_map(model).write_points(model)
    cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def project(module: nn.Module, args: object, output: object) -> object:
        out = layer_output(output)
        key = (out.device, out.dtype)
        r = cache.setdefault(key, r_hat.to(device=out.device, dtype=out.dtype))
        new = out - (out @ r).unsqueeze(-1) * r
        return (new, *output[1:]) if isinstance(output, tuple) else new  # type: ignore[index]

    with hooks([(m, project) for m in points]):
        yield


@contextmanager
def added(model: nn.Module, layer: int, vector: torch.Tensor) -> Iterator[None]:
    """Add ``vector`` to the residual stream after decoder layer ``layer``, at every position."""
    module = architecture_map(model).layer_modules(model)[layer]

    def add(m: nn.Module, args: object, output: object) -> object:
        out = layer_output(output)
        new = out + vector.to(device=out.device, dtype=out.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new  # type: ignore[index]

    with hooks([(module, add)]):
        yield


class Counter:
    """Counts forward and backward passes (batches) for cost reports."""

    def __init__(self) -> None:
        self.forward = 0
        self.backward = 0


@torch.no_grad()
def last_logprobs(
    model: nn.Module, fmt: ChatFormat, instructions: tuple[str, ...] | list[str], batch_size: int = 32, counter: Counter | None = None
) -> torch.Tensor:
    """float32 ``[n, vocab]`` log-probabilities of the first generated token
    (:func:`rosi.generation.next_token_logprobs`), counting the forward batches."""
    logprobs = next_token_logprobs(model, fmt, instructions, batch_size=batch_size)
    if counter:
        counter.forward += _batches(len(instructions), batch_size)
    return logprobs


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
    status: str = "screened"  # screened | late layer | kl too high | induce < 0 | eligible | chosen ...


@dataclass
class Selection:
    layer: int
    position: int
    direction: torch.Tensor
    scores: list[CandidateScore]
    base_harmful: float  # mean refusal log-odds, no intervention
    base_harmless: float
    refusal_tokens: list[int]
    cost: dict[str, float] = field(default_factory=dict)

    def table(self) -> list[dict[str, object]]:
        return [asdict(s) for s in self.scores]

    @property
    def strict(self) -> bool:
        """The winner passed Arditi's filters."""
        return any(s.status == "chosen" for s in self.scores)

    @property
    def by_effect(self) -> bool:
        """The winner was chosen by the edit's effect (no candidate passed the filters)."""
        return any(s.status.startswith("chosen (edit effect") for s in self.scores)


def _screen(
    model: nn.Module, fmt: ChatFormat, instructions: tuple[str, ...], token_ids: list[int], batch_size: int, counter: Counter
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward+backward pass over the prompts. Returns
    ``M`` [hidden, hidden] = mean over prompts of sum over layers and tokens of ``g_l d_l^T``
    (``g_l`` the gradient of the refusal score at layer l's output, ``d_l`` the layer's write)
    and ``G`` [layers, hidden] = mean over prompts of sum over tokens of ``g_l``."""
    arch = architecture_map(model)
    layers = arch.layer_modules(model)
    embedding = model.get_input_embeddings()
    device = next(model.parameters()).device
    hidden = arch.hidden_size
    M = torch.zeros(hidden, hidden, dtype=torch.float64)
    G = torch.zeros(arch.num_layers, hidden, dtype=torch.float64)
    states: list[torch.Tensor] = []

    def keep(module: nn.Module, args: object, output: object) -> None:
        out = layer_output(output)
        out.retain_grad()
        states.append(out)

    for batch in fmt.batches(instructions, batch_size, device):
        states.clear()
        mask = batch["attention_mask"].unsqueeze(-1).to(torch.float64)
        with torch.enable_grad(), hooks([(embedding, keep)] + [(layer, keep) for layer in layers]):
            logits = forward(model, batch, logits_to_keep=1).logits  # type: ignore[attr-defined]
            score = refusal_log_odds(torch.log_softmax(logits[:, -1, :].float(), dim=-1), token_ids).sum()
            score.backward()
        counter.forward += 1
        counter.backward += 1
        for i in range(1, len(states)):
            g = states[i].grad.to(torch.float64) * mask
            d = (states[i] - states[i - 1]).detach().to(torch.float64) * mask
            M += (g.reshape(-1, hidden).T @ d.reshape(-1, hidden)).cpu()
            G[i - 1] += g.sum(dim=(0, 1)).cpu()
        g0 = states[0].grad.to(torch.float64) * mask  # the embedding write
        M += (g0.reshape(-1, hidden).T @ states[0].detach().to(torch.float64).mul(mask).reshape(-1, hidden)).cpu()
    model.zero_grad(set_to_none=True)
    return M / len(instructions), G / len(instructions)


def select_direction(
    model: nn.Module,
    fmt: ChatFormat,
    harmful_means: torch.Tensor,
    harmless_means: torch.Tensor,
    val_harmful: tuple[str, ...],
    val_harmless: tuple[str, ...],
    *,
    exact_candidates: int = 4,
    max_exact: int = 6,
    max_layer_fraction: float = 0.8,
    kl_threshold: float = 0.1,
    edit: EditFactory | None = None,
    min_layer_fraction: float = 0.25,
    batch_size: int = 32,
    progress: bool = False,
) -> Selection:
    """Screen every candidate to first order, score the best ``exact_candidates`` exactly (more,
    up to ``max_exact``, while none passes the filters; with an ``edit`` the fallback takes over
    at ``exact_candidates``), and return the winner. If none passes, choose by ``edit``'s effect
    (see the module docstring) among the last-token candidates of layers
    ``[min_layer_fraction, max_layer_fraction)`` of the depth."""
    started = time.perf_counter()
    counter = Counter()
    tok = fmt.tokenizer
    token_ids = refusal_token_ids(tok)
    diffs = (harmful_means - harmless_means).to(torch.float32)  # [layers, positions, hidden]
    n_layers, n_pos, _ = diffs.shape
    suffix = fmt.post_instruction_ids()[-n_pos:]

    base_harmful_lp = last_logprobs(model, fmt, val_harmful, batch_size, counter)
    base_harmless_lp = last_logprobs(model, fmt, val_harmless, batch_size, counter)
    base_harmful = float(refusal_log_odds(base_harmful_lp, token_ids).mean())
    base_harmless = float(refusal_log_odds(base_harmless_lp, token_ids).mean())

    M, _ = _screen(model, fmt, val_harmful, token_ids, batch_size, counter)
    _, G = _screen(model, fmt, val_harmless, token_ids, batch_size, counter)
    M = M.to(torch.float32)
    G = G.to(torch.float32)
    scores: list[CandidateScore] = []
    for layer in range(n_layers):
        for p in range(n_pos):
            r = diffs[layer, p]
            r_hat = r / r.norm()
            scores.append(
                CandidateScore(
                    layer=layer,
                    position=p - n_pos,
                    token=tok.decode([suffix[p]]),
                    norm=float(r.norm()),
                    screen_bypass=base_harmful - float(r_hat @ M @ r_hat),
                    screen_induce=base_harmless + float(G[layer] @ r),
                    status="late layer" if layer >= math.floor(max_layer_fraction * n_layers) else "screened",
                )
            )
    queue = sorted((s for s in scores if s.status == "screened"), key=lambda s: s.screen_bypass)
    eligible: list[CandidateScore] = []
    evaluated = 0
    if edit is not None:
        max_exact = exact_candidates
    bar = tqdm(total=exact_candidates, desc="rosi: scoring candidates", unit="candidate", disable=not progress)
    for s in queue:
        if evaluated >= max_exact or (evaluated >= exact_candidates and eligible):
            break
        r = diffs[s.layer, s.position + n_pos]
        with ablated(model, r):
            harmful_lp = last_logprobs(model, fmt, val_harmful, batch_size, counter)
            harmless_lp = last_logprobs(model, fmt, val_harmless, batch_size, counter)
        with added(model, s.layer, r):
            induced_lp = last_logprobs(model, fmt, val_harmless, batch_size, counter)
        s.bypass = float(refusal_log_odds(harmful_lp, token_ids).mean())
        s.kl = float(kl_divergence(base_harmless_lp, harmless_lp).mean())
        s.induce = float(refusal_log_odds(induced_lp, token_ids).mean())
        s.status = "kl too high" if s.kl > kl_threshold else "induce < 0" if s.induce < 0 else "eligible"
        if s.status == "eligible":
            eligible.append(s)
        evaluated += 1
        if evaluated > bar.total:  # none eligible yet: scoring goes on past the planned number
            bar.total = evaluated
        bar.update(1)
    bar.close()
    if eligible:
        best = min(eligible, key=lambda s: s.bypass)  # type: ignore[arg-type, return-value]
        best.status = "chosen"
    elif edit is not None:
        lo, hi = math.floor(min_layer_fraction * n_layers), math.floor(max_layer_fraction * n_layers)
        candidates = [s for s in scores if s.position == -1 and lo <= s.layer < hi] or [s for s in scores if s.position == -1]
        best = _score_effects(
            model, fmt, candidates, diffs, n_pos, edit, val_harmful, val_harmless, token_ids, base_harmless, batch_size, counter, progress
        )
    else:
        best = _relaxed_choice([s for s in scores if s.bypass is not None], kl_threshold)
    n_candidates = len(scores)
    n_eligible_layers = sum(1 for s in scores if s.status != "late layer")
    cost = {
        "seconds": round(time.perf_counter() - started, 2),
        "forward_batches": counter.forward,
        "backward_batches": counter.backward,
        "candidates": n_candidates,
        "scored_exactly": evaluated,
        "scored_by_edit_effect": sum(1 for s in scores if s.edit_harmful is not None),
        # A naive grid scores every candidate outside the last 20% of layers with 3 passes per set.
        "naive_grid_forward_batches": _batches(len(val_harmful), batch_size)
        + _batches(len(val_harmless), batch_size)
        + n_eligible_layers * (_batches(len(val_harmful), batch_size) + 2 * _batches(len(val_harmless), batch_size)),
    }
    return Selection(
        layer=best.layer,
        position=best.position,
        direction=diffs[best.layer, best.position + n_pos].clone(),
        scores=scores,
        base_harmful=base_harmful,
        base_harmless=base_harmless,
        refusal_tokens=token_ids,
        cost=cost,
    )


def _score_effects(
    model: nn.Module,
    fmt: ChatFormat,
    candidates: list[CandidateScore],
    diffs: torch.Tensor,
    n_pos: int,
    edit: EditFactory,
    val_harmful: tuple[str, ...],
    val_harmless: tuple[str, ...],
    token_ids: list[int],
    base_harmless: float,
    batch_size: int,
    counter: Counter,
    progress: bool,
) -> CandidateScore:
    """The candidate whose edit gives the most harmful refusal while harmless refusal stays at or
    below the base model's; if none does, the largest harmful-minus-harmless effect.

    Harmful prompts are scored for every candidate first; harmless ones only down the harmful
    ranking until one candidate passes (all of them only when none does)."""

    def mean_log_odds(s: CandidateScore, prompts: tuple[str, ...]) -> float:
        with edit(s.layer, s.position, diffs[s.layer, s.position + n_pos]):
            return float(refusal_log_odds(last_logprobs(model, fmt, prompts, batch_size, counter), token_ids).mean())

    for s in tqdm(candidates, desc="rosi: edit effect on harmful prompts", unit="candidate", disable=not progress):
        s.edit_harmful = mean_log_odds(s, val_harmful)
    ranked = sorted(candidates, key=lambda s: s.edit_harmful, reverse=True)  # type: ignore[arg-type, return-value]
    for s in tqdm(ranked, desc="rosi: edit effect on harmless prompts", unit="candidate", disable=not progress):
        s.edit_harmless = mean_log_odds(s, val_harmless)
        if s.edit_harmless <= base_harmless:
            s.status = "chosen (edit effect: most harmful refusal, harmless refusal not above base)"
            return s
    best = max(ranked, key=lambda s: s.edit_harmful - s.edit_harmless)  # type: ignore[operator]
    best.status = "chosen (edit effect: largest harmful-minus-harmless refusal)"
    return best


def _relaxed_choice(scored: list[CandidateScore], kl_threshold: float) -> CandidateScore:
    """No candidate passed both filters (small models often fail them): drop the induce filter
    and double the KL threshold until some candidate is under it; lowest bypass among those."""
    threshold = kl_threshold if kl_threshold > 0 else 1e-3  # doubling must be able to grow it
    while True:
        under = [s for s in scored if s.kl is not None and s.kl <= threshold]
        if under:
            best = min(under, key=lambda s: s.bypass)  # type: ignore[arg-type, return-value]
            best.status = f"chosen (relaxed: no induce filter, kl <= {threshold:g})"
            return best
        threshold *= 2


def _batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)
