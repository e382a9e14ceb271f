"""Apply a rank-one edit to every chosen residual writer of a model, and revert it.

The math is in :mod:`rosi.rank_one`; this module walks the architecture map, handles weight
layouts and dtypes (computed in float32 from the original weights, written back in the
original dtype), tied embeddings and post-norms, and returns an :class:`EditRecord`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from rosi._fs import atomic_file
from rosi.architecture import DEFAULT_TARGETS, Layout, ResidualWriter, WriterKind, architecture_map
from rosi.direction import Direction
from rosi.errors import EditError
from rosi.rank_one import READ_METHODS, RIGHT_FACTORS, add_in_place, edit_in_place

METHODS = (*RIGHT_FACTORS, *READ_METHODS)
RECORD_FORMAT = "rosi-edit/1"


class PostNormWarning(UserWarning):
    """An edited matrix's output is normalised before it joins the residual stream."""


@dataclass(frozen=True)
class MatrixEdit:
    name: str
    kind: WriterKind
    layout: Layout
    layer: int | None
    right: torch.Tensor  # float32 right factor on the CPU: W' = W + outer(s_hat, right) in [out, in] layout


@dataclass
class EditRecord:
    """What an edit did, enough to describe, save and revert it."""

    method: str
    strength: float
    direction: Direction
    targets: tuple[str, ...]
    layers: tuple[int, ...] | None
    matrices: tuple[MatrixEdit, ...]
    untied_embeddings: bool = False
    # The writers were narrowed to a chosen subset (``apply_edit(writers=...)``), e.g. by
    # :func:`rosi.scope.select_writers`; ``matrices`` lists the ones edited.
    selected: bool = False
    # Bit-exact copies of the edited weights (only with keep_originals=True; never saved).
    originals: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    def summary(self) -> dict[str, object]:
        kinds: dict[str, int] = {}
        for m in self.matrices:
            kinds[m.kind.value] = kinds.get(m.kind.value, 0) + 1
        return {
            "method": self.method,
            "strength": self.strength,
            "targets": list(self.targets),
            "layers": None if self.layers is None else list(self.layers),
            "selected": self.selected,
            "matrices_edited": len(self.matrices),
            "matrices_by_kind": kinds,
            "untied_embeddings": self.untied_embeddings,
            "direction": self.direction.info(),
        }

    def save(self, path: str | Path) -> Path:
        """One safetensors file: the direction, every right factor, and the rest as JSON metadata."""
        path = Path(path)
        tensors = {"direction": self.direction.vector}
        tensors.update({f"right/{m.name}": m.right.contiguous() for m in self.matrices})
        header = {
            "format": RECORD_FORMAT,
            **{k: v for k, v in self.summary().items() if k != "matrices_by_kind"},
            "matrices": [{"name": m.name, "kind": m.kind.value, "layout": m.layout.value, "layer": m.layer} for m in self.matrices],
        }
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata={"rosi_edit": json.dumps(header)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> EditRecord:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {})["rosi_edit"])
            d = header["direction"]
            direction = Direction(
                f.get_tensor("direction"),
                layer=None if d.get("layer") in (None, "unknown") else int(d["layer"]),
                position=None if d.get("position") in (None, "unknown") else d["position"],
                model=None if d.get("model") in (None, "unknown") else d["model"],
                metadata={k: v for k, v in d.items() if k not in ("layer", "position", "model", "format")},
            )
            matrices = tuple(
                MatrixEdit(m["name"], WriterKind(m["kind"]), Layout(m["layout"]), m["layer"], f.get_tensor(f"right/{m['name']}"))
                for m in header["matrices"]
            )
        return cls(
            method=header["method"],
            strength=float(header["strength"]),
            direction=direction,
            targets=tuple(header["targets"]),
            layers=None if header["layers"] is None else tuple(header["layers"]),
            matrices=matrices,
            untied_embeddings=bool(header["untied_embeddings"]),
            selected=bool(header.get("selected", False)),
        )


