"""The ensemble reward manager and the all-K-logits read of verl's vLLM reward path."""

import asyncio

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from verl import DataProto
from verl.experimental.reward_loop import reward_loop
from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
from verl.trainer.ppo.reward import load_reward_manager

from verl_variance.core.config import EnsembleRewardConfig
from verl_variance.integration import ensemble_reward
from verl_variance.integration.ensemble_reward import ensemble_reward_output
from verl_variance.models.tiny import TinyModelConfig, build_tiny_model

PROMPTS = ["the film was", "i thought it", "this movie", "a great"]
RESPONSES = ["great fun", "boring and slow", "a masterpiece of the year", "mess"]


@pytest.fixture(scope="module")
def reward_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble_rm")
    return {k: build_tiny_model(root / f"k{k}", TinyModelConfig("qwen2", num_labels=k)) for k in (1, 3)}


def trainer_config(model_path, **ensemble) -> OmegaConf:
    return OmegaConf.create(
        {
            "actor_rollout_ref": {"model": {"path": str(model_path), "tokenizer_path": None}},
            "reward": {
                "reward_manager": {"name": "ensemble", "source": "register"},
                "reward_model": {"enable": False, "model_path": str(model_path)},
                "custom_reward_function": {"path": None, "name": None},
            },
            "ensemble_reward": ensemble,
        }
    )


def rollout(tokenizer, prompt: str, response: str) -> DataProto:
    """One sample as verl's reward loop passes it: left-padded prompt, right-padded response."""
    prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    prompt_ids = torch.tensor(prompt_ids if isinstance(prompt_ids, list) else prompt_ids["input_ids"])
    response_ids = torch.tensor(tokenizer(response, add_special_tokens=False)["input_ids"])
    pad = torch.full((3,), tokenizer.pad_token_id)
    prompts, responses = torch.cat([pad, prompt_ids])[None], torch.cat([response_ids, pad])[None]
    mask = torch.cat([torch.zeros(3), torch.ones(len(prompt_ids) + len(response_ids)), torch.zeros(3)]).long()[None]
    batch = TensorDict({"prompts": prompts, "responses": responses, "attention_mask": mask}, batch_size=1)
    raw_prompt = np.empty(1, dtype=object)
    raw_prompt[0] = [{"role": "user", "content": prompt}]
    return DataProto(batch=batch, non_tensor_batch={"raw_prompt": raw_prompt})


