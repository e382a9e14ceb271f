"""The edit methods: one registry entry each.

Every rosi edit but ``surgical`` is rank one. With a weight ``W`` in ``[out, in]`` layout (``out`` is the
residual stream) and the unit safety direction ``s_hat``::

    W' = W + outer(s_hat, r)

and a method is the choice of the right factor ``r``: a function of ``W`` (the paper's form,
``scale``, ``ablate``) or a read-out vector measured on prompts (``probe`` from two mean inputs,
``gate`` fit on single prompts' inputs, harmful against harmless and look-alike). For an input
``x`` the edit adds ``(r . x) * s_hat`` to the writer's output. ``surgical`` is ``gate`` plus a
second term: the false-refusal direction ``f_hat`` (look-alike minus harmless, orthogonal to
``s_hat``) ablated from the same writers, ``W' = W + s_hat r^T - f_hat f_hat^T W`` (rank two).

A :class:`Method` holds everything rosi needs to know about one form: its right factor, the name
of its strength, whether it needs measured read-outs, the grid ``rosi run`` searches, the
strength at which direction selection tries it, and the read-out ``u`` with which it acts on a
writer's output (``r . x = strength * u . (W x)``, for choosing writers); for a form fit on single
prompts, its :class:`SampleFit` (the pure fit function, and what the fit offers); the writer kinds
it edits. The CLI's choices, the strength search, the tune's search space and the methods table of
docs/method.md all come from :data:`METHODS`, and every other module asks an entry's fields, never
its name: adding a method is one entry here (and its fit function). The defaults the entries share
(:data:`STRENGTH_GRID`, :data:`EFFECT_STRENGTH`) are stated once. (No torch import: the CLI lists
the methods without loading it.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rosi.errors import EditError

if TYPE_CHECKING:
    from torch import Tensor

# r(W, s_hat, strength) for W in [..., out, in] layout (a stack of matrices gives a stack of factors).
RightFactor = Callable[["Tensor", "Tensor", float], "Tensor"]


def paper_factor(weight: Tensor, s_hat: Tensor, alpha: float) -> Tensor:
    """``alpha * w_bar``, ``w_bar`` the mean of the rows of ``W`` (the paper's Eq. 6).
    ``w_bar . x`` is the mean coordinate of ``W x``."""
    return alpha * weight.mean(dim=-2)


def scale_factor(weight: Tensor, s_hat: Tensor, beta: float) -> Tensor:
    """``beta * s_hat^T W``: the component of every output along ``s_hat`` grows by ``1 + beta``."""
    return beta * (s_hat @ weight)


def ablate_factor(weight: Tensor, s_hat: Tensor, alpha: float) -> Tensor:
    """``-alpha * s_hat^T W``: at ``alpha = 1`` the output has no component along ``s_hat``."""
    return -alpha * (s_hat @ weight)


# How the weights alone give back a method's right factor r from the edited matrix W' = W + s r^T
# (for `rosi verify` of a patched model; s the unit direction, k the strength, ``right`` the
# recorded factor where the recovery needs it). Read-out methods' factors were measured on
# prompts and cannot be recovered.
Recover = Callable[["Tensor", "Tensor", float, "Tensor"], "Tensor"]


def scale_recover(w: Tensor, s: Tensor, k: float, right: Tensor) -> Tensor:
    """``s^T W' = (1 + beta) s^T W``, so ``r = beta / (1 + beta) s^T W'``."""
    return (k / (1 + k)) * (s @ w)


def ablate_recover(w: Tensor, s: Tensor, k: float, right: Tensor) -> Tensor:
    """``s^T W' = (1 - alpha) s^T W``, so ``r = -alpha / (1 - alpha) s^T W'``; at ``alpha = 1``
    nothing is left along ``s`` and ``s^T W' = 0 = r * 0``: the check is that ``s^T W'`` vanishes
    (the returned value is ``right`` plus ``s^T W'``)."""
    if abs(1 - k) > 1e-6:
        return (-k / (1 - k)) * (s @ w)
    return right + s @ w


def paper_recover(w: Tensor, s: Tensor, k: float, right: Tensor) -> Tensor:
    """``w_bar' = w_bar + mean(s) r`` and ``r = alpha w_bar``, so ``r = alpha (w_bar' - mean(s) r)``."""
    return k * (w.mean(dim=-2) - s.mean() * right)


# The read-out forms' defaults, stated once: the strengths ``rosi run`` searches (``k`` in units
# of the direction's harmful-minus-harmless gap) and the strength direction selection tries.
STRENGTH_GRID = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)
EFFECT_STRENGTH = 2.0

# A fit's unit read-out of one writer from its single-prompt inputs: (harmful [n_h, in], benign
# [n_b, in], ridge, null-space energy or None) -> [in].
FitRead = Callable[["Tensor", "Tensor", float, "float | None"], "Tensor"]


def gate_fit(harmful: Tensor, benign: Tensor, ridge: float, null_space: float | None) -> Tensor:
    """:func:`rosi.edit.rank_one.gate_read`: a ridge fit over every input coordinate, about 1 on
    harmful inputs and 0 on benign ones."""
    from rosi.edit.rank_one import gate_read

    return gate_read(harmful, benign, ridge=ridge, null_space=null_space)


def neuron_fit(harmful: Tensor, benign: Tensor, ridge: float, null_space: float | None) -> Tensor:
    """:func:`rosi.edit.rank_one.neuron_read`: non-negative weights on the harm-only MLP neurons
    (it reads no benign subspace, so no null space)."""
    from rosi.edit.rank_one import neuron_read

    return neuron_read(harmful, benign, ridge=ridge)


@dataclass(frozen=True)
class SampleFit:
    """How a form fit on single prompts' inputs gets each writer's read-out."""

    name: str  # in messages; forms with the same fit share its read-outs (rosi tune fits once for both)
    read: FitRead
    null_space: bool = True  # the fit can keep its read-out off the benign inputs' subspace (--null-space)
    tokens: bool = True  # a token-level fit is offered (--fit-tokens)
    neurons: bool = False  # the read-outs are sparse over neurons: a run's note counts the neurons each reads


GATE_FIT = SampleFit("gate", gate_fit)
NEURON_FIT = SampleFit("neurons", neuron_fit, null_space=False, tokens=False, neurons=True)


@dataclass(frozen=True)
class Method:
    name: str
    symbol: str  # the strength's name: alpha, beta, k
    formula: str  # the edited matrix, for help texts and docs/method.md
    right_factor: str  # the right factor r in words (docs/method.md)
    use: str  # one line: what the method is for
    factor: RightFactor | None  # None: the right factor is a read-out measured on prompts
    output_readout: Callable[[Tensor], Tensor] | None  # u(s_hat) with r . x = strength * u . (W x); None for read-out methods
    grid: tuple[float, ...] = STRENGTH_GRID  # strengths rosi run searches, smallest first; () = not offered by rosi run
    effect_strength: float | None = EFFECT_STRENGTH  # strength at which direction selection tries the edit; None: not tried
    default_strength: float | None = None  # rosi edit's strength when none is given
    # the read-out is fit on single prompts' inputs (harmful, harmless, look-alike), and how:
    # GATE_FIT (ridge over every input coordinate), NEURON_FIT (non-negative, on harm-only MLP neurons)
    fit: SampleFit | None = None
    writer_kinds: tuple[str, ...] = ()  # the writer kinds the method edits in its scope (empty: every measurable writer)
    rank: int = 1  # 2: a second term along the false-refusal direction (``surgical``)
    # re-adds a direction ablated from every writer (rosi realign): the right factor does not read
    # the writers' own component along the direction, which ablation set to zero
    survives_ablation: bool = False
    reference_strength: float | None = None  # the strength of this form's reference trial in rosi tune
    recover: Recover | None = None  # the right factor from the edited weights (rosi verify), where it can be

    @property
    def needs_reads(self) -> bool:
        """The right factor is measured on prompts (``apply_edit(..., reads=...)``), not computed from ``W``."""
        return self.factor is None

    @property
    def searchable(self) -> bool:
        return bool(self.grid)

    @property
    def samples(self) -> bool:
        """The read-out is fit on single prompts' inputs (collected after direction selection)."""
        return self.fit is not None

    @property
    def tried_as(self) -> Method:
        """The form direction selection tries in this one's place: a form fit on single prompts is
        tried as ``probe``, its mean-input relative (its samples are taken at the chosen position
        only, after selection); every other form as itself."""
        return METHODS["probe"] if self.samples else self


NEURON_QUANTILE = 0.95  # the neurons fit keeps a neuron whose mean harmful activation is above this quantile of its benign ones

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "rosi",
            "alpha",
            "W + alpha * s_hat * w_bar^T",
            "`alpha * W.mean(dim=0)` (mean of the rows)",
            "the paper's Eq. 6",
            paper_factor,
            lambda s_hat: s_hat.new_full(s_hat.shape, 1.0 / s_hat.numel()),
            grid=(12.5, 25.0, 50.0, 100.0, 200.0),
            effect_strength=50.0,
            survives_ablation=True,
            reference_strength=25.0,  # the paper's alpha
            recover=paper_recover,
        ),
        Method(
            "scale",
            "beta",
            "W + beta * s_hat s_hat^T W",
            "`beta * s_hat^T W`",
            "amplify the component already there",
            scale_factor,
            lambda s_hat: s_hat,
            grid=(0.5, 1.0, 1.5, 2.0, 3.0, 4.0),
            reference_strength=2.0,  # rosi run's default edit (beta 2 on the selected writers)
            recover=scale_recover,
        ),
        Method(
            "ablate",
            "alpha",
            "W - alpha * s_hat s_hat^T W",
            "`-alpha * s_hat^T W`",
            "abliteration (baselines, comparisons)",
            ablate_factor,
            lambda s_hat: -s_hat,
            grid=(),  # not offered by rosi run
            effect_strength=None,
            default_strength=1.0,
            recover=ablate_recover,
        ),
        Method(
            "probe",
            "k",
            "W + k * s_hat u^T",
            "`k * u`, `u` measured on prompts",
            "add the direction where the input looks harmful",
            None,
            None,
            survives_ablation=True,
        ),
        Method(
            "gate",
            "k",
            "W + k * s_hat u^T",
            "`k * u`, `u` fit on single prompts (1 on harmful, 0 on harmless and look-alike inputs)",
            "add the direction where the input is harmful, not where it only sounds so",
            None,
            None,
            fit=GATE_FIT,
            survives_ablation=True,
        ),
        Method(
            "surgical",
            "k",
            "W + k * s_hat u^T - f_hat f_hat^T W",
            "`k * u` as for `gate`, and `-f_hat^T W` along the false-refusal direction `f_hat`",
            "`gate`, and remove what makes safe look-alikes refused (rank two)",
            None,
            None,
            fit=GATE_FIT,
            rank=2,
            survives_ablation=True,
        ),
        Method(
            "neurons",
            "k",
            "W + k * s_hat u^T",
            "`k * u`, `u` non-negative weights (signed as each neuron's harmful activation) on the MLP neurons that fire "
            f"on harmful inputs above the {NEURON_QUANTILE:.0%} quantile of their benign ones, zero on every other neuron",
            "add the direction where harm-only neurons fire (MLP down projections only)",
            None,
            None,
            fit=NEURON_FIT,
            writer_kinds=("mlp",),
            survives_ablation=True,
        ),
    )
}
DEFAULT_METHOD = "scale"  # rosi run's method; docs/method.md ("Which one") says why
SCOPES = ("selective", "all")
DEFAULT_SCOPE = "selective"
DEFAULT_RATIO = 0.25
GATE_RIDGE = 0.01  # the gate fit's default ridge, relative to the inputs' mean squared norm
# Where a token-level fit reads the harmful side (rosi.direction.tokens): the direction's
# post-instruction position, the user's last token, or both.
READS = ("decide", "instruction", "both")


