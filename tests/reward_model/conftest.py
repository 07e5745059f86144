"""Tiny reward models built locally, and one stage-1 backbone trained once per session."""

from __future__ import annotations

import copy

import pytest

from tests.reward_model.synthetic import synthetic_pairs
from verl_variance.models.tiny import TinyModelConfig, build_tiny_model
from verl_variance.reward_model.data import encode_pairs
from verl_variance.reward_model.reference import train_stage1_reference
from verl_variance.reward_model.stage1 import Stage1Config


@pytest.fixture(scope="session")
def tiny_rm(tmp_path_factory):
    """Folder factory: ``tiny_rm(num_labels, architecture)`` -> path of a random tiny classifier."""
    root = tmp_path_factory.mktemp("tiny_rm")

    def build(num_labels: int = 3, architecture: str = "qwen2"):
        config = TinyModelConfig(architecture, num_labels=num_labels)
        return build_tiny_model(root / f"{architecture}_{num_labels}", config)

    return build


def load(path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return AutoModelForSequenceClassification.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def stage1(tiny_rm):
    """A one-head tiny qwen2 fine-tuned with BT on 1000 synthetic pairs (paper stage 1, early stop at 0.4).

    A random transformer's last-token features are not linearly separable for this reward (a linear
    probe reaches ~0.8), so stage 2 runs on this backbone, as in the paper.
    """
    model, tokenizer = load(tiny_rm(1))
    train, test = synthetic_pairs(1000, seed=0), synthetic_pairs(300, seed=1)
    encoded = encode_pairs(train, tokenizer, max_length=64)
    config = Stage1Config(learning_rate=1e-3, num_epochs=5, lr_scheduler="constant", seed=0)
    history = train_stage1_reference(model, encoded, config)
    return {"model": model, "tokenizer": tokenizer, "history": history, "test": test, "encoded": encoded}


@pytest.fixture
def backbone(stage1):
    """A private copy of the stage-1 model (tests may write heads into it)."""
    return copy.deepcopy(stage1["model"])
