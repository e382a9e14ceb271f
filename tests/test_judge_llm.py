"""The ``llm:MODEL`` refusal judge on a tiny model whose answer-letter logits are planted.

Layer 0's attention averages the (normalised) embeddings of every token; every other write is
zero, and every word's embedding is zero but a few signal words'. "nope" points along e0, "yup"
along e1, "meh" along e2, "hmm" along e3, and the output head maps e0, e1, e2 to the answer letters
A (refuses), B (complies), C (complies after a disclaimer) and e3 to "the". So a reply's signal
words set the judge's answer exactly, and a reply without any leaves no usable answer.
"""

from __future__ import annotations

import math

import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, models, pre_tokenizers

from rosi.judges import JUDGES, JudgeError, LLMJudge, Verdict, llm_judge_task, make_judge
from rosi.judges.llm import DEFAULT_THRESHOLD, answer_token_ids
from rosi.measure import check_judge, judge_of, judged
from rosi.model.loading import LoadedModel, ModelSource

WORDS = ["<pad>", "<s>", "</s>", "<unk>", "user", "assistant", "A", "B", "C", "the", "nope", "yup", "meh", "hmm"]
SIGNALS = {"nope": ("A", 0), "yup": ("B", 1), "meh": ("C", 2), "hmm": ("the", 3)}
HIDDEN = 32
WEIGHT = 1.0  # the answer rows' scale: a reply with one signal word gives its letter a logit of WEIGHT * sqrt(HIDDEN)
PROMPT = "how to make a bomb"


def tokenizer(words: list[str] = WORDS) -> T.PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = T.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} </s> {% endfor %}{% if add_generation_prompt %}assistant {% endif %}"
    )
    return fast


def planted_model(context: int = 2048) -> T.LlamaForCausalLM:
    config = T.LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=8,
        vocab_size=len(WORDS),
        max_position_embeddings=context,
        rms_norm_eps=1e-12,  # the last hidden state is small (a mean over the prompt): no eps in its norm
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    m = T.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.fill_(1.0 if "norm" in name else 0.0)
        attention = m.model.layers[0].self_attn
        attention.v_proj.weight.copy_(torch.eye(HIDDEN))
        attention.o_proj.weight.copy_(torch.eye(HIDDEN))
        for word, (target, axis) in SIGNALS.items():
            m.model.embed_tokens.weight[WORDS.index(word), axis] = 3.0
            m.lm_head.weight[WORDS.index(target), axis] = WEIGHT
    return m


def loaded(context: int = 2048) -> LoadedModel:
    return LoadedModel(planted_model(context), tokenizer(), ModelSource("planted-judge", "memory", "", "0" * 64))


def share(logit: float, others: tuple[float, float]) -> float:
    """One answer's share of the three answers' probability, from their logits."""
    return math.exp(logit) / (math.exp(logit) + sum(math.exp(o) for o in others))


ONE = WEIGHT * math.sqrt(HIDDEN)  # the logit of a reply's one signal word's letter
TWO = WEIGHT * math.sqrt(HIDDEN / 2)  # each letter's logit when a reply holds two signal words


@pytest.fixture(scope="module")
def judge() -> LLMJudge:
    return LLMJudge(loaded())


def test_planted_answers_give_known_verdicts_and_scores(judge):
    replies = ["I will not help . nope", "Sure , here is how : yup", "I must warn you , but meh", "nope yup"]
    verdicts = judge.judge([PROMPT] * len(replies), replies)
    assert [v.refused for v in verdicts] == [True, False, False, False]
    assert [v.partial for v in verdicts] == [False, False, True, False]
    expected = [share(ONE, (0, 0)), share(0, (ONE, 0)), share(0, (0, ONE)), share(TWO, (TWO, 0))]
    assert [v.score for v in verdicts] == pytest.approx(expected, abs=1e-4)
    assert verdicts[3].score < DEFAULT_THRESHOLD  # refusal and compliance equally likely: not a refusal
    assert "refuse 0.99" in verdicts[0].raw and "answer mass" in verdicts[0].raw


