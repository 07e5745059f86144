import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from verl_variance.models.tiny import TinyModelConfig, build_tiny_model


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gpt2"])
def test_tiny_model_loads_with_plain_transformers(tiny_models, arch):
    path = tiny_models[arch]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == arch
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<pad>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.vocab_size == len(tokenizer)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "the movie"}], add_generation_prompt=True)
    ids = prompt["input_ids"] if isinstance(prompt, dict) or hasattr(prompt, "keys") else prompt
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tokenizer))


def test_build_is_idempotent_and_rebuilds_on_new_config(tmp_path):
    path = build_tiny_model(tmp_path / "m", TinyModelConfig(seed=1))
    first = (path / "model.safetensors").read_bytes()
    build_tiny_model(tmp_path / "m", TinyModelConfig(seed=1))
    assert (path / "model.safetensors").read_bytes() == first
    build_tiny_model(tmp_path / "m", TinyModelConfig(seed=2))
    assert (path / "model.safetensors").read_bytes() != first
    assert json.loads((path / "tiny_model.json").read_text())["seed"] == 2


def test_classifier_with_k_heads(tmp_path):
    path = build_tiny_model(tmp_path / "rm", TinyModelConfig(num_labels=4))
    model = AutoModelForSequenceClassification.from_pretrained(path)
    assert model.score.weight.shape == (4, 64)
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(["a good movie", "bad"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 4)


def test_unknown_architecture_is_rejected():
    with pytest.raises(ValueError, match="expected qwen2, llama or gpt2"):
        TinyModelConfig(architecture="bert")
