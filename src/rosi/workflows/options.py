"""The options of the workflows (:func:`rosi.extract`, :func:`rosi.run`, :func:`rosi.realign`,
:func:`rosi.tune`), as frozen values the CLI fills, each workflow's composed of the parts it uses:
extraction, the strength search, measurement and output.

No torch here: ``rosi --help`` shows these defaults without loading it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from rosi.edit.methods import DEFAULT_METHOD, EditForm, searchable_methods
from rosi.errors import RosiError
from rosi.judges.base import Judge
from rosi.judges.markers import DEFAULT_NEW_TOKENS, GENERATION_BATCH

DEFAULT_BUDGET = 0.10  # allowed rise of refusal on harmless validation prompts during the strength search
DEFAULT_BATCH_SIZE = 32


def _default_system_prompt() -> str:
    from rosi.prompts.system import DEFAULT_SYSTEM_PROMPT, SYSTEM_PROMPTS

    return SYSTEM_PROMPTS[DEFAULT_SYSTEM_PROMPT]


@dataclass(frozen=True)
class ExtractOptions:
    """How to extract and select the direction.

    ``form`` is the edit the direction is for: when no candidate passes Arditi's filters,
    selection scores candidates by that edit's effect. ``system_prompt`` is used for extraction
    only (re-aligning uncensored models); with ``score_with_system_prompt`` (the default of
    ``rosi run``) selection also scores the candidates, and read-out methods fit their read-outs,
    with it in the context, otherwise without it, as the edited model will be used (``rosi
    realign``). ``layer`` and ``position`` pin the direction instead of selecting it (both or
    neither)."""

    form: EditForm = field(default_factory=EditForm)
    system_prompt: str | None = None
    score_with_system_prompt: bool = True
    layer: int | None = None
    position: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    progress: bool = True

    def __post_init__(self) -> None:
        if (self.layer is None) != (self.position is None):
            raise RosiError("pin both --layer and --position, or neither (then rosi selects them)")
        if self.position is not None and self.position >= 0:
            raise RosiError(f"--position counts from the end of the prompt and must be negative (-1 = last token), got {self.position}")
        if self.batch_size < 1:
            raise RosiError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class StrengthOptions:
    """How :func:`rosi.run` chooses the strength: given (``strength``), or searched up the
    method's grid (or ``grid``) on the validation prompts within ``budget``, with ``bisect``
    midpoints; ``compare_paper``: also measure the paper's form beside the chosen edit (its own
    strength search and validation replies: about a third more time, so on request)."""

    strength: float | None = None
    budget: float = DEFAULT_BUDGET
    grid: tuple[float, ...] | None = None  # strengths searched (default: the method's own grid)
    bisect: int = 0  # midpoints tried between the best strength and the next one tried above it
    compare_paper: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.budget) and 0 <= self.budget <= 1):
            raise RosiError(f"--budget is a share of prompts between 0 and 1 (0.1 = 10 points), got {self.budget}")
        if not 0 <= self.bisect <= 8:
            raise RosiError(f"--bisect is a number of midpoints between 0 and 8, got {self.bisect}")
        if self.grid is not None and (not self.grid or not all(math.isfinite(g) and g > 0 for g in self.grid)):
            raise RosiError(f"the strength grid must be positive finite numbers, got {self.grid}")


@dataclass(frozen=True)
class OutputOptions:
    """What a workflow writes: the output ``format`` (see :mod:`rosi.export.formats`), what
    tensors of a type the gguf package cannot quantize become (``gguf_type``), and whether an
    existing output rosi wrote may be replaced."""

    format: str = "checkpoint"
    gguf_type: str = "Q8_0"
    overwrite: bool = False


@dataclass(frozen=True)
class MeasureOptions:
    """How refusal is measured: greedy replies of ``new_tokens`` tokens, judged by ``judge``: a
    :class:`~rosi.judges.Judge` (the CLI builds and checks the one --judge names, once) or a
    :mod:`rosi.judges` spec (``markers``, ``llamaguard:PATH``, ``openai:URL``, ...), built and
    checked when the workflow starts. ``generation_batch``: prompts generated for at once
    (:class:`~rosi.measure.RefusalMeter`'s ``batch_size``)."""

    new_tokens: int = DEFAULT_NEW_TOKENS
    judge: str | Judge = "markers"
    generation_batch: int = GENERATION_BATCH

    def __post_init__(self) -> None:
        if self.new_tokens < 1:
            raise RosiError(f"--max-new-tokens must be at least 1, got {self.new_tokens}")
        if self.generation_batch < 1:
            raise RosiError(f"--generation-batch must be at least 1, got {self.generation_batch}")
        if not self.judge:
            raise RosiError("--judge needs a judge spec, e.g. markers")

    @property
    def judge_spec(self) -> str:
        """The judge as a spec (what a report records)."""
        return self.judge if isinstance(self.judge, str) else self.judge.label


@dataclass(frozen=True)
class RunOptions:
    """:func:`rosi.run`: how the direction is extracted, how the strength is chosen, how refusal
    is measured, and what is written."""

    extract: ExtractOptions = field(default_factory=ExtractOptions)
    strength: StrengthOptions = field(default_factory=StrengthOptions)
    measure: MeasureOptions = field(default_factory=MeasureOptions)
    output: OutputOptions = field(default_factory=OutputOptions)


DIRECTION_SOURCES = ("auto", "null", "extracted")
REALIGN_BUDGET = 0.05
# The edit realign makes (docs/realign.md: measured on validation prompts
# against probe, gate without the null space, gate with other ridges and surgical): gate with the
# read-out kept off 90% of the benign inputs' energy adds the direction on harmful inputs and
# hardly at all on harmless ones.
REALIGN_FORM = EditForm("gate", ridge=0.1, null_space=0.9)
# Its strength is measured against the harmful-minus-harmless gap the model has left (much
# smaller than an aligned model's, and the null-space constraint takes part of the read-out's
# signal away): its grid reaches further than gate's own.
REALIGN_GRID = (2.0, 4.0, 8.0, 12.0, 16.0, 20.0, 24.0, 32.0)
# Its steps are coarse where a larger model's budget is tight (Qwen2.5-Coder-1.5B: k 2 within a
# 5-point budget, k 4 past it): two midpoints between the best strength and the next one tried.
REALIGN_BISECT = 2
# Validation prompts per set (None: all of them; rosi run takes 32). The harmless budget is a few
# points, and on 32 prompts one prompt is 3.1 points: the search's decision then hangs on single
# prompts. All 102 built-in harmless validation prompts (and all 36 harmful ones) are measured.
REALIGN_N_VAL: int | None = None
# The prompts the read-out is fit on: rosi's harmful requests in the imperative and as questions,
# multi-part requests, persuasive writing and fiction, against rosi's harmless requests and
# ordinary ones in eight styles. Fit on the imperative ones alone, the read-out fired on harmful
# requests written like them and hardly on other styles; on these, the re-aligned abliterated
# 0.5B refused more of every held-out set and style with Alpaca unchanged, on validation as well
# (benchmarks/results/realign_eval_qwen0.5b_styles.json; leave-one-style-out:
# benchmarks/style_holdout.py).
REALIGN_HARMFUL = "builtin:harmful+harmful_styles:train"
REALIGN_HARMLESS = "builtin:harmless+harmless_styles:train"


def realign_extract(**changes: object) -> ExtractOptions:
    """Extraction as :func:`rosi.realign` does it by default (``changes`` on top): a built-in safety
    system prompt, candidates scored and read-outs fit without it, the :data:`REALIGN_FORM` edit."""
    defaults: dict[str, object] = {"form": REALIGN_FORM, "system_prompt": _default_system_prompt(), "score_with_system_prompt": False}
    return ExtractOptions(**{**defaults, **changes})  # type: ignore[arg-type]


def realign_strength(**changes: object) -> StrengthOptions:
    """The strength search :func:`rosi.realign` makes by default (``changes`` on top)."""
    defaults: dict[str, object] = {"budget": REALIGN_BUDGET, "grid": REALIGN_GRID, "bisect": REALIGN_BISECT}
    return StrengthOptions(**{**defaults, **changes})  # type: ignore[arg-type]


@dataclass(frozen=True)
class RealignOptions:
    """:func:`rosi.workflows.realign`: :class:`RunOptions`'s parts with the defaults measured for uncensored
    models (docs/realign.md): a built-in safety system prompt for extraction,
    candidates scored and read-outs fit without it, the ``gate`` edit with a null-space
    constraint (:data:`REALIGN_FORM`: its read-out looks at the writers' inputs, which ablation
    leaves intact, and stays off the benign inputs' principal subspace), its own strength grid
    (:data:`REALIGN_GRID`, with :data:`REALIGN_BISECT` midpoints where it steps past the
    budget), a 5-point budget. ``direction``: ``null``
    re-adds the direction every writer had removed (found in the weights, see
    :mod:`rosi.direction.null`), ``extracted`` extracts one under the system prompt, ``auto``
    the first where the weights show an ablation, else the second."""

    extract: ExtractOptions = field(default_factory=realign_extract)
    strength: StrengthOptions = field(default_factory=realign_strength)
    measure: MeasureOptions = field(default_factory=MeasureOptions)
    output: OutputOptions = field(default_factory=OutputOptions)
    direction: str = "auto"

    def __post_init__(self) -> None:
        if self.direction not in DIRECTION_SOURCES:
            raise RosiError(f"unknown direction source {self.direction!r}; choose one of {', '.join(DIRECTION_SOURCES)}")

    @property
    def run(self) -> RunOptions:
        """What :func:`rosi.run` is given once the way back is found."""
        return RunOptions(self.extract, self.strength, self.measure, self.output)


# the forms rosi tune can search: those with a strength grid, rosi run's default first
TUNE_FORMS = (DEFAULT_METHOD, *(name for name in searchable_methods() if name != DEFAULT_METHOD))
# searched by default: the fitted and probe read-outs. In three tunes of Qwen2.5-Coder-0.5B no
# `rosi` trial reached the default edit's validation harmful refusal and the `scale` trials that
# did refused more look-alikes than it (docs/tune.md); both stay in every tune as its references
TUNE_SEARCHED = ("probe", "gate", "surgical")
TUNE_SCORES = ("first-token", "replies")
TUNE_N_VAL_LOOKALIKE = 60  # rosi tune's look-alike validation prompts: 5 of each of the 12 built-in kinds (spread over them)
MAX_SEED = 2**32 - 1  # the sampler's seed (numpy's): 0 to 2**32 - 1
TUNE_FLOORS = ("default", "paper")  # reference trials whose harmful refusal the kept trial can be asked to match


@dataclass(frozen=True)
class TuneOptions:
    """:func:`rosi.workflows.tune`: ``trials`` searched (seeded; the journal lets an interrupted tune
    resume; the two reference trials among them, whatever ``forms``), over ``forms``, the selected layer and ``layer_window`` layers either side, writer
    scopes, strengths and the fits' ridge and null space; ``score`` the trials' cheap score;
    ``confirm`` front trials re-measured on full replies (the order they are confirmed in follows
    the constraints, as shares of prompts and nats, and ``min_harmful``: the harmful refusal a
    trial must reach, a share or a reference trial's own).

    ``guard`` (the default, a margin): each validation set is split into a ranking part (cheap
    scores, the search) and a confirmation part that never ranks; a confirmed trial is kept only
    when, paired prompt by prompt on the confirmation part with rosi run's default edit, it refuses
    fewer look-alikes with a 95% interval that excludes zero, at most ``guard`` fewer harmful
    prompts and a harmless rise whose upper bound is at most ``guard``; when none does, the default
    edit is kept and the report says so. ``guard=None``: the kept trial is, of those reaching
    ``min_harmful``, the one with the least look-alike rise within the constraints (``None``: the
    most harmful refusal within them), on all validation prompts."""

    extract: ExtractOptions = field(default_factory=ExtractOptions)
    measure: MeasureOptions = field(default_factory=MeasureOptions)
    output: OutputOptions = field(default_factory=OutputOptions)
    trials: int = 40
    seed: int = 0
    forms: tuple[str, ...] = TUNE_SEARCHED
    layer_window: int = 2
    score: str = "replies"  # measured: first-token log-odds do not track Qwen2.5-Coder's refusals (docs/tune.md)
    confirm: int = 4
    max_harmless_rise: float = 0.05
    max_lookalike_rise: float = 0.10
    max_kl: float = 0.10
    min_harmful: float | str | None = "default"
    # the pick that accounts for noise: the margin of tune.pick.guarded_pick (None: the rule above on all validation prompts)
    guard: float | None = 0.03
    # with the guard and extra harmless confirmation prompts: how many of them (from one half,
    # spread over their styles) join the ranking part, so the search sees ordinary requests of
    # many styles; the other half confirms. 0: all of them confirm, none ranks.
    rank_harmless: int = 48
    journal: Path | None = None

    def __post_init__(self) -> None:
        from rosi.edit.methods import get_method

        if self.trials < 1:
            raise RosiError(f"--trials must be at least 1, got {self.trials}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise RosiError(f"--seed must be a whole number between 0 and {MAX_SEED} (the sampler's seed), got {self.seed!r}")
        if not self.forms:
            raise RosiError("--forms needs at least one edit form")
        for form in self.forms:
            if not get_method(form).searchable:
                raise RosiError(f"rosi tune searches the forms with a strength grid ({', '.join(TUNE_FORMS)}), not {form!r}")
        if self.layer_window < 0:
            raise RosiError(f"--layer-window must be >= 0, got {self.layer_window}")
        if self.score not in TUNE_SCORES:
            raise RosiError(f"unknown score {self.score!r}; choose one of {', '.join(TUNE_SCORES)}")
        if self.confirm < 0:
            raise RosiError(f"--confirm must be >= 0, got {self.confirm}")
        for name in ("max_harmless_rise", "max_lookalike_rise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 1):
                raise RosiError(f"--{name.replace('_', '-')} is a share of prompts between 0 and 1 (0.05 = 5 points), got {value}")
        if not (math.isfinite(self.max_kl) and self.max_kl >= 0):
            raise RosiError(f"--max-kl must be a number of nats >= 0, got {self.max_kl}")
        if self.rank_harmless < 0:
            raise RosiError(f"--rank-harmless must be >= 0, got {self.rank_harmless}")
        if self.guard is not None and not (math.isfinite(self.guard) and 0 <= self.guard <= 1):
            raise RosiError(f"--guard is a share of prompts between 0 and 1 (0.03 = 3 points) or none, got {self.guard}")
        if self.guard is not None and self.confirm < 1:
            raise RosiError(
                "--guard compares confirmed trials with rosi run's default edit: confirm at least one (--confirm 1) or pass --guard none"
            )
        floor = self.min_harmful
        if isinstance(floor, str) and floor not in TUNE_FLOORS:
            raise RosiError(f"--min-harmful is a share between 0 and 1, {', '.join(TUNE_FLOORS)} or none, got {floor!r}")
        if isinstance(floor, float | int) and not (math.isfinite(floor) and 0 <= floor <= 1):
            raise RosiError(f"--min-harmful is a share of prompts between 0 and 1 (0.9 = 90%), got {floor}")
