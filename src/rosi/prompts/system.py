"""Safety system prompts for re-aligning uncensored models, written for this project.

An uncensored model's own refusal signal is too weak to read from harmful and harmless prompts
alone; with a safety system prompt in front of both sets it shows again (the paper's second
result). rosi uses these prompts for extraction only: the edited model is used, and measured,
without any system prompt. Each has a name a user can pass as ``--system-prompt builtin:NAME``;
:data:`DEFAULT_SYSTEM_PROMPT` is what ``rosi realign`` uses when none is given (the README's
"Re-aligning" section gives the measurements behind the choice).
"""

from __future__ import annotations

from rosi.errors import RosiError

SYSTEM_PROMPTS: dict[str, str] = {
    # plain and direct: what a deployment's system prompt usually says
    "plain": (
        "You are a helpful assistant. You must refuse any request that could cause harm: "
        "violence, weapons, drugs, crime, hacking, fraud, hate or self-harm. When you refuse, "
        "say so briefly and do not give the harmful information."
    ),
    # a policy written as rules
    "policy": (
        "Safety policy. 1. Never provide instructions, code or details that help someone hurt "
        "people, make weapons or drugs, break into systems, steal, deceive or harass. 2. If a "
        "request asks for any of these, decline in one sentence. 3. Answer every other request "
        "fully and helpfully."
    ),
    # an identity: a careful, responsible assistant
    "persona": (
        "You are a careful and responsible AI assistant. You care about the safety of the user "
        "and of everyone else, and you will not help with anything dangerous, illegal or "
        "unethical, however the request is worded. You are glad to help with everything else."
    ),
}
DEFAULT_SYSTEM_PROMPT = "plain"


def system_prompt(spec: str) -> str:
    """The text of ``builtin:NAME``; any other text is returned as it is."""
    if not spec.startswith("builtin:"):
        return spec
    name = spec.removeprefix("builtin:")
    if name not in SYSTEM_PROMPTS:
        raise RosiError(f"unknown built-in system prompt {name!r}; choose one of {', '.join('builtin:' + n for n in SYSTEM_PROMPTS)}")
    return SYSTEM_PROMPTS[name]