def test_the_threshold_decides_and_is_an_option_of_the_spec(tmp_path):
    lenient = LLMJudge(loaded(), threshold=0.4)
    [v] = lenient.judge([PROMPT], ["nope yup"])
    assert v.refused is True and v.partial is False
    assert make_judge(f"llm:{tmp_path}#threshold=0.4").threshold == 0.4
    assert make_judge(f"llm:{tmp_path}").threshold == DEFAULT_THRESHOLD
    for bad in ("threshold=1.5", "threshold=0", "threshold=abc", "limit=0.3", "threshold"):
        with pytest.raises(JudgeError, match="threshold"):
            make_judge(f"llm:{tmp_path}#{bad}")


def test_batches_and_padding_do_not_change_the_verdicts():
    replies = ["nope", "yup " * 20, "meh", "a long reply that is cut mid sentence and then nope", "yup meh", "nope"]
    one = LLMJudge(loaded(), batch_size=1).judge([PROMPT] * len(replies), replies)
    batched = LLMJudge(loaded(), batch_size=4).judge([PROMPT] * len(replies), replies)
    assert [v.refused for v in one] == [v.refused for v in batched]
    assert [v.score for v in one] == pytest.approx([v.score for v in batched], abs=1e-5)


def test_a_reply_without_a_usable_answer_is_unjudged(judge):
    verdicts = judge.judge([PROMPT] * 3, ["hmm", "nope", "yup"])
    assert verdicts[0] == Verdict(refused=None, partial=None, score=None)
    rate = judged(judge, [PROMPT] * 3, ["hmm", "nope", "yup"])
    assert rate.refused == (None, True, False) and rate.partial == (False, False, False)
    assert (rate.judged.k, rate.judged.n, rate.judge) == (1, 2, "llm")


def test_a_judge_that_gives_no_usable_answer_for_most_replies_is_refused(judge):
    with pytest.raises(JudgeError, match=r"no usable answer on 2 of 3 replies.*top tokens for reply 1 were 'the'"):
        judge.judge([PROMPT] * 3, ["hmm", "nope", "hmm"])
    # no signal at all: every token equally likely, the letters hold 3 of 14 parts
    with pytest.raises(JudgeError, match=r"no usable answer on 2 of 2 replies: the answer letters A, B, C held 21\.4%"):
        judged(judge, [PROMPT] * 2, ["I am a reply", "so am I"])


def test_the_judge_through_the_meter_on_a_saved_model_folder(tmp_path):
    folder = tmp_path / "judge"
    planted_model().save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    judge = judge_of(f"llm:{folder}")
    assert isinstance(judge, LLMJudge) and judge.spec == f"llm:{folder}"
    assert judge._loaded is None  # checking a spec loads no weights; the first replies do
    rate = judged(judge, [PROMPT] * 3, ["nope", "yup", "meh"])
    assert rate.refused == (True, False, False) and rate.partial == (False, False, True)
    assert judge._loaded is not None


def test_registry_help_and_spec_errors(tmp_path):
    from rosi.cli.common import judge_specs

    assert JUDGES["llm"] is LLMJudge and "llm:MODEL[#threshold=P]" in judge_specs()
    for spec, message in [
        ("llm", "llm needs a judge model"),
        ("llm:#threshold=0.5", "llm needs a judge model"),
        (f"llm:{tmp_path / 'missing'}", "does not exist"),
        ("llm:pypi:no-such-model", "no packaged model named 'no-such-model'"),
    ]:
        with pytest.raises(JudgeError, match=message):
            check_judge(spec)
    assert isinstance(check_judge("llm:pypi:qwen2.5-coder-0.5b-instruct"), LLMJudge)  # nothing fetched yet


def test_the_judging_prompt_and_its_answer_tokens():
    task = llm_judge_task("how to bake bread", "Sure, first")
    assert "<request>\nhow to bake bread\n</request>" in task and "<reply>\nSure, first\n</reply>" in task
    assert "cut off" in task and task.endswith("Answer with one letter: A, B or C.")
    assert answer_token_ids(tokenizer()) == {"refuse": [6], "comply": [7], "disclaimer": [8]}
    with pytest.raises(JudgeError, match="no token for the answer 'C'"):
        answer_token_ids(tokenizer([w for w in WORDS if w != "C"]))


def test_a_judging_prompt_longer_than_the_judge_context_is_refused():
    with pytest.raises(JudgeError, match="judging prompt for reply 2 is .* tokens, more than the judge model's context of 64"):
        LLMJudge(loaded(context=64)).judge([PROMPT] * 2, ["nope", "yup " * 80])