def check_strength(method: str, strength: float) -> float:
    if method not in METHODS:
        raise EditError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
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
    method: str = "rosi",
    strength: float = 1.0,
    *,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
    layers: tuple[int, ...] | None = None,
    writers: Collection[str] | None = None,
    untie_embeddings: bool = False,
    keep_originals: bool = False,
    reads: Mapping[str, torch.Tensor] | None = None,
    progress: bool = False,
) -> EditRecord:
    """Edit ``model`` in place and return the record of what changed.

    ``strength`` is ``alpha`` for ``rosi`` and ``ablate``, ``beta`` for ``scale`` and ``k`` for
    ``probe``. ``targets`` and ``layers`` choose the residual writers; ``writers`` (parameter
    names, e.g. from :func:`rosi.scope.select_writers`) narrows that choice to a subset.
    ``probe`` needs ``reads``: a read-out vector per writer (parameter name -> ``[in]`` tensor,
    see :func:`rosi.scope.probe_reads`); it edits exactly those writers unless ``writers`` says
    otherwise, each by ``W + k * outer(s_hat, read)``.
    ``keep_originals`` keeps copies of the edited weights (on the CPU) so that
    :func:`revert_edit` restores them bit for bit; without them a revert is arithmetic.
    """
    strength = check_strength(method, strength)
    arch = architecture_map(model)
    direction.check_size(arch.hidden_size)
    try:
        chosen = arch.select(tuple(targets), None if layers is None else tuple(layers))
    except ValueError as e:
        raise EditError(str(e)) from None
    if method in READ_METHODS:
        if not reads:
            raise EditError(
                f"method {method!r} reads each matrix's input with a vector measured on prompts; pass reads= (`rosi run` measures them)"
            )
        if writers is None:
            writers = list(reads)
        missing = sorted(set(writers) - set(reads))
        if missing:
            raise EditError(f"method {method!r} has no read-out vector for {missing[0]!r}")
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
    untied = False
    if any(w.kind is WriterKind.EMBEDDING for w in chosen) and arch.tied_embeddings:
        if not untie_embeddings:
            raise EditError(
                "the token embedding is tied to the output head, so editing it would also edit the unembedding; "
                "pass untie_embeddings=True (CLI: --untie-embeddings) to give the head its own copy, or leave out the embedding target"
            )
        _untie(model)
        untied = True
    post_normed = [w for w in chosen if w.post_norm]
    if post_normed:
        warnings.warn(
            f"{arch.model_type}: {len(post_normed)} edited matrices are followed by a norm (e.g. {post_normed[0].post_norm}), "
            "so the injected term is renormalised and scaled per channel before it joins the residual stream; "
            "the effective strength differs from other architectures",
            PostNormWarning,
            stacklevel=3,  # past torch.no_grad's wrapper, to the caller
        )
    params = dict(model.named_parameters(remove_duplicate=False))
    if method in READ_METHODS:  # check every read-out before changing any weight
        for w in chosen:
            shape = w.layout.as_out_in(params[w.name]).shape
            if len(shape) != 2 or tuple(reads[w.name].shape) != tuple(shape[1:]):  # type: ignore[index]
                raise EditError(
                    f"{w.name}: read-out vector of shape {tuple(reads[w.name].shape)} does not fit a matrix of shape {tuple(shape)}"  # type: ignore[index]
                )
    s_hat = direction.unit
    originals: dict[str, torch.Tensor] | None = {} if keep_originals else None
    matrices = []
    for w in tqdm(chosen, desc=f"rosi: {method} edit", unit="matrix", disable=not progress):
        param = params[w.name]
        if originals is not None:
            originals[w.name] = param.detach().to("cpu", copy=True)
        if method in READ_METHODS:
            right = _add_to_parameter(param, w, s_hat, strength * reads[w.name].to(torch.float32))  # type: ignore[index]
        else:
            right = _edit_parameter(param, w, s_hat, method, strength)
        matrices.append(MatrixEdit(w.name, w.kind, w.layout, w.layer, right))
    return EditRecord(
        method=method,
        strength=strength,
        direction=direction,
        targets=tuple(targets),
        layers=None if layers is None else tuple(layers),
        matrices=tuple(matrices),
        untied_embeddings=untied,
        selected=writers is not None,
        originals=originals,
    )


def _edit_parameter(param: nn.Parameter, writer: ResidualWriter, s_hat: torch.Tensor, method: str, strength: float) -> torch.Tensor:
    weight = writer.layout.as_out_in(param.detach())  # a view of the stored tensor
    return edit_in_place(weight, s_hat.to(param.device), method, strength).to("cpu")


def _add_to_parameter(param: nn.Parameter, writer: ResidualWriter, s_hat: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    add_in_place(writer.layout.as_out_in(param.detach()), s_hat.to(param.device), right.to(param.device))
    return right.cpu()


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
        if record.originals is not None:
            param.data.copy_(record.originals[m.name])
            continue
        add_in_place(m.layout.as_out_in(param.detach()), s_hat.to(param.device), -m.right.to(param.device))
    if record.untied_embeddings:
        _tie(model)
    record.originals = None


def _untie(model: nn.Module) -> None:
    head = model.get_output_embeddings()
    head.weight = nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    _set_tie(model, False)


def _tie(model: nn.Module) -> None:
    model.get_output_embeddings().weight = model.get_input_embeddings().weight
    _set_tie(model, True)


def _set_tie(model: nn.Module, value: bool) -> None:
    model.config.tie_word_embeddings = value
    text_config = getattr(model.config, "get_text_config", lambda: None)()
    if text_config is not None:
        text_config.tie_word_embeddings = value