@dataclass(frozen=True)
class EditForm:
    """The edit a run makes: the method, and which writers it edits (``selective``: those whose
    edit term is larger on harmful than on harmless prompts, by the rule of
    :func:`rosi.edit.scope.select_writers` with ``ratio``; ``all``: every attention/MLP writer)."""

    method: str = DEFAULT_METHOD
    scope: str = DEFAULT_SCOPE
    ratio: float = DEFAULT_RATIO
    ridge: float = GATE_RIDGE  # gate/surgical: the fit's regularisation
    null_space: float | None = None  # gate/surgical: keep the read-out off this energy of the benign inputs' subspace
    # gate/surgical: the fit's benign side covers every token the edit acts on (the harmless and
    # look-alike prompts' every token and their own replies), not one position per prompt
    tokens: bool = False
    read: str = "decide"  # token-level fits: where the harmful side is read (READS)

    def __post_init__(self) -> None:
        spec = get_method(self.method)
        if self.tokens and not (spec.fit is not None and spec.fit.tokens):
            raise EditError(f"a token-level fit is offered for the gate and surgical methods, not {self.method!r}")
        if self.read not in READS:
            raise EditError(f"unknown read position {self.read!r}; choose one of {', '.join(READS)}")
        if self.read != "decide" and not self.tokens:
            raise EditError("the read position is an option of the token-level fit: add --fit-tokens")
        if self.scope not in SCOPES:
            raise EditError(f"unknown scope {self.scope!r}; choose one of {', '.join(SCOPES)}")
        if not self.ratio >= 0:  # also refuses NaN
            raise EditError(f"the writer ratio must be >= 0, got {self.ratio}")
        if not self.ridge >= 0:
            raise EditError(f"the gate's ridge must be >= 0, got {self.ridge}")
        if self.null_space is not None and not 0 < self.null_space < 1:
            raise EditError(f"the gate's null-space energy must be between 0 and 1 (e.g. 0.99), got {self.null_space}")

    @property
    def spec(self) -> Method:
        return METHODS[self.method]


