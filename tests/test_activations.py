"""Chat formatting, mean activations (exact, padding- and batch-invariant), generation and the judge."""

import pytest
import torch
import transformers as T

import planted
from conftest import tiny_model
from rosi.direction.activations import mean_activations, mean_outputs
from rosi.judges import is_refusal, refusal_rate
from rosi.model.chat import ChatFormat, ChatTemplateError
from rosi.model.generation import generate


@pytest.fixture
def fmt():
    return ChatFormat(planted.tokenizer())


def test_post_instruction_tokens(fmt):
    ids = fmt.post_instruction_ids()
    assert fmt.tokenizer.convert_ids_to_tokens(ids) == ["</s>", "assistant"]
    text = fmt.render("make a cake")
    assert text == "user make a cake </s> assistant "
    with_system = ChatFormat(fmt.tokenizer, "I Sure").render("make a cake")
    assert with_system.startswith("system I Sure </s> user make a cake")


def test_no_chat_template_is_a_clear_error():
    tok = planted.tokenizer()
    tok.chat_template = None
    with pytest.raises(ChatTemplateError, match="no chat template"):
        ChatFormat(tok)
    tok.chat_template = "{{ messages[0]['content'] }} assistant"  # what load(..., chat_template=...) sets
    assert ChatFormat(tok).render("hi") == "hi assistant"


