"""Tiny, locally built language models and tokenizers (no model hub).

Tests, benchmarks and the ``quick`` demo scale need real Hugging Face checkpoints that verl can
load with ``AutoModelForCausalLM.from_pretrained(path)``. This module builds them from a
transformers config and a byte-level BPE tokenizer trained on a small built-in corpus, so nothing
is downloaded. The same loading code then works on the real hub models named in the recipes.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML, the template of Qwen2 and SmolLM2: verl applies it to every prompt."""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

_CORPUS_WORDS = (
    "the a an this that movie film story actor actress plot scene music ending director great good "
    "bad awful terrible wonderful boring funny sad loved hated liked enjoyed watched again never "
    "always best worst ever really very quite not so too much little of and or but in on at with "
    "was is it i you we they he she his her their my our time character characters performance "
    "script acting camera beautiful ugly brilliant dull masterpiece mess fun slow fast long short "
    "one two three first last minutes hours year years review positive negative happy angry"
).split()


def _training_corpus(n_lines: int = 2000, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(_CORPUS_WORDS) for _ in range(rng.randint(4, 16))) for _ in range(n_lines)]


@dataclass
class TinyModelConfig:
    """Shape of a tiny causal LM (defaults: the 2-layer hidden-64 Qwen2 of VERL_NOTES)."""

    architecture: str = field(default="qwen2", metadata={"help": "qwen2, llama or gpt2."})
    hidden_size: int = field(default=64, metadata={"help": "Model width."})
    num_layers: int = field(default=2, metadata={"help": "Number of decoder layers."})
    num_heads: int = field(default=4, metadata={"help": "Attention heads."})
    num_kv_heads: int = field(default=2, metadata={"help": "Key/value heads (qwen2, llama)."})
    intermediate_size: int = field(default=128, metadata={"help": "MLP width."})
    vocab_size: int = field(default=512, metadata={"help": "Tokenizer vocabulary size (BPE target)."})
    max_position_embeddings: int = field(default=512, metadata={"help": "Longest sequence."})
    num_labels: int = field(default=0, metadata={"help": "0: causal LM; K>0: sequence classifier, K heads."})
    seed: int = field(default=0, metadata={"help": "Weight initialisation seed."})

    def __post_init__(self) -> None:
        if self.architecture not in ("qwen2", "llama", "gpt2"):
            raise ValueError(f"TinyModelConfig.architecture={self.architecture!r}: expected qwen2, llama or gpt2")
        if self.num_labels < 0:
            raise ValueError(f"TinyModelConfig.num_labels={self.num_labels}: 0 (a causal LM) or K >= 1 heads")


def build_tokenizer(vocab_size: int = 512):
    """Train a byte-level BPE tokenizer on the built-in corpus.

    Returns a ``PreTrainedTokenizerFast`` with ChatML template, ``eos=<|im_end|>`` and a pad token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def _hf_config(cfg: TinyModelConfig, tokenizer):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if cfg.num_labels:
        ids["num_labels"] = cfg.num_labels
    if cfg.architecture == "gpt2":
        return GPT2Config(
            n_embd=cfg.hidden_size,
            n_layer=cfg.num_layers,
            n_head=cfg.num_heads,
            n_inner=cfg.intermediate_size,
            n_positions=cfg.max_position_embeddings,
            **ids,
        )
    config_cls = Qwen2Config if cfg.architecture == "qwen2" else LlamaConfig
    return config_cls(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        **ids,
    )


def build_tiny_model(output_dir: str | os.PathLike, config: TinyModelConfig | None = None) -> Path:
    """Write a randomly initialised tiny model + tokenizer as a standard HF folder.

    Args:
        output_dir: folder to create (``from_pretrained`` loads it).
        config: model shape; ``num_labels=K`` gives ``AutoModelForSequenceClassification`` with K heads.

    Returns:
        The folder path. Re-running with the same config is a no-op (the config is recorded in
        ``tiny_model.json``); a different config rebuilds.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = config or TinyModelConfig()
    output_dir = Path(output_dir)
    record = output_dir / "tiny_model.json"
    if record.exists() and json.loads(record.read_text()) == asdict(config):
        return output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(config.vocab_size)
    hf_config = _hf_config(config, tokenizer)
    torch.manual_seed(config.seed)
    model_cls = AutoModelForSequenceClassification if config.num_labels else AutoModelForCausalLM
    model = model_cls.from_config(hf_config)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    record.write_text(json.dumps(asdict(config), indent=2))
    return output_dir
