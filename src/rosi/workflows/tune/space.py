"""The search space of a tune, and a trial's settings turned into an edit."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rosi.direction.vector import Direction
from rosi.edit.apply import apply_edit
from rosi.edit.methods import DEFAULT_METHOD, DEFAULT_SCOPE, METHODS, EditForm, Method, get_method
from rosi.edit.scope import WriterChoice, false_refusal
from rosi.model.loading import LoadedModel
from rosi.prompts import PromptSet
from rosi.workflows.extract import Extraction
from rosi.workflows.options import TuneOptions

REFERENCES: dict[str, dict[str, Any]] = {  # enqueued first in every tune, at the selected layer: rosi run's default, the paper's form
    "default": {
        "form": DEFAULT_METHOD,
        f"{DEFAULT_METHOD}.scope": DEFAULT_SCOPE,
        f"{DEFAULT_METHOD}.strength": METHODS[DEFAULT_METHOD].reference_strength,
    },
    "paper": {"form": "rosi", "rosi.scope": "all", "rosi.strength": METHODS["rosi"].reference_strength},
}


def references(layer: int) -> dict[str, dict[str, Any]]:
    """The reference trials at the selected ``layer`` (in every tune, whatever forms it searches)."""
    return {name: {**p, "layer": layer} for name, p in REFERENCES.items()}


def form_choices(forms: tuple[str, ...]) -> list[str]:
    """The ``form`` parameter's choices: the forms searched and the references' forms (queued
    trials fix the form of every trial; see :func:`_queue_forms`)."""
    return [*forms, *(str(p["form"]) for p in REFERENCES.values() if p["form"] not in forms)]


RIDGES = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3)  # the fitted read-outs' ridge values searched (a grid: each fit is reused)


def form_of(params: dict[str, Any]) -> Method:
    """A trial's form: the registry entry of its ``form`` parameter (the sampler and the journal keep names)."""
    return get_method(params["form"])


def describe(params: dict[str, Any]) -> str:
    """A trial's settings in one line, e.g. ``gate k=2.1, layer 14, middle, ridge 0.05``."""
    spec = form_of(params)
    form = spec.name
    parts = [f"{form} {spec.symbol}={params[f'{form}.strength']:.3g}", f"layer {params['layer']}", params[f"{form}.scope"]]
    if spec.samples:
        parts.append(f"ridge {params[f'{form}.ridge']:.2g}")
        if params.get(f"{form}.null_space"):
            parts.append(f"null space {params[f'{form}.null_space']:g}")
    return ", ".join(parts)


class Space:
    """The search space, and a trial's settings turned into an edit."""

    def __init__(self, loaded: LoadedModel, extraction: Extraction, options: TuneOptions) -> None:
        self.loaded, self.extraction, self.options = loaded, extraction, options
        selected = extraction.direction.layer
        assert selected is not None and extraction.direction.position is not None
        n = loaded.architecture.num_layers
        self.layers = sorted({selected + d for d in range(-options.layer_window, options.layer_window + 1) if 0 <= selected + d < n})
        self._choices: dict[tuple[Any, ...], WriterChoice] = {}
        self.measure_sets: dict[str, PromptSet] = {}
        self.records: dict[int, Any] = {}  # edit records of the confirmed trials (saved beside the chosen edit)

    def suggest(self, trial: Any) -> dict[str, Any]:
        form = trial.suggest_categorical("form", form_choices(self.options.forms))
        params = {"form": form, "layer": trial.suggest_categorical("layer", self.layers)}
        spec = form_of(params)
        scopes = ["middle", "all"] if spec.needs_reads else ["selective", "all"]
        params[f"{form}.scope"] = trial.suggest_categorical(f"{form}.scope", scopes)
        lo, hi = spec.grid[0] / 2, spec.grid[-1]
        params[f"{form}.strength"] = trial.suggest_float(f"{form}.strength", lo, hi, log=True)
        if spec.fit is not None:
            params[f"{form}.ridge"] = trial.suggest_categorical(f"{form}.ridge", list(RIDGES))
            if spec.fit.null_space:  # e.g. the neurons fit reads only harm-only neurons: no benign subspace to avoid
                params[f"{form}.null_space"] = trial.suggest_categorical(f"{form}.null_space", [0.0, 0.9, 0.99])
        return params

    def direction(self, layer: int) -> Direction:
        base = self.extraction.direction
        assert base.position is not None
        vector = self.extraction.activations.direction_at(layer, base.position)
        return Direction(
            vector, layer=layer, position=base.position, model=base.model, metadata={**base.metadata, "tuned_layer": str(layer)}
        )

    def edit(self, params: dict[str, Any]) -> tuple[Direction, WriterChoice, float]:
        """The direction, writers (with read-outs) and strength of a trial's settings. Fitted
        read-outs depend on the layer only through their scale (the direction's length), so
        they are fit once per scope, ridge and null space and rescaled."""
        spec = form_of(params)
        form = spec.name
        scope = "all" if params[f"{form}.scope"] == "all" else "selective"
        direction = self.direction(params["layer"])
        strength = float(params[f"{form}.strength"])
        if spec.fit is None:
            key: tuple[Any, ...] = (form, params["layer"], scope)
            if key not in self._choices:
                self._choices[key] = replace(self.extraction, direction=direction).choose_writers(self.loaded, EditForm(form, scope))
            return direction, self._choices[key], strength
        ridge, null_space = float(params[f"{form}.ridge"]), params.get(f"{form}.null_space") or None
        key = ("fit", spec.fit, scope, ridge, null_space)  # the forms with the same fit share its read-outs
        if key not in self._choices:
            fit = EditForm(form, scope, ridge=ridge, null_space=null_space)
            self._choices[key] = self.extraction.choose_writers(self.loaded, fit)
        fitted = self._choices[key]
        assert fitted.reads is not None and self.extraction.samples is not None
        ratio = float(direction.vector.norm() / self.extraction.direction.vector.norm())
        reads = {name: r * ratio for name, r in fitted.reads.items()}
        second = false_refusal(self.extraction.samples, direction) if spec.rank == 2 else None
        return direction, replace(fitted, reads=reads, second=second), strength

    def apply(self, params: dict[str, Any]) -> Any:
        direction, choice, strength = self.edit(params)
        return apply_edit(
            self.loaded.model,
            direction,
            form_of(params),
            strength,
            writers=choice.writers,
            reads=choice.reads,
            second=choice.second,
            keep_originals=True,
        )