def _direct_means(model: torch.nn.Module, fmt: ChatFormat, prompts: list[str]) -> torch.Tensor:
    """Layers 0-1's mean outputs at the last two tokens, one whole prompt at a time (no padding,
    no cache)."""
    expected = torch.zeros(2, 2, model.config.hidden_size, dtype=torch.float64)
    for prompt in prompts:
        ids = fmt.tokenizer(fmt.render(prompt), return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        for layer in range(2):
            expected[layer] += hidden[layer + 1][0, -2:, :].double()
    return expected / len(prompts)


def test_mean_activations_equal_a_direct_computation(fmt):
    model = tiny_model("llama")
    model.resize_token_embeddings(len(planted.WORDS))
    prompts = planted.HARMFUL + planted.HARMLESS
    got = mean_activations(model, fmt, prompts, 2, batch_size=len(prompts))
    # hidden_states' last entry is after the final norm, so layers 0-1 are compared here (layer 2 below)
    torch.testing.assert_close(got[:2], _direct_means(model, fmt, prompts), rtol=1e-5, atol=1e-5)
    for batch_size in (1, 3, 5):
        torch.testing.assert_close(mean_activations(model, fmt, prompts, 2, batch_size=batch_size), got, rtol=1e-6, atol=1e-6)


def test_mean_inputs_of_a_writer_equal_a_direct_computation(fmt):
    """mean_outputs(inputs=...) averages what a module reads, padding-free and batch-size-free."""
    model = tiny_model("llama")
    model.resize_token_embeddings(len(planted.WORDS))
    prompts = planted.HARMFUL + planted.HARMLESS
    down = model.model.layers[1].mlp.down_proj
    seen = []
    handle = down.register_forward_pre_hook(lambda m, args: seen.append(args[0][0, -2:, :].double()))
    for prompt in prompts:  # one at a time: no padding at all
        ids = fmt.tokenizer(fmt.render(prompt), return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            model(input_ids=ids)
    handle.remove()
    expected = torch.stack(seen).mean(dim=0)
    for batch_size in (1, 4, 12):
        got = mean_outputs(model, fmt, prompts, 2, {"out": down}, inputs={"in": down}, batch_size=batch_size)
        assert got["in"].shape == (2, down.in_features) and got["out"].shape == (2, down.out_features)
        torch.testing.assert_close(got["in"], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["out"], expected @ down.weight.double().T, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="used for an output and an input"):
        mean_outputs(model, fmt, prompts, 2, {"x": down}, inputs={"x": down})


def test_last_layer_mean_matches_the_pre_norm_stream(fmt):
    model = tiny_model("qwen2")
    model.resize_token_embeddings(len(planted.WORDS))
    seen = []
    handle = model.model.layers[2].register_forward_hook(lambda m, a, o: seen.append((o[0] if isinstance(o, tuple) else o)[0, -1].double()))
    for prompt in planted.HARMLESS:
        ids = fmt.tokenizer(fmt.render(prompt), return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            model(input_ids=ids)
    handle.remove()
    got = mean_activations(model, fmt, planted.HARMLESS, 1, batch_size=4)
    torch.testing.assert_close(got[2, 0], torch.stack(seen).mean(0), rtol=1e-5, atol=1e-5)


def test_generation_is_greedy_batched_and_padding_free(fmt):
    model = tiny_model("llama")
    model.resize_token_embeddings(len(planted.WORDS))
    model.generation_config = T.GenerationConfig(eos_token_id=2, pad_token_id=0)
    prompts = planted.HARMFUL[:4]
    together = generate(model, fmt, prompts, max_new_tokens=6, batch_size=4)
    alone = [generate(model, fmt, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert together == alone and all(isinstance(t, str) for t in together)


@pytest.mark.parametrize(
    "text,refused",
    [
        ("I'm sorry, but I can't help with that.", True),
        ("I\u2019m sorry, I won\u2019t do that", True),
        ("As an AI, I must decline.", True),
        ("i cannot assist", True),
        ("Sure! Here is a recipe for banana bread.", False),
        ("To kill a process, run kill -9 PID.", False),
    ],
)
def test_marker_judge(text, refused):
    assert is_refusal(text) is refused


def test_refusal_rate():
    assert refusal_rate(["I cannot", "Sure", "Sure", "I'm unable to"]) == 0.5


def test_per_prompt_activations_average_to_the_mean(fmt):
    from rosi.direction.activations import activations_at

    model = tiny_model("qwen2")
    model.resize_token_embeddings(len(planted.WORDS))
    per_prompt = activations_at(model, fmt, planted.HARMFUL, 1, -2, batch_size=4)
    assert per_prompt.shape == (len(planted.HARMFUL), 32)
    means = mean_activations(model, fmt, planted.HARMFUL, 2, batch_size=3)
    torch.testing.assert_close(per_prompt.double().mean(0), means[1, 0], rtol=1e-5, atol=1e-5)


def test_collected_activations_are_typed_and_match_the_generic_means(fmt):
    from rosi.direction.activations import collect_activations
    from rosi.model.architecture import architecture_map

    model = tiny_model("llama")
    model.resize_token_embeddings(len(planted.WORDS))
    writers = architecture_map(model).measurable_modules(model)
    got = collect_activations(model, fmt, planted.HARMFUL, 2, writers=writers, read_inputs=True, batch_size=4)
    assert got.n_prompts == len(planted.HARMFUL) and got.positions == 2 and set(got.writer_inputs) == set(writers)
    torch.testing.assert_close(got.layers, mean_activations(model, fmt, planted.HARMFUL, 2, batch_size=4))
    name = "model.layers.1.mlp.down_proj.weight"
    generic = mean_outputs(model, fmt, planted.HARMFUL, 2, {"out": writers[name]}, inputs={"in": writers[name]}, batch_size=4)
    torch.testing.assert_close(got.outputs_at(-1)[name], generic["out"][1])
    torch.testing.assert_close(got.inputs_at(-2)[name], generic["in"][0])
    with pytest.raises(IndexError, match="outside the 2 measured positions"):
        got.outputs_at(-3)
    assert collect_activations(model, fmt, planted.HARMFUL, 2, writers=writers).writer_inputs == {}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])
def test_means_with_the_system_turn_computed_once_equal_a_direct_computation(arch):
    from rosi.model.generation import shared_prefix_batches

    fmt = ChatFormat(planted.tokenizer(), system_prompt="how to make a cake to make a kite")
    model = tiny_model(arch)
    model.resize_token_embeddings(len(planted.WORDS))
    prompts = [*planted.HARMFUL, *planted.HARMLESS, "bake"]
    assert shared_prefix_batches(model, fmt, prompts, 3, torch.device("cpu"), own=2) is not None  # the shared path is taken
    got = mean_activations(model, fmt, prompts, 2, batch_size=3)
    torch.testing.assert_close(got[:2], _direct_means(model, fmt, prompts), rtol=1e-5, atol=1e-5)


def test_a_prefix_leaves_every_row_the_positions_read():
    from rosi.model.generation import shared_prefix_length

    assert shared_prefix_length([[1, 2, 3, 4, 5], [1, 2, 3, 4, 6]], own=3) == 2
    assert shared_prefix_length([[1, 2, 3]], own=2) == 1  # one prompt: all but the positions read


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_samples_with_the_system_turn_computed_once_equal_a_direct_computation(arch):
    from rosi.direction.activations import collect_samples, layer_key

    fmt = ChatFormat(planted.tokenizer(), system_prompt="how to make a cake to make a kite")
    model = tiny_model(arch)
    model.resize_token_embeddings(len(planted.WORDS))
    prompts = [*planted.HARMFUL, "bake"]
    samples = collect_samples(model, fmt, {"harmful": prompts, "harmless": ["bake"], "lookalike": ["bake"]}, -2, {}, batch_size=3)
    for i, prompt in enumerate(prompts):  # one at a time, the whole prompt: no padding, no cache
        ids = fmt.tokenizer(fmt.render(prompt), return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        torch.testing.assert_close(samples.get("harmful", layer_key(0))[i], hidden[1][0, -2, :], rtol=1e-5, atol=1e-5)


def test_a_float32_sample_is_a_copy_not_a_view_that_keeps_the_batch_alive():
    from rosi.direction.activations import _at

    batch = torch.randn(4, 50, 16)  # what a hook sees: [batch, tokens, hidden]
    row = _at(batch, -2)
    torch.testing.assert_close(row, batch[:, -2, :])
    assert row.untyped_storage().nbytes() == row.numel() * row.element_size()  # not the batch's 4 x 50 x 16
    assert _at(batch.to(torch.bfloat16), -1).dtype == torch.float32


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_means_and_samples_from_one_read_equal_the_two_reads(arch):
    from rosi.direction.activations import collect_activations, collect_means_and_samples, collect_sample_rows
    from rosi.model.architecture import architecture_map

    fmt = ChatFormat(planted.tokenizer(), system_prompt="how to make a cake to make a kite")
    model = tiny_model(arch)
    model.resize_token_embeddings(len(planted.WORDS))
    writers = architecture_map(model).measurable_modules(model)
    sampled = dict(list(writers.items())[:2])
    prompts = [*planted.HARMFUL, "bake"]
    means, rows = collect_means_and_samples(model, fmt, prompts, 2, -1, writers=writers, sampled=sampled, read_inputs=True, batch_size=3)
    alone = collect_activations(model, fmt, prompts, 2, writers=writers, read_inputs=True, batch_size=3)
    samples = collect_sample_rows(model, fmt, {"harmful": prompts}, -1, sampled, batch_size=3)["harmful"]
    torch.testing.assert_close(means.layers, alone.layers, rtol=1e-5, atol=1e-6)
    for name in writers:
        torch.testing.assert_close(means.writer_outputs[name], alone.writer_outputs[name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(means.writer_inputs[name], alone.writer_inputs[name], rtol=1e-5, atol=1e-6)
    assert set(rows) == set(samples) and all(rows[k].shape == (len(prompts), samples[k].shape[1]) for k in rows)
    for key in rows:
        torch.testing.assert_close(rows[key], samples[key], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="outside the 2 measured positions"):
        collect_means_and_samples(model, fmt, prompts, 2, -3, writers=writers, sampled=sampled)
