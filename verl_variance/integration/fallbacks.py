"""Where stock verl fails on the paper's set-ups on any machine, the smallest change that makes it run: value models
without flash-attn (sdpa for that load only), GPT-2 as a policy (its LM head class, its key/value heads), GPT-2 and
classifiers served by vLLM. Each acts only where verl would otherwise raise or load the wrong class."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import threading

from packaging.specifiers import SpecifierSet

from verl_variance.integration.compat import patch, register_entry

# ---------------------------------------------------------------------------------------------
# 1. Value models are loaded with attn_implementation="flash_attention_2" unconditionally.
#    Without flash-attn installed, fall back to sdpa for that call only.
# ---------------------------------------------------------------------------------------------
_attn_fallback = threading.local()


def _flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


@contextlib.contextmanager
def _sdpa_instead_of_flash_attention():
    _attn_fallback.active = True
    try:
        yield
    finally:
        _attn_fallback.active = False


SUPPORTED_TRANSFORMERS = SpecifierSet(">=4.54,<6")
"""transformers versions with the private ``PreTrainedModel._check_and_adjust_attn_implementation``."""


def patch_transformers_attn(module) -> None:
    @patch(module.PreTrainedModel, "_check_and_adjust_attn_implementation",
           versions=("transformers", SUPPORTED_TRANSFORMERS))  # fmt: skip
    def _(original):
        @functools.wraps(original)
        def _check_and_adjust_attn_implementation(self, attn_implementation, *args, **kwargs):
            if getattr(_attn_fallback, "active", False) and attn_implementation == "flash_attention_2":
                attn_implementation = "sdpa"
            return original(self, attn_implementation, *args, **kwargs)

        return _check_and_adjust_attn_implementation


def register_lm_head_architectures(module) -> None:
    """GPT-2's architecture is ``GPT2LMHeadModel``; verl maps only ``*ForCausalLM`` names to
    AutoModelForCausalLM and would load the bare ``GPT2Model`` (no logits)."""
    register_entry(module, "_architecture_to_auto_class", "LMHeadModel", module.AutoModelForCausalLM)


def patch_valuehead_loading(module) -> None:
    @patch(module, "load_valuehead_model")
    def _(original):
        @functools.wraps(original)
        def load_valuehead_model(local_path, torch_dtype, model_config, trust_remote_code):
            if _flash_attn_installed():
                return original(local_path, torch_dtype, model_config, trust_remote_code)
            with _sdpa_instead_of_flash_attention():
                return original(local_path, torch_dtype, model_config, trust_remote_code)

        return load_valuehead_model


# ---------------------------------------------------------------------------------------------
# 2. GPT-2: verl's monkey patch reads config.num_key_value_heads, which GPT2Config lacks.
#    GPT-2 is multi-head attention, so the number of key/value heads is the number of heads.
# ---------------------------------------------------------------------------------------------
def patch_gpt2_monkey_patch(module) -> None:
    @patch(module, "apply_monkey_patch")
    def _(original):
        @functools.wraps(original)
        def apply_monkey_patch(model, *args, **kwargs):
            config = model.config
            if not hasattr(config, "num_key_value_heads") and not hasattr(config, "text_config"):
                config.num_key_value_heads = config.num_attention_heads
            return original(model, *args, **kwargs)

        return apply_monkey_patch


# ---------------------------------------------------------------------------------------------
# verl's vLLM worker extension patches every model it launches (monkey_patch_model): its compute_logits (to mask
# tokens the sampler must never pick) and its MoE weight loader, found as model.model or model.language_model.
# vLLM's GPT-2 keeps its layers in model.transformer and its GPT-2 (BERT, RoBERTa, ...) classifiers have no
# compute_logits, so verl's vLLM server fails at launch on the paper's GPT-2 policy and on such a reward model
# ("... does not have a valid 'model' or 'language_model' attribute", "... has no attribute 'compute_logits'").
# Where verl would raise, nothing applies: a classifier samples nothing, and verl's MoE loaders have model.model.
# ---------------------------------------------------------------------------------------------
def patch_vllm_model_patches(module) -> None:
    @patch(module, "monkey_patch_compute_logits")
    def _(original):
        @functools.wraps(original)
        def monkey_patch_compute_logits(model, vocab_size: int, banned_token_ids=None):
            if not hasattr(model, "compute_logits"):  # a pooling model (the served reward model): no sampling
                return None
            return original(model, vocab_size, banned_token_ids)

        return monkey_patch_compute_logits

    @patch(module, "patch_vllm_moe_model_weight_loader")
    def _(original):
        @functools.wraps(original)
        def patch_vllm_moe_model_weight_loader(model):
            if not any(hasattr(model, name) for name in ("model", "language_model", "runnable")):
                return None  # not one of verl's MoE models (GPT-2: model.transformer)
            return original(model)

        return patch_vllm_moe_model_weight_loader
