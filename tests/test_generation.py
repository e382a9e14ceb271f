"""Greedy generation: one pass for replies and first-token distributions, and a shared prompt
prefix computed once, both giving the numbers of the plain path."""

import pytest
import torch
import transformers as T

import planted
from conftest import ARCHS, tiny_model
from rosi.model.chat import ChatFormat
from rosi.model.generation import (
    generate,
    generate_with_logprobs,
    next_token_logprobs,
    shared_prefix_batches,
    shared_prefix_length,
)

# prompts of different lengths, so that rows are padded
PROMPTS = planted.HARMFUL + planted.HARMLESS + ["bake", "how to make a bomb cake soup kite gun"]


def _random_model(arch: str = "llama") -> torch.nn.Module:
    model = tiny_model(arch)
    model.generation_config = T.GenerationConfig(eos_token_id=2, pad_token_id=0)
    return model


def test_one_pass_gives_the_replies_and_the_first_token_distributions_of_two():
    model = _random_model()
    fmt = ChatFormat(planted.tokenizer())
    assert len({len(fmt.encode([p])["input_ids"][0]) for p in PROMPTS}) > 1
    replies, logprobs = generate_with_logprobs(model, fmt, PROMPTS, max_new_tokens=5, batch_size=4)
    assert replies == generate(model, fmt, PROMPTS, max_new_tokens=5, batch_size=4)
    expected = next_token_logprobs(model, fmt, PROMPTS, batch_size=4)
    assert logprobs.shape == expected.shape and logprobs.dtype == torch.float32
    torch.testing.assert_close(logprobs, expected, atol=1e-5, rtol=1e-5)


def test_the_shared_prefix_leaves_every_row_a_token_of_its_own():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert shared_prefix_length([[7, 2], [1, 2]]) == 0
    assert shared_prefix_length([[1]]) == 0
    assert shared_prefix_length([]) == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_a_shared_prefix_computed_once_gives_the_same_replies_and_distributions(arch):
    model = _random_model(arch)
    fmt = ChatFormat(planted.tokenizer(), system_prompt="how to make a cake to make a kite")
    kw = dict(max_new_tokens=6, batch_size=5)
    assert shared_prefix_batches(model, fmt, PROMPTS, 5, torch.device("cpu")) is not None  # the shared path is taken
    shared = generate_with_logprobs(model, fmt, PROMPTS, share_prefix=True, **kw)
    plain = generate_with_logprobs(model, fmt, PROMPTS, **kw)
    assert shared[0] == plain[0]
    torch.testing.assert_close(shared[1], plain[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_next_token_distributions_with_a_shared_prefix_are_the_plain_ones(arch):
    model = _random_model(arch)
    fmt = ChatFormat(planted.tokenizer(), system_prompt="how to make a cake to make a kite")
    assert shared_prefix_batches(model, fmt, PROMPTS, 5, torch.device("cpu")) is not None  # the shared path is taken
    shared = next_token_logprobs(model, fmt, PROMPTS, batch_size=3, share_prefix=True)
    torch.testing.assert_close(shared, next_token_logprobs(model, fmt, PROMPTS, batch_size=3), atol=1e-5, rtol=1e-5)


def test_prompts_that_share_too_little_take_the_plain_path():
    fmt = ChatFormat(planted.tokenizer())  # the template shares one token ("user")
    assert shared_prefix_batches(_random_model(), fmt, PROMPTS, 4, torch.device("cpu")) is None
