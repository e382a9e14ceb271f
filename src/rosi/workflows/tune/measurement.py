"""A trial's scores: refusal on the three validation sets and the first-token KL on harmless prompts,
measured by the refusal meter (:mod:`rosi.measure`) with the tune's judge."""

from __future__ import annotations

import torch

from rosi.direction.score import refusal_log_odds, refusal_token_ids
from rosi.edit.strength import SEARCH_TOKENS
from rosi.judges import Judge
from rosi.measure import RefusalMeter
from rosi.metrics import kl_divergence
from rosi.model.generation import next_token_logprobs
from rosi.model.loading import LoadedModel
from rosi.prompts import PromptSet, PromptSets
from rosi.workflows.options import TuneOptions
from rosi.workflows.tune.pick import Scores


def split_broad(broad: PromptSet, n_rank: int) -> tuple[PromptSet | None, PromptSet]:
    """The broad harmless prompts' ranking sample and confirmation part: ``n_rank`` of one half
    (spread over their styles) rank; every other prompt (the other half, and the rest of the
    first) confirms, so no prompt does both; with ``n_rank`` 0 none ranks and all confirm."""
    if n_rank == 0:
        return None, broad
    ranking = broad.halves()[0].spread(min(n_rank, len(broad) // 2))
    ranked = set(ranking.instructions)
    keep = [i for i, text in enumerate(broad.instructions) if text not in ranked]
    categories = None if broad.categories is None else tuple(broad.categories[i] for i in keep)
    return ranking, PromptSet(tuple(broad.instructions[i] for i in keep), categories, name=broad.name)


class Measure:
    """Scores of the model in memory as it is now, on the validation sets (the base model's
    first-token distributions on harmless prompts kept for the KL).

    Cheap scores take the fast path: replies and first-token distributions from one generation
    pass, the prompts' shared prefix (the chat template's system turn) computed once. Confirmed
    scores take the plain path of ``rosi eval`` (no shared prefix), so they are the numbers an
    evaluation of the saved edit gives on the same prompts. Each path's KL is taken against the
    base model on the same path: the paths differ by rounding (in bfloat16, a KL of about 0.001),
    which would otherwise be counted as the edit's.

    With ``options.guard`` each validation set is split in two (:meth:`PromptSet.halves`): cheap
    scores rank trials on the first part (``rank_sets``), confirmed scores are measured on the
    second (``sets``), which never ranks, with every prompt's verdict kept for paired comparisons.
    The extra harmless prompts (``confirm_harmless``, ordinary requests of many styles) are split
    the same way (:func:`split_broad`): ``options.rank_harmless`` of one half join the ranking
    part, so the search ranks on the kind of prompts the guard bounds, the other half confirms."""

    def __init__(
        self,
        loaded: LoadedModel,
        prompts: PromptSets,
        options: TuneOptions,
        judge: Judge | None = None,
        confirm_harmless: PromptSet | None = None,
    ) -> None:
        self.loaded, self.options = loaded, options
        _, val_lookalike = prompts.need_lookalikes("rosi tune")
        full = {"harmful": prompts.val_harmful, "harmless": prompts.val_harmless, "lookalike": val_lookalike}
        split = {role: s.halves() for role, s in full.items()} if options.guard is not None else None
        self.rank_sets = {role: halves[0] for role, halves in split.items()} if split else full
        self.sets = {role: halves[1] for role, halves in split.items()} if split else full  # the confirmation part
        if split and confirm_harmless is not None:  # more harmless prompts: a sample ranks, the rest confirms
            ranking, confirming = split_broad(confirm_harmless, options.rank_harmless)
            if ranking is not None:
                self.rank_sets["harmless"] = self.rank_sets["harmless"] + ranking
            self.sets["harmless"] = self.sets["harmless"] + confirming
        self.meter = RefusalMeter(loaded, judge, batch_size=options.measure.generation_batch)
        self.ids = refusal_token_ids(loaded.tokenizer)
        # the plain generation path's first step is the forward pass's next-token distribution
        self.base_plain = self._logprobs(self.sets["harmless"])  # confirmation: the plain path
        rank_harmless = self.rank_sets["harmless"]
        if options.score == "first-token":
            self.base_fast = self.base_plain if rank_harmless is self.sets["harmless"] else self._logprobs(rank_harmless)
        else:  # ranking: the fast path (shared prefix)
            self.base_fast = self.meter.rate_and_logprobs(rank_harmless, 1, share_prefix=True)[1]

    def _logprobs(self, prompts: PromptSet) -> torch.Tensor:
        return next_token_logprobs(self.loaded.model, self.meter.fmt, prompts.instructions, batch_size=self.options.extract.batch_size)

    def cheap(self) -> Scores:
        if self.options.score == "first-token":
            lp = {role: self._logprobs(s) for role, s in self.rank_sets.items()}
            odds = {role: refusal_log_odds(v, self.ids) for role, v in lp.items()}
            rates = {role: float((o > 0).float().mean()) for role, o in odds.items()}
        else:
            out = {role: self.meter.rate_and_logprobs(s, SEARCH_TOKENS, share_prefix=True) for role, s in self.rank_sets.items()}
            lp = {role: v for role, (_, v) in out.items()}
            odds = {role: refusal_log_odds(v, self.ids) for role, v in lp.items()}
            rates = {role: rate.value for role, (rate, _) in out.items()}
        kl = float(kl_divergence(self.base_fast, lp["harmless"]).mean())
        return Scores(
            rates["harmful"], rates["harmless"], rates["lookalike"], kl, float(odds["harmful"].mean()), float(odds["lookalike"].mean())
        )

    def confirmed(self) -> Scores:
        n = self.options.measure.new_tokens
        out = {role: self.meter.rate_and_logprobs(s, n, share_prefix=False) for role, s in self.sets.items()}
        rates = {role: rate for role, (rate, _) in out.items()}
        kl = float(kl_divergence(self.base_plain, out["harmless"][1]).mean())
        return Scores(
            rates["harmful"].value,
            rates["harmless"].value,
            rates["lookalike"].value,
            kl,
            harmful_partial=rates["harmful"].partial_rate,
            lookalike_partial=rates["lookalike"].partial_rate,
            refused={role: [bool(r) for r in rate.refused] for role, rate in rates.items()},
        )
