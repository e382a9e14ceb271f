"""The architecture map: every writer found, with the right kind, layout and post-norm, proven by running the model."""

import pytest
import torch
import transformers as T

from conftest import ARCHS, POST_NORM_ARCHS, tiny_model
from rosi.errors import UnsupportedArchitectureError
from rosi.model.architecture import ARCHITECTURES, architecture_map, writes_residual_directly
from rosi.model.writers import Layout, WriterKind

EXPECTED_KINDS = {  # per layer
    "mixtral": {"attention": 1, "expert": 1},
    "qwen3_moe": {"attention": 1, "expert": 1},
    "qwen2_moe": {"attention": 1, "mlp": 1, "expert": 1},
}


def test_every_listed_architecture_is_covered():
    assert set(ARCHS) == set(ARCHITECTURES)


def test_map_counts_and_layouts(arch):
    model = tiny_model(arch)
    amap = architecture_map(model)
    per_layer = EXPECTED_KINDS.get(arch, {"attention": 1, "mlp": 1})
    expected = {"embedding": 1, **{k: n * 3 for k, n in per_layer.items()}}
    assert amap.counts() == expected
    assert amap.hidden_size == 32 and amap.num_layers == 3 and not amap.discovered
    params = dict(model.named_parameters())
    for w in amap.writers:
        assert w.name in params
        if w.kind is WriterKind.EXPERT:
            assert w.layout is Layout.EXPERTS_OUT_IN and params[w.name].ndim == 3
        elif w.kind is WriterKind.EMBEDDING or arch == "gpt2":
            assert w.layout is Layout.IN_OUT
        else:
            assert w.layout is Layout.OUT_IN
        assert (w.post_norm is not None) == (arch in POST_NORM_ARCHS and w.kind is not WriterKind.EMBEDDING)


def test_tied_embeddings_detected():
    assert architecture_map(tiny_model("gemma2")).tied_embeddings
    assert not architecture_map(tiny_model("llama")).tied_embeddings


def _module_name(writer, layers_path):
    rel = writer.name.removeprefix(f"{layers_path}.{writer.layer}.")
    return rel.removesuffix(".down_proj") if writer.kind is WriterKind.EXPERT else rel.removesuffix(".weight")


def test_map_agrees_with_the_running_model(arch):
    """Adding v to a writer's output moves the layer output by exactly v, unless a norm or gate sits between."""
    model = tiny_model(arch)
    amap = architecture_map(model)
    spec = ARCHITECTURES[arch]
    layers = model.get_submodule(spec.layers)
    in_layer_1 = [w for w in amap.writers if w.layer == 1]
    names = [_module_name(w, spec.layers) for w in in_layer_1]
    for w, name in zip(in_layer_1, names, strict=True):
        # Freeze the blocks that hold the other writers (the whole MLP, router and gates included).
        others = tuple({n.split(".")[0] for n in names} - {name.split(".")[0]})
        direct = writes_residual_directly(model, layers[1], name, frozen=others)
        assert direct == (w.post_norm is None and w.gate is None), (w.name, direct)


def test_generic_discovery_verifies_a_parallel_residual_model():
    torch.manual_seed(0)
    config = T.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=64)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    amap = architecture_map(model)
    assert amap.discovered
    assert [w.name for w in amap.writers if w.layer == 0] == [
        "gpt_neox.layers.0.attention.dense.weight",
        "gpt_neox.layers.0.mlp.dense_4h_to_h.weight",
    ]


def test_discovery_runs_the_model_once_per_model(monkeypatch):
    """Discovery proves the writers by running the model; later maps of the same model reuse it."""
    import rosi.model.architecture as architecture

    torch.manual_seed(0)
    config = T.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=64)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    runs = []
    real = architecture.writes_residual_directly
    monkeypatch.setattr(architecture, "writes_residual_directly", lambda *a, **k: runs.append(1) or real(*a, **k))
    first = architecture_map(model)
    assert architecture_map(model) == first and len(runs) == 2  # attention and MLP, proven once
    other = T.AutoModelForCausalLM.from_config(config).eval()
    architecture_map(other)
    assert len(runs) == 4  # another model is proven anew


def test_generic_discovery_refuses_a_post_norm_model_it_does_not_know():
    model = tiny_model("gemma2")
    model.config.model_type = "mystery"
    with pytest.raises(UnsupportedArchitectureError, match="mystery.*does not add its output unchanged"):
        architecture_map(model)


def test_generic_discovery_refuses_unknown_module_names():
    model = tiny_model("gpt2")
    model.config.model_type = "mystery"  # c_proj is a Conv1D, not a Linear
    with pytest.raises(UnsupportedArchitectureError, match="mystery") as err:
        architecture_map(model)
    assert "c_proj" in str(err.value)


def test_missing_parameter_is_a_clear_error():
    model = tiny_model("llama")
    del model.model.layers[1].mlp.down_proj
    with pytest.raises(UnsupportedArchitectureError, match="mlp.down_proj.weight"):
        architecture_map(model)
