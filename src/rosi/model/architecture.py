"""Which matrices write the residual stream: all architecture knowledge lives here.

A *residual writer* is a weight whose output is added to the residual stream: the token
embedding, the attention output projection and the MLP output projection of every layer (and
every expert's output projection in a mixture-of-experts layer). The table :data:`ARCHITECTURES`
names them per ``model_type``; anything else gets a generic discovery that is verified by
running the model (a writer must add its output to the residual stream unchanged) and refused
loudly when it cannot be verified. (The vocabulary, writer kinds, layouts and edit targets, is in
:mod:`rosi.model.writers`.)
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from rosi.errors import UnsupportedArchitectureError
from rosi.model.hooks import layer_output
from rosi.model.writers import DEFAULT_TARGETS, TARGETS, CausalLM, Layout, ResidualWriter, WriterKind


@dataclass(frozen=True)
class ArchitectureSpec:
    """Per-layer parameter paths, relative to one decoder layer."""

    layers: str
    attention: tuple[str, ...]
    mlp: tuple[str, ...]
    experts: tuple[str, ...] = ()
    layout: Layout = Layout.OUT_IN
    attention_post_norm: str | None = None
    mlp_post_norm: str | None = None
    mlp_gate: str | None = None


_LLAMA_LIKE = ArchitectureSpec("model.layers", ("self_attn.o_proj.weight",), ("mlp.down_proj.weight",))
_GEMMA2_LIKE = ArchitectureSpec(
    "model.layers",
    ("self_attn.o_proj.weight",),
    ("mlp.down_proj.weight",),
    attention_post_norm="post_attention_layernorm",
    mlp_post_norm="post_feedforward_layernorm",
)

ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "gemma2": _GEMMA2_LIKE,
    "gemma3_text": _GEMMA2_LIKE,
    # OLMo-2 has no pre-norms: both of its layer norms sit after the writers.
    "olmo2": _GEMMA2_LIKE,
    "gpt2": ArchitectureSpec("transformer.h", ("attn.c_proj.weight",), ("mlp.c_proj.weight",), layout=Layout.IN_OUT),
    "mixtral": ArchitectureSpec("model.layers", ("self_attn.o_proj.weight",), (), experts=("mlp.experts.down_proj",)),
    "qwen2_moe": ArchitectureSpec(
        "model.layers",
        ("self_attn.o_proj.weight",),
        ("mlp.shared_expert.down_proj.weight",),
        experts=("mlp.experts.down_proj",),
        mlp_gate="mlp.shared_expert_gate",
    ),
    "qwen3_moe": ArchitectureSpec("model.layers", ("self_attn.o_proj.weight",), (), experts=("mlp.experts.down_proj",)),
}


@dataclass(frozen=True)
class ArchitectureMap:
    model_type: str
    hidden_size: int
    num_layers: int
    layers_path: str  # the decoder layers' ModuleList, e.g. "model.layers"
    writers: tuple[ResidualWriter, ...]
    tied_embeddings: bool
    discovered: bool  # True when found by generic discovery rather than the table

    def select(self, targets: tuple[str, ...] = DEFAULT_TARGETS, layers: tuple[int, ...] | None = None) -> list[ResidualWriter]:
        unknown = [t for t in targets if t not in TARGETS]
        if unknown:
            raise ValueError(f"unknown edit target(s) {unknown}; choose from {sorted(TARGETS)}")
        kinds = {k for t in targets for k in TARGETS[t]}
        chosen = [w for w in self.writers if w.kind in kinds]
        if layers is not None:
            bad = [i for i in layers if not 0 <= i < self.num_layers]
            if bad:
                raise ValueError(f"layer(s) {bad} out of range: the model has layers 0..{self.num_layers - 1}")
            chosen = [w for w in chosen if w.layer is None or w.layer in layers]
        return chosen

    def layer_modules(self, model: nn.Module) -> nn.ModuleList:
        return _module_list(model, self.layers_path)

    def measurable_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """The attention/MLP writers' modules, by parameter name: each returns the writer's own
        ``W x (+ b)``, so hooks can measure its output and input. (Fused expert stacks and the
        embedding are not measurable: their outputs mix experts or index rows.)"""
        return {w.name: model.get_submodule(w.module) for w in self.writers if w.measurable}

    def write_points(self, model: nn.Module) -> list[nn.Module]:
        """The modules whose outputs are added to the residual stream as they are (the post-norm
        when there is one), embedding first: project a direction out of all of them and the
        residual stream never holds it."""
        return [model.get_submodule(w.post_norm or w.module) for w in self.writers]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for w in self.writers:
            out[w.kind.value] = out.get(w.kind.value, 0) + 1
        return out


def model_type_of(model: nn.Module) -> str:
    return str(getattr(model.config, "model_type", type(model).__name__))


# Specs found by generic discovery, per model object: discovery runs the model, so it runs once.
_DISCOVERED: weakref.WeakKeyDictionary[nn.Module, ArchitectureSpec] = weakref.WeakKeyDictionary()


def architecture_map(model: nn.Module) -> ArchitectureMap:
    """Every residual writer of ``model``, from the table or by verified discovery."""
    model_type = model_type_of(model)
    spec = ARCHITECTURES.get(model_type) or _DISCOVERED.get(model)
    if spec is None:
        spec = _DISCOVERED[model] = _discover(model, model_type)
    layers = _module_list(model, spec.layers)
    params = dict(model.named_parameters(remove_duplicate=False))
    writers = [_embedding_writer(model, params)]
    for i, layer_module in enumerate(layers):
        writers += _layer_writers(model, spec, model_type, i, layer_module, params)
    hidden = params[writers[0].name].shape[-1]
    _check_shapes(model_type, writers, params, hidden)
    discovered = model_type not in ARCHITECTURES
    return ArchitectureMap(model_type, hidden, len(layers), spec.layers, tuple(writers), _tied(model), discovered)


def _layer_writers(
    model: nn.Module, spec: ArchitectureSpec, model_type: str, i: int, layer_module: nn.Module, params: dict[str, nn.Parameter]
) -> list[ResidualWriter]:
    prefix = _name_of(model, layer_module)
    groups = (
        (spec.attention, WriterKind.ATTENTION, spec.layout, spec.attention_post_norm, None),
        (spec.mlp, WriterKind.MLP, spec.layout, spec.mlp_post_norm, spec.mlp_gate),
        (spec.experts, WriterKind.EXPERT, Layout.EXPERTS_OUT_IN, spec.mlp_post_norm, None),
    )
    writers = []
    for paths, kind, layout, post_norm, gate in groups:
        for path in paths:
            name = f"{prefix}.{path}"
            if name not in params:
                raise UnsupportedArchitectureError(
                    f"{model_type}: expected parameter {name!r} is missing; this checkpoint does not match "
                    f"rosi's map for {model_type} (modules in layer {i}: {_child_names(layer_module)})"
                )
            writers.append(
                ResidualWriter(
                    name,
                    kind,
                    layout,
                    i,
                    post_norm=f"{prefix}.{post_norm}" if post_norm else None,
                    gate=f"{prefix}.{gate}" if gate else None,
                )
            )
    return writers


def _embedding_writer(model: CausalLM, params: dict[str, nn.Parameter]) -> ResidualWriter:
    embedding = model.get_input_embeddings()
    weight = getattr(embedding, "weight", None)
    name = next((n for n, p in params.items() if p is weight), None)
    if name is None:
        raise UnsupportedArchitectureError(f"{model_type_of(model)}: cannot find the token embedding's weight")
    return ResidualWriter(name, WriterKind.EMBEDDING, Layout.IN_OUT, None)


def _tied(model: CausalLM) -> bool:
    out = model.get_output_embeddings()
    inp = model.get_input_embeddings()
    return out is not None and getattr(out, "weight", None) is getattr(inp, "weight", None)


def _check_shapes(model_type: str, writers: list[ResidualWriter], params: dict[str, nn.Parameter], hidden: int) -> None:
    for w in writers:
        shape = params[w.name].shape
        out_dim = shape[-1] if w.layout is Layout.IN_OUT else shape[-2]
        if out_dim != hidden:
            raise UnsupportedArchitectureError(
                f"{model_type}: {w.name} has shape {tuple(shape)}, which does not write a residual stream of size {hidden}"
            )


def _module_list(model: nn.Module, path: str) -> nn.ModuleList:
    layers = model.get_submodule(path)
    if not isinstance(layers, nn.ModuleList):
        raise UnsupportedArchitectureError(f"{model_type_of(model)}: {path} is a {type(layers).__name__}, not the list of decoder layers")
    return layers


def _name_of(model: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def _child_names(module: nn.Module) -> list[str]:
    return [n for n, _ in module.named_modules() if n]


# --- generic discovery -------------------------------------------------------------------

_ATTENTION_OUT = re.compile(r"(attn|attention)\.(o_proj|out_proj|dense|c_proj|wo)$")
_MLP_OUT = re.compile(r"(mlp|feed_forward|ffn)\.(down_proj|fc2|c_proj|w2|dense_4h_to_h|fc_out|wo)$")


def _discover(model: nn.Module, model_type: str) -> ArchitectureSpec:
    """Guess the writers of an unknown architecture by name, then prove it by running the model."""
    n_layers = getattr(model.config, "num_hidden_layers", None)
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n_layers and len(m) > 0]
    if len(lists) != 1:
        raise UnsupportedArchitectureError(
            f"model type {model_type!r} is not in rosi's table and its decoder layers cannot be found "
            f"(module lists of length {n_layers}: {[n for n, _ in lists] or 'none'})"
        )
    layers_path, layers = lists[0]
    seen = _child_names(layers[0])
    attention = [n for n in seen if _ATTENTION_OUT.search(n)]
    mlp = [n for n in seen if _MLP_OUT.search(n)]
    if len(attention) != 1 or len(mlp) != 1 or any("expert" in n for n in seen):
        raise UnsupportedArchitectureError(
            f"model type {model_type!r} is not in rosi's table and its residual writers are not certain (modules in layer 0: {seen})"
        )
    linear = [layers[0].get_submodule(n) for n in (attention[0], mlp[0])]
    if not all(isinstance(m, nn.Linear) for m in linear):
        raise UnsupportedArchitectureError(
            f"model type {model_type!r}: discovered writers {attention + mlp} are not nn.Linear; rosi cannot edit them safely"
        )
    spec = ArchitectureSpec(layers_path, (f"{attention[0]}.weight",), (f"{mlp[0]}.weight",))
    for module_name, other in ((attention[0], mlp[0]), (mlp[0], attention[0])):
        if not writes_residual_directly(model, layers[0], module_name, frozen=(other,)):
            raise UnsupportedArchitectureError(
                f"model type {model_type!r}: {module_name} does not add its output unchanged to the residual "
                f"stream (a norm or scale sits in between), so rosi will not guess how to edit it (modules in layer 0: {seen})"
            )
    return spec


@torch.no_grad()
def writes_residual_directly(model: CausalLM, layer: nn.Module, module_name: str, frozen: tuple[str, ...] = ()) -> bool:
    """Run the model twice: once plain, once with a random vector added to ``module_name``'s output.

    The ``frozen`` modules of the layer (the other writers) replay their plain outputs in the
    second run, so the MLP does not react to a changed attention output. If the module's output
    reaches the residual stream untouched, the layer's output moves by exactly that vector; a
    norm or a gate in between breaks it.
    """
    target = layer.get_submodule(module_name)
    others = [layer.get_submodule(n) for n in frozen]
    embedding = model.get_input_embeddings()
    reference = embedding.weight
    shift = torch.randn(reference.shape[-1], generator=torch.Generator().manual_seed(0)).to(reference)
    recorded: dict[int, object] = {}
    captured: list[torch.Tensor] = []

    def record(module: nn.Module, args: object, output: object) -> None:
        recorded[id(module)] = output

    def replay(module: nn.Module, args: object, output: object) -> object:
        return recorded[id(module)]

    def add_shift(module: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
        return output + shift

    def capture(module: nn.Module, args: object, output: object) -> None:
        captured.append(layer_output(output))

    ids = (torch.arange(1, 5, device=reference.device) % embedding.num_embeddings).unsqueeze(0)
    for hooks in (
        [(m, record) for m in others] + [(layer, capture)],
        [(m, replay) for m in others] + [(target, add_shift), (layer, capture)],
    ):
        handles = [m.register_forward_hook(fn) for m, fn in hooks]
        try:
            model(input_ids=ids)
        finally:
            for h in handles:
                h.remove()
    moved = (captured[1] - captured[0]).float()
    scale = float(captured[0].abs().max()) + float(shift.abs().max())
    tolerance = 8 * torch.finfo(reference.dtype).eps * scale
    return bool(((moved - shift.float()).abs() <= tolerance).all())
