"""Apply a rank-one edit to the chosen residual writers of a model, and revert it.

The math is in :mod:`rosi.edit.rank_one` and the methods in :mod:`rosi.edit.methods`; this module
walks the architecture map, handles weight layouts and dtypes (computed in float32 from the
original weights, written back in the original dtype), tied embeddings and post-norms, and
returns an :class:`~rosi.edit.record.EditRecord`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Mapping
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from rosi.direction.vector import Direction
from rosi.edit.methods import METHODS, EditForm, Method, ablate_factor, method_of
from rosi.edit.rank_one import add_in_place, edit_in_place
from rosi.edit.record import EditRecord, MatrixEdit
from rosi.errors import EditError
from rosi.model.architecture import ArchitectureMap, architecture_map
from rosi.model.finite import all_finite
from rosi.model.hooks import offloaded, stored_weight
from rosi.model.writers import DEFAULT_TARGETS, CausalLM, ResidualWriter, WriterKind

Reads = Mapping[str, torch.Tensor]  # parameter name -> read-out vector (size ``in``), for read-out methods


class PostNormWarning(UserWarning):
    """An edited matrix's output is normalised before it joins the residual stream."""


def check_strength(form: Method | EditForm | str, strength: float) -> float:
    """The strength as a float, if the form's method exists and the strength is finite and ``>= 0``."""
    method = method_of(form).name
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise EditError(f"the strength (alpha) must be a number, got {strength!r}") from None
    if not math.isfinite(value):
        raise EditError(f"the strength (alpha) must be finite, got {strength!r}")
    if value < 0:
        raise EditError(
            f"the strength (alpha) of method {method!r} must be >= 0, got {value}; "
            "the method gives the sign (use 'ablate' to remove the direction)"
        )
    return value


@torch.no_grad()
def apply_edit(
    model: nn.Module,
    direction: Direction,
    form: Method | EditForm | str = METHODS["rosi"],
    strength: float = 1.0,
    *,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
    layers: tuple[int, ...] | None = None,
    writers: Collection[str] | None = None,
    untie_embeddings: bool = False,
    keep_originals: bool = False,
    reads: Reads | None = None,
    second: Direction | None = None,
    progress: bool = False,
) -> EditRecord:
    """Edit ``model`` in place and return the record of what changed. ``form``: the method's entry
    (``METHODS["scale"]``; an :class:`~rosi.edit.methods.EditForm`'s method; a name is looked up).
    ``strength`` is ``alpha`` for ``rosi`` and ``ablate``, ``beta`` for ``scale`` and ``k`` for ``probe``.
    ``targets`` and ``layers`` choose the residual writers; ``writers`` (parameter names, e.g. from
    :func:`rosi.edit.scope.select_writers`) narrows that choice to a subset.
    ``probe`` needs ``reads``: a read-out vector per writer (parameter name -> ``[in]`` tensor,
    see :func:`rosi.edit.scope.probe_reads`); it edits exactly those writers unless ``writers``
    says otherwise, each by ``W + k * outer(s_hat, read)``.
    ``gate`` takes the same ``reads`` (fit by :func:`rosi.edit.scope.gate_reads`); ``surgical``
    also needs ``second``, the false-refusal direction, which it ablates from the same writers
    (``W' = W + k * outer(s_hat, read) - outer(f_hat, f_hat^T W)``; ``f_hat`` is made
    orthogonal to ``s_hat`` first, so the two terms do not interfere).
    ``keep_originals`` keeps copies of the edited weights (on the CPU) so that
    :func:`revert_edit` restores them bit for bit; without them a revert is arithmetic."""
    spec = method_of(form)
    strength = check_strength(spec, strength)
    arch = architecture_map(model)
    # checked before any weight changes: the direction's size, the second direction of a rank-two
    # method, the read-outs of a read-out method (which choose its writers unless told) and their shapes
    direction.check_size(arch.hidden_size)
    second = _check_second(spec, direction, second, arch.hidden_size)
    if spec.needs_reads:
        writers = _check_reads_given(spec.name, writers, reads)
    chosen = _chosen_writers(arch, targets, layers, writers)
    params = dict(model.named_parameters(remove_duplicate=False))
    if reads is not None and spec.needs_reads:
        _check_read_shapes(chosen, params, reads)
    untied = _handle_tied_embedding(model, arch, chosen, untie_embeddings)
    _warn_post_norms(arch, chosen)
    originals: dict[str, torch.Tensor] | None = {} if keep_originals else None
    hooks: dict[str, Any] = {}  # offloaded weights' edits, as hooks
    matrices = [
        _edit_writer(model, w, params[w.name], direction, spec, strength, reads, second, originals, hooks)
        for w in tqdm(chosen, desc=f"rosi: {spec.name} edit", unit="matrix", disable=not progress)
    ]
    record = EditRecord(
        method=spec.name,
        strength=strength,
        direction=direction,
        targets=tuple(targets),
        layers=None if layers is None else tuple(layers),
        matrices=tuple(matrices),
        untied_embeddings=untied,
        selected=writers is not None,
        originals=originals,
        hooks=hooks,
        second=second,
        model_type=getattr(getattr(model, "config", None), "model_type", None),
    )
    _check_finite(model, record, params)
    _count_edits(model, +1)
    return record