def get_method(name: str) -> Method:
    """The registry's entry of a method name (where a name comes in: the CLI, a record, a journal)."""
    if name not in METHODS:
        raise EditError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def method_of(form: Method | EditForm | str) -> Method:
    """The registry entry of an edit form: the entry itself, an :class:`EditForm`'s, or a
    method name's (looked up once, as Python callers of the public API may pass one)."""
    if isinstance(form, Method):
        return form
    if isinstance(form, EditForm):
        return form.spec
    return get_method(form)


def searchable_methods() -> tuple[str, ...]:
    """The methods ``rosi run`` and ``rosi direction`` offer (those with a strength grid)."""
    return tuple(name for name, m in METHODS.items() if m.searchable)


def weight_methods() -> tuple[str, ...]:
    """The methods ``rosi edit`` offers: a right factor computed from the weights alone."""
    return tuple(name for name, m in METHODS.items() if not m.needs_reads)


def methods_table() -> str:
    """The methods table of docs/method.md (tests/test_docs.py keeps the page in step with it)."""
    rows = ["| method | edit | right factor `r` in `W' = W + s_hat r^T` | use |", "|---|---|---|---|"]
    rows += [f"| `{m.name}` | `{m.formula}` | {m.right_factor} | {m.use} |" for m in METHODS.values()]
    return "\n".join(rows)