def independent_scores(model_path, responses=RESPONSES) -> torch.Tensor:
    """(N, K) head rewards, one unpadded sequence at a time, straight through transformers."""
    model = AutoModelForSequenceClassification.from_pretrained(model_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = []
    for prompt, response in zip(PROMPTS, responses, strict=True):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            rows.append(model(**ids).logits[0])
    return torch.stack(rows)


def test_outputs_hold_the_aggregate_the_variance_and_every_head():
    members = torch.tensor([[1.0, 2.0, 4.0], [0.5, 0.5, 0.5]])
    settings = EnsembleRewardConfig(aggregator="lcb", aggregator_params={"k": 0.5})
    first, second = ensemble_reward_output(members, settings)
    variance = np.var([1.0, 2.0, 4.0], ddof=1)
    assert first["reward_score"] == pytest.approx(max(7 / 3 - 0.5 * np.sqrt(variance), 1.0))
    assert first["reward_extra_info"]["reward_variance"] == pytest.approx(variance)
    assert first["reward_extra_info"]["reward_mean"] == pytest.approx(7 / 3)
    assert [first["reward_extra_info"][f"reward_head_{k}"] for k in range(3)] == [1.0, 2.0, 4.0]
    assert second["reward_extra_info"]["reward_variance"] == 0.0 and second["reward_score"] == pytest.approx(0.5)
    quiet = ensemble_reward_output(members, EnsembleRewardConfig(head_scores=False))[0]["reward_extra_info"]
    assert set(quiet) == {"reward_variance", "reward_mean"}


def test_manager_scores_every_head_in_one_batched_pass(reward_models, monkeypatch):
    assert get_reward_manager_cls("ensemble").__name__ == "EnsembleRewardManager"
    path = reward_models[3]
    config = trainer_config(path, aggregator="member", aggregator_params={"index": 2})
    tokenizer = AutoTokenizer.from_pretrained(path)
    manager = load_reward_manager(config, tokenizer)
    calls = []
    score = manager.scorer.score
    monkeypatch.setattr(manager.scorer, "score", lambda items: calls.append(len(items)) or score(items))

    async def score_all():
        samples = [rollout(tokenizer, p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
        return await asyncio.gather(*(manager.run_single(sample) for sample in samples))

    outputs = asyncio.run(score_all())
    assert calls == [4], "the concurrent requests were not batched into one forward pass"
    expected = independent_scores(path)
    heads = torch.tensor([[o["reward_extra_info"][f"reward_head_{k}"] for k in range(3)] for o in outputs])
    torch.testing.assert_close(heads, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor([o["reward_score"] for o in outputs]), expected[:, 2])
    variance = torch.tensor([o["reward_extra_info"]["reward_variance"] for o in outputs])
    torch.testing.assert_close(variance, expected.var(dim=1), rtol=1e-4, atol=1e-6)


def test_a_score_does_not_depend_on_which_requests_arrived_with_it(reward_models):
    """verl's reward loop sends one request per sample, at times that vary run to run: the same sample must get
    the same bits alone, with all the others, and in another order (fixed-shape chunks of batch_size rows)."""
    path = reward_models[3]
    tokenizer = AutoTokenizer.from_pretrained(path)
    manager = load_reward_manager(trainer_config(path, batch_size=3), tokenizer)
    responses = ["a long and boring story with a dull ending and bad acting all the way", "bad", "ok", "fun film"]
    samples = [rollout(tokenizer, p, r) for p, r in zip(PROMPTS, responses, strict=True)]

    def heads(order: list[int]) -> torch.Tensor:
        async def score():
            return await asyncio.gather(*(manager.run_single(samples[i]) for i in order))

        rows = [[o["reward_extra_info"][f"reward_head_{k}"] for k in range(3)] for o in asyncio.run(score())]
        return torch.tensor(rows, dtype=torch.float64)[torch.tensor(order).argsort()]

    together = heads([0, 1, 2, 3])
    alone = torch.cat([heads([i]) for i in range(4)])
    assert torch.equal(together, alone) and torch.equal(together, heads([3, 1, 0, 2]))
    torch.testing.assert_close(together.float(), independent_scores(path, responses), rtol=1e-4, atol=1e-5)


def test_bad_ensembles_fail_with_the_cause(reward_models, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(reward_models[3])
    with pytest.raises(ValueError, match="an ensemble of one head has no variance"):
        load_reward_manager(trainer_config(reward_models[1]), tokenizer)
    with pytest.raises(ValueError, match=r"aggregator_params.index=7 but .* has 3 heads"):
        ensemble_reward.EnsembleScorer(str(reward_models[3]), EnsembleRewardConfig("", "member", {"index": 7}))
    with pytest.raises(FileNotFoundError, match="is not a local folder"):
        load_reward_manager(trainer_config(tmp_path / "missing"), tokenizer)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['agregator'\]"):
        EnsembleRewardConfig.from_trainer_config({"ensemble_reward": {"agregator": "min"}})
    with pytest.raises(ValueError, match="do not fit aggregator 'softmin'"):
        EnsembleRewardConfig(aggregator="softmin", aggregator_params={"temperature": 2.0})
    causal_lm = build_tiny_model(tmp_path / "lm")  # AutoModelForSequenceClassification would add random heads
    with pytest.raises(ValueError, match=r"is a Qwen2ForCausalLM, not a sequence classifier with K reward heads"):
        load_reward_manager(trainer_config(causal_lm), tokenizer)
    with pytest.raises(ValueError, match=r"^ensemble_reward: batch_size: Value 'x' of type 'str' could not .*Integer$"):
        EnsembleRewardConfig.from_trainer_config({"ensemble_reward": {"batch_size": "x"}})  # one line


def test_a_served_reward_model_is_not_loaded_again_in_the_reward_worker(tmp_path):
    """With reward.reward_model.enable the vLLM server scores: the manager verl builds anyway loads nothing
    (the model path may even be a hub name the worker cannot load)."""
    config = trainer_config("org/served-ensemble-rm", aggregator="member", aggregator_params={"index": 1})
    config.reward.reward_model.enable = True
    manager = load_reward_manager(config, AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "p")))
    assert manager.scorer is None and manager.settings.aggregator_params == {"index": 1}


class FakeRewardLoopWorker:
    """verl's RewardLoopWorker with the reward server replaced by a canned /classify answer."""

    def __init__(self, logits, engine="vllm", tokenizer=None, **ensemble):
        self.config = OmegaConf.create(
            {
                "reward": {
                    "reward_manager": {"name": "ensemble"},
                    "reward_model": {"model_path": "rm", "rollout": {"name": engine}},
                },
                "ensemble_reward": {"aggregator": "mean", **ensemble},
            }
        )
        self.input_tokenizer = self.reward_model_tokenizer = tokenizer
        self.logits, self.payloads = logits, []

    async def _preprocess_reward_inputs(self, data):
        return "<verl's chat text>"

    async def _post_request(self, payload, endpoint):
        self.payloads.append((endpoint, payload))
        return {"data": [{"probs": self.logits}]}


@pytest.mark.parametrize("engine", ["vllm", "hf"])
def test_served_reward_path_reads_all_k_logits_of_the_text_the_manager_reads(reward_models, engine):
    tokenizer = AutoTokenizer.from_pretrained(reward_models[3])
    worker = FakeRewardLoopWorker([1.0, 2.0, 6.0], engine, tokenizer, max_length=64)
    output = asyncio.run(reward_loop.RewardLoopWorker.compute_score_disrm(worker, rollout(tokenizer, "a", "b c")))
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b c"}]
    expected = {"model": "rm", "input": tokenizer.apply_chat_template(messages, tokenize=False),
                "add_special_tokens": False, "truncate_prompt_tokens": 64, "truncation_side": "left",
                "use_activation": False}  # fmt: skip
    assert worker.payloads == [("classify", expected)]  # the chat template's special tokens are in the text
    assert output["reward_score"] == pytest.approx(3.0)  # the mean, not the last logit (6.0)
    assert output["reward_extra_info"]["reward_variance"] == pytest.approx(np.var([1.0, 2.0, 6.0], ddof=1))
    text = FakeRewardLoopWorker([1.0, 2.0], engine, tokenizer, prompt_format="text")
    asyncio.run(reward_loop.RewardLoopWorker.compute_score_disrm(text, rollout(tokenizer, "a", "b c")))
    assert text.payloads[0][1]["input"] == "ab c" and text.payloads[0][1]["add_special_tokens"] is True
    with pytest.raises(ValueError, match="an ensemble of one head"):
        one_head = FakeRewardLoopWorker([1.0], engine, tokenizer)
        asyncio.run(reward_loop.RewardLoopWorker.compute_score_disrm(one_head, rollout(tokenizer, "a", "b")))
    with pytest.raises(NotImplementedError, match="rollout.name=sglang returns one score"):
        asyncio.run(reward_loop.RewardLoopWorker.compute_score_disrm(FakeRewardLoopWorker([1.0, 2.0], "sglang"), None))


def test_other_managers_keep_verls_last_logit_read():
    worker = FakeRewardLoopWorker([1.0, 2.0, 6.0])
    worker.config.reward.reward_manager.name = "naive"
    output = asyncio.run(reward_loop.RewardLoopWorker.compute_score_disrm(worker, None))
    assert output == {"reward_score": 6.0}


def test_text_format_scores_prompt_and_response_as_one_text(reward_models):
    path = reward_models[3]
    tokenizer = AutoTokenizer.from_pretrained(path)
    manager = load_reward_manager(trainer_config(path, prompt_format="text"), tokenizer)
    output = asyncio.run(manager.run_single(rollout(tokenizer, PROMPTS[0], RESPONSES[0])))
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    ids = tokenizer(PROMPTS[0] + RESPONSES[0], return_tensors="pt")
    with torch.no_grad():
        expected = model(**ids).logits[0]
    heads = torch.tensor([output["reward_extra_info"][f"reward_head_{k}"] for k in range(3)])
    torch.testing.assert_close(heads, expected, rtol=1e-4, atol=1e-5)