def _edit_writer(
    model: nn.Module,
    w: ResidualWriter,
    param: nn.Parameter,
    direction: Direction,
    spec: Method,
    strength: float,
    reads: Reads | None,
    second: Direction | None,
    originals: dict[str, torch.Tensor] | None,
    hooks: dict[str, Any],
) -> MatrixEdit:
    """One writer's edit: in place (its original kept in ``originals`` when asked), or as a hook
    on an offloaded weight (kept in ``hooks``)."""
    s_hat, right2 = direction.unit, None
    if offloaded(param):
        if second is not None:
            raise EditError(
                f"{w.name}: rank-two edits ({spec.name}) cannot be applied to offloaded weights; load the model without --device-map"
            )
        right, hooks[w.name] = _edit_as_hook(model, w, s_hat, spec, strength, reads)
    else:
        if originals is not None:
            originals[w.name] = param.detach().to("cpu", copy=True)
        right = _edit_parameter(param, w, s_hat, spec, strength, reads)
        if second is not None:
            right2 = edit_in_place(w.layout.as_out_in(param.detach()), second.unit.to(param.device), ablate_factor, 1.0).to("cpu")
    return MatrixEdit(w.name, w.kind, w.layout, w.layer, right, right2)


EDIT_COUNT = "_rosi_edits_applied"  # edits applied to a model in memory and not reverted


def _count_edits(model: nn.Module, step: int) -> None:
    model.__dict__[EDIT_COUNT] = edits_applied(model) + step


def edits_applied(model: nn.Module) -> int:
    """How many rosi edits the model in memory holds (so a save knows whether one record says it all)."""
    return int(model.__dict__.get(EDIT_COUNT, 0))


def _edit_as_hook(
    model: nn.Module, writer: ResidualWriter, s_hat: torch.Tensor, method: Method, strength: float, reads: Reads | None
) -> tuple[torch.Tensor, Any]:
    """The edit of a writer whose weights accelerate offloaded (meta on the module): the same
    right factor, added to the module's output as ``(r . x) s_hat`` by a forward hook (so every
    device keeps its weights as they are). Returns ``(r, hook handle)``."""
    if writer.kind is WriterKind.EXPERT:
        raise EditError(f"{writer.name}: fused expert stacks cannot be edited while offloaded; load the model without --device-map")
    stored = stored_weight(model, writer.module, writer.name.rsplit(".", 1)[1])
    weight = writer.layout.as_out_in(stored).to(torch.float32).clone()
    right_given = None if method.factor else strength * reads[writer.name].to(torch.float32) if reads else None
    right = edit_weight(weight, s_hat, method, strength, right_given)
    if not all_finite(weight):
        raise EditError(f"{method.name} at strength {strength:g} makes {writer.name} NaN or infinite; use a smaller strength")
    s32 = s_hat.to(torch.float32)
    embedding = writer.kind is WriterKind.EMBEDDING

    def add(module: nn.Module, args: Any, output: Any) -> Any:
        x = args[0]
        r, s = right.to(output.device), s32.to(output.device)
        extra = r[x] if embedding else x.to(torch.float32) @ r
        return output + (extra.unsqueeze(-1) * s).to(output.dtype)

    return right, model.get_submodule(writer.module).register_forward_hook(add)


