"""Judges: decide whether a reply refuses, or is unsafe. One interface, a registry, a module per judge.

- ``markers`` (:mod:`~rosi.judges.markers`): the refusal-marker judge, rosi's definition of a refusal;
- ``llamaguard:PATH_OR_HUB_ID`` (:mod:`~rosi.judges.llamaguard`): Llama Guard 3 run locally;
- ``llm:MODEL[#threshold=P|likeliest]`` (:mod:`~rosi.judges.llm`): any local instruction model asked whether
  the reply refused, complied, or complied after a disclaimer, scored from its answer letters'
  next-token probabilities (one forward pass per reply, no generation);
- ``openai:BASE_URL[#MODEL]`` / ``openai-prompted:BASE_URL[#MODEL]`` (:mod:`~rosi.judges.server`):
  a judge model behind an OpenAI-compatible endpoint, with its own classification template, or
  any instruction model asked Llama Guard 3's question in words.
"""

from rosi.judges.base import JUDGES, Judge, JudgeError, Verdict, make_judge, register
from rosi.judges.llamaguard import LLAMA_GUARD_CATEGORIES, LlamaGuardJudge, llama_guard_prompt, llama_guard_task, parse_llama_guard
from rosi.judges.llm import LLMJudge, llm_judge_task
from rosi.judges.markers import DEFAULT_NEW_TOKENS, GENERATION_BATCH, REFUSAL_MARKERS, SEARCH_TOKENS, MarkerJudge, is_refusal, refusal_rate
from rosi.judges.server import JUDGE_KEY_ENV, OpenAIJudge, PromptedOpenAIJudge

__all__ = [
    "DEFAULT_NEW_TOKENS",
    "GENERATION_BATCH",
    "SEARCH_TOKENS",
    "JUDGES",
    "JUDGE_KEY_ENV",
    "LLAMA_GUARD_CATEGORIES",
    "REFUSAL_MARKERS",
    "Judge",
    "JudgeError",
    "LLMJudge",
    "LlamaGuardJudge",
    "MarkerJudge",
    "OpenAIJudge",
    "PromptedOpenAIJudge",
    "Verdict",
    "is_refusal",
    "llama_guard_prompt",
    "llama_guard_task",
    "llm_judge_task",
    "make_judge",
    "parse_llama_guard",
    "refusal_rate",
    "register",
]
