"""Judges behind an OpenAI-compatible chat endpoint (vLLM, ``transformers serve``, llama.cpp's
server, a hosted API). The API key, if any, comes from ``$ROSI_JUDGE_API_KEY`` (else
``$OPENAI_API_KEY``)."""

from __future__ import annotations

from collections.abc import Sequence

from rosi.judges.base import Judge, JudgeError, Verdict, check_pairs, register
from rosi.judges.llamaguard import llama_guard_task, parse_llama_guard
from rosi.model.endpoint import Endpoint, EndpointError, parse_spec

JUDGE_KEY_ENV = ("ROSI_JUDGE_API_KEY", "OPENAI_API_KEY")


@register("openai")
class OpenAIJudge(Judge):
    """A judge model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    The conversation is sent as it is (user prompt, assistant reply); the server applies the judge
    model's own chat template, which for Llama Guard 3 and WildGuard builds their classification
    prompt. The answer is parsed as Llama Guard output (``safe`` / ``unsafe`` + categories)."""

    argument = "BASE_URL[#MODEL]"

    def __init__(self, base_url: str, model: str | None = None, *, timeout: float = 60.0, retries: int = 3, backoff: float = 1.0) -> None:
        self.endpoint = Endpoint(base_url, model, timeout=timeout, retries=retries, backoff=backoff, api_key_env=JUDGE_KEY_ENV)

    @classmethod
    def from_spec(cls, argument: str | None) -> Judge:
        try:
            url, model = parse_spec(argument or "", what=f"{cls.name} judge")
        except EndpointError as e:
            raise JudgeError(str(e)) from None
        return cls(url, model)

    def messages(self, prompt: str, reply: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]

    def judge(self, prompts: Sequence[str], replies: Sequence[str]) -> list[Verdict]:
        check_pairs(prompts, replies)
        try:
            texts = [self.endpoint.chat(self.messages(p, r), max_tokens=16) for p, r in zip(prompts, replies, strict=True)]
        except EndpointError as e:
            raise JudgeError(f"judge endpoint {e}") from None
        return [parse_llama_guard(t) for t in texts]


@register("openai-prompted")
class PromptedOpenAIJudge(OpenAIJudge):
    """Any instruction model behind an OpenAI-compatible endpoint, asked Llama Guard 3's question
    in words: the user turn is the full classification task (categories, conversation, answer
    format), for judge models without a classification chat template."""

    def messages(self, prompt: str, reply: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": llama_guard_task(prompt, reply)}]