def _check_finite(model: nn.Module, record: EditRecord, params: dict[str, nn.Parameter]) -> None:
    """An edit that made a weight NaN or infinite (a strength too large for the dtype) is undone
    and refused: bit for bit with kept originals, else by the arithmetic revert (which cannot
    restore overflowed entries: reload the model then)."""
    bad = next((m.name for m in record.matrices if m.name not in record.hooks and not all_finite(params[m.name])), None)
    if bad is None:
        return
    exact = record.originals is not None
    revert_edit(model, record)
    raise EditError(
        f"{record.method} at strength {record.strength:g} makes {bad} NaN or infinite; use a smaller strength"
        + ("" if exact else " (the model in memory may be damaged: load it again)")
    )


def _check_second(spec: Method, direction: Direction, second: Direction | None, hidden: int) -> Direction | None:
    """The rank-two method's second direction, unit and orthogonal to ``s_hat`` (None for the others)."""
    if spec.rank == 1:
        if second is not None:
            raise EditError(f"method {spec.name!r} is rank one; it takes no second direction")
        return None
    if second is None:
        raise EditError(f"method {spec.name!r} also ablates a false-refusal direction; pass second= (`rosi run` measures it)")
    second.check_size(hidden)
    s, f = direction.unit.to(torch.float64), second.unit.to(torch.float64)
    f = f - (f @ s) * s
    if not float(f.norm()) > 1e-3:
        raise EditError(f"method {spec.name!r}: the second direction is parallel to the safety direction")
    return Direction(
        (f / f.norm()).to(torch.float32), layer=second.layer, position=second.position, model=second.model, metadata=second.metadata
    )


def _check_reads_given(method: str, writers: Collection[str] | None, reads: Reads | None) -> Collection[str]:
    if not reads:
        raise EditError(
            f"method {method!r} reads each matrix's input with a vector measured on prompts; pass reads= (`rosi run` measures them)"
        )
    writers = list(reads) if writers is None else writers
    missing = sorted(set(writers) - set(reads))
    if missing:
        raise EditError(f"method {method!r} has no read-out vector for {missing[0]!r}")
    return writers


def _chosen_writers(
    arch: ArchitectureMap, targets: tuple[str, ...], layers: tuple[int, ...] | None, writers: Collection[str] | None
) -> list[ResidualWriter]:
    try:
        chosen = arch.select(tuple(targets), None if layers is None else tuple(layers))
    except ValueError as e:
        raise EditError(str(e)) from None
    if writers is not None:
        wanted = set(writers)
        unknown = sorted(wanted - {w.name for w in chosen})
        if unknown:
            raise EditError(
                f"{unknown[0]!r} is not a residual writer of this model within targets {list(targets)}, layers {layers}; "
                "`rosi info MODEL` lists the writers"
            )
        chosen = [w for w in chosen if w.name in wanted]
    if not chosen:
        raise EditError(f"no matrices selected (targets {list(targets)}, layers {layers}); nothing to edit")
    return chosen


def _handle_tied_embedding(model: nn.Module, arch: ArchitectureMap, chosen: list[ResidualWriter], untie: bool) -> bool:
    """Untie the output head from an edited, tied embedding (if asked); True when it was untied."""
    if not (any(w.kind is WriterKind.EMBEDDING for w in chosen) and arch.tied_embeddings):
        return False
    if any(offloaded(p) for p in model.parameters()):
        raise EditError("a tied embedding cannot be untied while the model is offloaded; load it without --device-map")
    if not untie:
        raise EditError(
            "the token embedding is tied to the output head, so editing it would also edit the unembedding; "
            "pass untie_embeddings=True (CLI: --untie-embeddings) to give the head its own copy, or leave out the embedding target"
        )
    _untie(model)
    return True


def _warn_post_norms(arch: ArchitectureMap, chosen: list[ResidualWriter]) -> None:
    post_normed = [w for w in chosen if w.post_norm]
    if post_normed:
        warnings.warn(
            f"{arch.model_type}: {len(post_normed)} edited matrices are followed by a norm (e.g. {post_normed[0].post_norm}), "
            "so the injected term is renormalised and scaled per channel before it joins the residual stream; "
            "the effective strength differs from other architectures",
            PostNormWarning,
            stacklevel=4,  # past this helper, apply_edit and torch.no_grad's wrapper, to the caller
        )


