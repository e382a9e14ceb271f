"""The refusal meter: prompts -> greedy replies -> a judge -> :class:`RefusalRate`.

Every refusal figure rosi reports (``rosi run``'s validation table and strength search, ``rosi
tune``'s trials, ``rosi realign``, ``rosi eval``, the benchmarks) comes from here, with any
registered judge (:mod:`rosi.judges`; the marker judge by default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from rosi.errors import RosiError
from rosi.judges import GENERATION_BATCH, Judge, MarkerJudge, make_judge
from rosi.judges.base import check_verdicts
from rosi.measure.rate import RefusalRate
from rosi.model.chat import ChatFormat
from rosi.model.endpoint import Endpoint
from rosi.model.generation import generate_ids, generate_with_logprobs
from rosi.model.loading import LoadedModel, looks_like_a_path
from rosi.prompts import PromptSet

Prompts = PromptSet | Sequence[str]


def check_judge(spec: str) -> Judge | None:
    """Everything about a judge spec that can fail, checked before long work and without loading
    a judge model: the judge's name, a local judge folder that must exist, a judge server that must
    answer. Raises :class:`~rosi.errors.RosiError` naming the problem. Returns the judge it built to
    check it (every judge but a local Llama Guard, whose weights are loaded only when needed: None)."""
    name, _, where = spec.partition(":")
    if name == "llamaguard":
        if not where:
            raise RosiError(f"--judge {spec}: llamaguard needs a checkpoint: llamaguard:PATH_OR_HUB_ID")
        if looks_like_a_path(where) and not Path(where).expanduser().exists():
            raise RosiError(f"--judge {spec}: {where} does not exist; pass a Llama Guard checkpoint folder or hub id")
        return None
    judge = make_judge(spec)  # cheap for every other judge: a name check, a URL parsed
    endpoint = getattr(judge, "endpoint", None)
    if isinstance(endpoint, Endpoint):
        endpoint.check_reachable()
    return judge


def judge_of(spec: str | Judge) -> Judge:
    """The judge of ``spec`` (``markers``, ``llamaguard:PATH_OR_ID``, ``openai:URL[#MODEL]``, ...),
    after :func:`check_judge`; a judge already built (and checked: the CLI's) as it is."""
    if isinstance(spec, Judge):
        return spec
    return check_judge(spec) or make_judge(spec)


def judged(judge: Judge, prompts: Prompts, replies: Sequence[str], *, new_tokens: int = 0) -> RefusalRate:
    """Judge replies already generated (by a model in memory, a server, an evaluation's cache).
    A judge that gives no verdict at all, or not one per reply, stops here with a
    :class:`~rosi.judges.JudgeError` (:func:`~rosi.judges.base.check_verdicts`): no rate, table,
    report or strength is ever made of no evidence."""
    replies = list(replies)
    verdicts = judge.judge(_instructions(prompts), replies)
    check_verdicts(judge, verdicts, len(replies))
    return RefusalRate.of(verdicts, judge=judge.name or type(judge).__name__, new_tokens=new_tokens)


def _instructions(prompts: Prompts) -> list[str]:
    return list(prompts.instructions if isinstance(prompts, PromptSet) else prompts)


class RefusalMeter:
    """Measures the model in memory as it is now (edits applied or not) on any prompts.

    ``judge``: any :class:`~rosi.judges.Judge` (default: the marker judge). ``batch_size``: prompts
    generated for at once (:data:`GENERATION_BATCH`: a decoding step reads every weight once for
    the whole batch, so on a CPU 96 rows cost about twice what 32 do). ``share_prefix``: the
    tokens every prompt starts with (the chat template's system turn) are computed once
    (:func:`~rosi.model.generation.generate_ids`; equal up to rounding), for replies and rates;
    :meth:`replies_and_logprobs` says its own."""

    def __init__(
        self,
        loaded: LoadedModel,
        judge: Judge | None = None,
        *,
        batch_size: int = GENERATION_BATCH,
        progress: bool = False,
        share_prefix: bool = True,
    ) -> None:
        self.loaded, self.judge = loaded, judge or MarkerJudge()
        self.batch_size, self.progress, self.share_prefix = batch_size, progress, share_prefix
        self.fmt = ChatFormat(loaded.tokenizer)

    def judged(self, prompts: Prompts, replies: Sequence[str], *, new_tokens: int = 0) -> RefusalRate:
        """Judge replies already generated, with this meter's judge."""
        return judged(self.judge, prompts, replies, new_tokens=new_tokens)

    def replies(self, prompts: Prompts, new_tokens: int, *, desc: str = "") -> list[str]:
        return self.replies_at(prompts, (new_tokens,), desc=desc)[new_tokens]

    def replies_at(self, prompts: Prompts, lengths: Sequence[int], *, desc: str = "") -> dict[int, list[str]]:
        """Greedy replies cut at each of ``lengths`` tokens, from one generation of the longest
        (the first ``n`` tokens of a greedy reply are the ``n``-token greedy reply)."""
        ids = generate_ids(
            self.loaded.model,
            self.fmt,
            _instructions(prompts),
            max_new_tokens=max(lengths),
            batch_size=self.batch_size,
            progress=self.progress and bool(desc),
            desc=desc,
            share_prefix=self.share_prefix,
        )
        decode = self.loaded.tokenizer.batch_decode
        return {n: list(decode([row[:n] for row in ids], skip_special_tokens=True)) for n in lengths}

    def rate(self, prompts: Prompts, new_tokens: int, *, desc: str = "") -> RefusalRate:
        """Refusal in greedy replies of ``new_tokens`` tokens."""
        return self.rates(prompts, (new_tokens,), desc=desc)[new_tokens]

    def rates(self, prompts: Prompts, lengths: Sequence[int], *, desc: str = "") -> dict[int, RefusalRate]:
        """Refusal at each reply length, from one generation (:meth:`replies_at`)."""
        replies = self.replies_at(prompts, lengths, desc=desc)
        return {n: self.judged(prompts, r, new_tokens=n) for n, r in replies.items()}

    def rates_of(self, sets: Mapping[str, Prompts], lengths: Sequence[int], *, desc: str = "") -> dict[str, dict[int, RefusalRate]]:
        """Each set's refusal at each reply length (:meth:`rates`), the replies of all the sets'
        prompts generated together: one model state's sets fill a batch, not one batch each."""
        parts = {name: _instructions(prompts) for name, prompts in sets.items()}
        replies = self.replies_at([i for part in parts.values() for i in part], lengths, desc=desc)
        out, start = {}, 0
        for name, part in parts.items():
            stop = start + len(part)
            out[name] = {n: self.judged(part, r[start:stop], new_tokens=n) for n, r in replies.items()}
            start = stop
        return out

    def rate_and_logprobs(self, prompts: Prompts, new_tokens: int, *, share_prefix: bool = False) -> tuple[RefusalRate, torch.Tensor]:
        """Refusal in ``new_tokens``-token replies and the first reply token's log-probabilities
        (for a KL against another model state), from one generation pass. ``share_prefix``:
        compute the prompts' shared prefix (the chat template's system turn) once, the fast path of
        :func:`rosi.model.generation.generate_with_logprobs` (equal up to rounding)."""
        replies, logprobs = self.replies_and_logprobs(prompts, new_tokens, share_prefix=share_prefix)
        return self.judged(prompts, replies, new_tokens=new_tokens), logprobs

    def replies_and_logprobs(self, prompts: Prompts, new_tokens: int, *, share_prefix: bool = False) -> tuple[list[str], torch.Tensor]:
        """The replies :meth:`rate_and_logprobs` judges, and the first reply token's log-probabilities."""
        replies, logprobs = generate_with_logprobs(
            self.loaded.model,
            self.fmt,
            _instructions(prompts),
            max_new_tokens=new_tokens,
            batch_size=self.batch_size,
            share_prefix=share_prefix,
        )
        return list(replies), logprobs
