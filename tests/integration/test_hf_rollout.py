"""The hf rollout's sampler against independent computations with plain transformers."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl_variance.integration.hf_rollout import sample_batch


@pytest.fixture(scope="module")
def policy(tiny_models):
    path = tiny_models["qwen2"]
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = [tokenizer(text)["input_ids"] for text in ("the movie was", "a", "great acting and a bad plot")]
    return model, tokenizer, prompts


def _sample(model, tokenizer, prompts, **kwargs):
    defaults = dict(max_tokens=8, temperature=1.0, top_p=1.0, top_k=-1, eos_token_ids=[tokenizer.eos_token_id])
    defaults.update(kwargs)
    return sample_batch(model, prompts, pad_token_id=tokenizer.pad_token_id, **defaults)


def _full_forward_log_probs(model, prompt, tokens, temperature):
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1)


def test_greedy_matches_transformers_generate(policy):
    model, tokenizer, prompts = policy
    tokens, _ = _sample(model, tokenizer, prompts, temperature=0.0, eos_token_ids=[-1])
    for prompt, sampled in zip(prompts, tokens, strict=False):
        reference = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=None,
        )[0, len(prompt) :]
        assert sampled == reference.tolist()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_log_probs_match_a_full_forward_pass(policy, temperature):
    """What verl's actor recomputes: log_softmax(logits / T) at the sampled tokens, for left-padded rows too."""
    model, tokenizer, prompts = policy
    generator = torch.Generator().manual_seed(0)
    tokens, log_probs = _sample(model, tokenizer, prompts, temperature=temperature, generator=generator)
    for prompt, sampled, sampled_log_probs in zip(prompts, tokens, log_probs, strict=False):
        expected = _full_forward_log_probs(model, prompt, sampled, temperature)
        torch.testing.assert_close(torch.tensor(sampled_log_probs), expected, atol=1e-4, rtol=1e-4)


def test_batching_does_not_change_greedy_results(policy):
    model, tokenizer, prompts = policy
    batched, _ = _sample(model, tokenizer, prompts, temperature=0.0)
    alone = [_sample(model, tokenizer, [p], temperature=0.0)[0][0] for p in prompts]
    assert batched == alone


def test_stops_after_eos(policy):
    model, tokenizer, prompts = policy
    greedy, _ = _sample(model, tokenizer, prompts[:1], temperature=0.0, eos_token_ids=[-1])
    stop_token = greedy[0][2]
    stopped, log_probs = _sample(model, tokenizer, prompts[:1], temperature=0.0, eos_token_ids=[stop_token])
    first = greedy[0].index(stop_token)
    assert stopped[0] == greedy[0][: first + 1] and len(log_probs[0]) == first + 1


def test_top_k_one_is_greedy(policy):
    model, tokenizer, prompts = policy
    greedy, _ = _sample(model, tokenizer, prompts, temperature=0.0)
    top1, _ = _sample(model, tokenizer, prompts, temperature=1.3, top_k=1, generator=torch.Generator().manual_seed(3))
    assert top1 == greedy


def test_top_p_keeps_only_the_nucleus(policy):
    """With a tiny top_p only the single most likely token survives: sampling becomes greedy."""
    model, tokenizer, prompts = policy
    greedy, _ = _sample(model, tokenizer, prompts, temperature=0.0)
    nucleus, _ = _sample(
        model, tokenizer, prompts, temperature=1.0, top_p=1e-6, generator=torch.Generator().manual_seed(5)
    )
    assert nucleus == greedy


def test_seeded_sampling_is_reproducible_and_varies_with_seed(policy):
    model, tokenizer, prompts = policy
    runs = [_sample(model, tokenizer, prompts, generator=torch.Generator().manual_seed(s))[0] for s in (1, 1, 2)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
