"""The hf rollout's sampler against plain transformers: same samples as ``model.generate`` for the same prompt,
settings and seed; results independent of how requests are batched; verl's log-probs."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from verl_variance.cpu.hf_sampling import (
    SampleRequest,
    SamplingSettings,
    prompt_bucket,
    request_seed,
    sample_requests,
)

MAX_TOKENS = 8


@pytest.fixture(scope="module")
def policy(tiny_models):
    path = tiny_models["qwen2"]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = ("the movie was", "a", "great acting and a bad plot", "I did not like", "what a film")
    return model, tokenizer, [tokenizer(text)["input_ids"] for text in texts]


def _sample(policy, prompts, seeds=None, batch_rows=4, eos=None, **settings):
    model, tokenizer, _ = policy
    settings = SamplingSettings(max_tokens=settings.pop("max_tokens", MAX_TOKENS), **settings)
    seeds = seeds if seeds is not None else range(len(prompts))
    requests = [SampleRequest(list(p), settings, seed) for p, seed in zip(prompts, seeds, strict=True)]
    eos = [tokenizer.eos_token_id] if eos is None else eos
    return sample_requests(model, requests, eos_token_ids=eos, pad_token_id=tokenizer.pad_token_id,
                           max_prompt_length=16, batch_rows=batch_rows)  # fmt: skip


def _generate(policy, prompt, seed, **settings):
    """transformers' own sampling of one unpadded prompt, seeded through the global generator."""
    model, tokenizer, _ = policy
    config = GenerationConfig(
        max_new_tokens=settings.pop("max_tokens", MAX_TOKENS),
        do_sample=settings.get("temperature", 1.0) > 0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=settings.pop("eos", tokenizer.eos_token_id),
        top_k=max(settings.pop("top_k", 0), 0),
        **{k: v for k, v in settings.items() if not (k == "temperature" and v == 0)},
    )
    torch.manual_seed(seed)
    return model.generate(torch.tensor([prompt]), generation_config=config)[0, len(prompt) :].tolist()


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"temperature": 0.7},
        {"temperature": 1.3, "top_k": 5},
        {"top_p": 0.6},
        {"repetition_penalty": 100.0},
        {"repetition_penalty": 1.5, "temperature": 0},
    ],
    ids=["plain", "temperature", "top_k", "top_p", "repetition_penalty", "greedy_penalty"],
)
def test_samples_equal_transformers_generate(policy, settings):
    """Each setting changes the samples exactly as ``model.generate`` does for the same prompt and seed."""
    _, _, prompts = policy
    ours = _sample(policy, prompts, seeds=[11, 12, 13, 14, 15], eos=[-1], **settings)
    for prompt, seed, result in zip(prompts, [11, 12, 13, 14, 15], ours, strict=True):
        assert result.token_ids == _generate(policy, prompt, seed, eos=None, **settings)
        assert result.finish_reason == "length"
    if settings:  # the setting matters: without it the same seeds give other samples
        plain = _sample(policy, prompts, [11, 12, 13, 14, 15], eos=[-1])
        assert [r.token_ids for r in ours] != [r.token_ids for r in plain]


@pytest.fixture
def one_thread():
    """One intra-op thread: a GEMM's reduction order then depends on its shapes alone. With several, the split can
    change from call to call on a loaded machine (a 1-ulp log-prob difference, seen once in CI), which is not
    what the batching test is about."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_results_do_not_depend_on_batching(policy, one_thread):
    """A request's tokens and log-probs are bit-identical alone, in a full chunk, or behind other requests."""
    _, _, prompts = policy
    alone = [_sample(policy, [p], seeds=[7 + i], batch_rows=4)[0] for i, p in enumerate(prompts)]
    together = _sample(policy, prompts, seeds=[7 + i for i in range(len(prompts))], batch_rows=4)
    shuffled = _sample(policy, prompts[::-1], seeds=[7 + i for i in range(len(prompts))][::-1], batch_rows=4)[::-1]
    for a, b, c in zip(alone, together, shuffled, strict=True):
        assert a.token_ids == b.token_ids == c.token_ids
        assert a.log_probs == b.log_probs == c.log_probs


def test_log_probs_are_what_verl_recomputes(policy):
    """log_softmax(logits / T) of the sampled tokens in a plain full forward pass (no penalty, no truncation)."""
    model, _, prompts = policy
    for result, prompt in zip(_sample(policy, prompts, temperature=0.7, top_k=5, repetition_penalty=1.3), prompts,
                              strict=True):  # fmt: skip
        with torch.no_grad():
            logits = model(torch.tensor([prompt + result.token_ids])).logits[0, len(prompt) - 1 : -1] / 0.7
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(result.token_ids)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(result.log_probs), expected, atol=1e-4, rtol=1e-4)


def test_stop_tokens_and_eos_end_a_response(policy):
    _, tokenizer, prompts = policy
    free = _sample(policy, prompts[:1], temperature=0, eos=[-1])[0]
    stop = free.token_ids[2]
    first = free.token_ids.index(stop)
    for kwargs in ({"eos": [stop]}, {"eos": [-1], "stop_token_ids": (stop,)}):
        result = _sample(policy, prompts[:1], temperature=0, **kwargs)[0]
        assert result.token_ids == free.token_ids[: first + 1] and result.finish_reason == "stop"
        assert len(result.log_probs) == first + 1
    ignored = _sample(policy, prompts[:1], temperature=0, eos=[stop], ignore_eos=True)[0]
    assert ignored.token_ids == free.token_ids and ignored.finish_reason == "length"


def test_seeds_fix_the_samples(policy):
    _, _, prompts = policy
    runs = [[r.token_ids for r in _sample(policy, prompts, seeds=[s] * len(prompts))] for s in (1, 1, 2)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_request_seed_and_buckets():
    assert request_seed(42, 3, "det-5", 0) == request_seed(42, 3, "det-5", 0)
    assert len({request_seed(42, 3, "det-5", k) for k in range(100)}) == 100
    assert 0 <= request_seed("x") < 2**63
    assert [prompt_bucket(n, 16) for n in (1, 8, 9, 16, 17)] == [16, 16, 16, 16, 17]
    assert [prompt_bucket(n, 512) for n in (1, 32, 33, 100, 600)] == [32, 32, 64, 128, 600]


@pytest.mark.parametrize("params", [{"temperature": -1}, {"top_p": 0}, {"n": 2}, {"stop": ["x"]}])
def test_bad_settings_are_refused(params):
    with pytest.raises(ValueError, match="rollout.name=hf"):
        SamplingSettings.from_params(params, max_tokens=4)