def _check_read_shapes(chosen: list[ResidualWriter], params: dict[str, nn.Parameter], reads: Reads) -> None:
    for w in chosen:
        shape = w.layout.as_out_in(params[w.name]).shape
        if len(shape) != 2 or tuple(reads[w.name].shape) != tuple(shape[1:]):
            raise EditError(
                f"{w.name}: read-out vector of shape {tuple(reads[w.name].shape)} does not fit a matrix of shape {tuple(shape)}"
            )


def _edit_parameter(
    param: nn.Parameter, writer: ResidualWriter, s_hat: torch.Tensor, method: Method, strength: float, reads: Reads | None
) -> torch.Tensor:
    """Edit one weight in place (a view in ``[out, in]`` layout); return its float32 right factor on the CPU."""
    right = None
    if method.factor is None:
        assert reads is not None  # checked by _check_reads_given
        right = strength * reads[writer.name].to(torch.float32)
    return edit_weight(writer.layout.as_out_in(param.detach()), s_hat, method, strength, right)


def edit_weight(
    weight: torch.Tensor, s_hat: torch.Tensor, method: Method, strength: float, right: torch.Tensor | None = None
) -> torch.Tensor:
    """``weight += outer(s_hat, r)`` in place on an ``[out, in]`` view (any dtype, computed in
    float32), ``r`` the method's right factor of ``weight`` at ``strength``, or the given ``right``
    for a read-out method; returns ``r`` (float32, on the CPU). The one code path of every edit,
    in memory or on disk."""
    s = s_hat.to(weight.device)
    if method.factor is not None:
        return edit_in_place(weight, s, method.factor, strength).to("cpu")
    if right is None:
        raise EditError(f"method {method.name!r} needs its measured right factor")
    add_in_place(weight, s, right.to(device=weight.device, dtype=torch.float32))
    return right.to(torch.float32).cpu()


@torch.no_grad()
def apply_record(model: nn.Module, record: EditRecord) -> EditRecord:
    """Apply a saved edit record's factors to ``model`` in place (``W += outer(s_hat, r)``, and
    the second term of a rank-two record): the edit exactly as recorded, without recomputing it;
    :func:`revert_edit` undoes it. Returns the record."""
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = [m.name for m in record.matrices if m.name not in params]
    if missing:
        raise EditError(f"this edit record does not match the model: it has no parameter {missing[0]!r}")
    if record.untied_embeddings:
        _untie(model)
    s_hat = record.direction.unit
    for m in record.matrices:
        param = params[m.name]
        view = m.layout.as_out_in(param.detach())
        add_in_place(view, s_hat.to(param.device), m.right.to(param.device))
        if m.right2 is not None and record.second is not None:
            add_in_place(view, record.second.unit.to(param.device), m.right2.to(param.device))
    _count_edits(model, +1)
    _check_finite(model, record, params)
    return record


@torch.no_grad()
def revert_edit(model: nn.Module, record: EditRecord) -> None:
    """Undo ``record`` on ``model``: bit for bit with kept originals, else W' - outer(s_hat, r)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = [m.name for m in record.matrices if m.name not in params]
    if missing:
        raise EditError(f"this edit record does not match the model: it has no parameter {missing[0]!r}")
    s_hat = record.direction.unit
    for m in record.matrices:
        param = params[m.name]
        if m.name in record.hooks:
            record.hooks.pop(m.name).remove()
            continue
        if record.originals is not None:
            param.data.copy_(record.originals[m.name])
            continue
        view = m.layout.as_out_in(param.detach())
        if m.right2 is not None and record.second is not None:
            add_in_place(view, record.second.unit.to(param.device), -m.right2.to(param.device))
        add_in_place(view, s_hat.to(param.device), -m.right.to(param.device))
    if record.untied_embeddings:
        _tie(model)
    record.originals = None
    _count_edits(model, -1)


def _untie(model: CausalLM) -> None:
    head = model.get_output_embeddings()
    head.weight = nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    _set_tie(model, False)


def _tie(model: CausalLM) -> None:
    model.get_output_embeddings().weight = model.get_input_embeddings().weight
    _set_tie(model, True)


def _set_tie(model: CausalLM, value: bool) -> None:
    model.config.tie_word_embeddings = value
    text_config = getattr(model.config, "get_text_config", lambda: None)()
    if text_config is not None:
        text_config.tie_word_embeddings = value
