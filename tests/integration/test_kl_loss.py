"""Variance-weighted KL loss on the actor, through verl's own ``ppo_loss`` as the workers call it."""

import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from verl.workers import engine_workers
from verl.workers.config import FSDPActorConfig

from verl_variance.core.config import VarianceKLConfig
from verl_variance.core.kl import kl_weight
from verl_variance.integration import compat
from verl_variance.integration.checks import check_kl_config
from verl_variance.integration.kl_loss import attach_kl_weights, uses_variance_kl_loss

BS, PROMPT, RESPONSE = 3, 2, 4
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])


def actor_config(**overrides) -> FSDPActorConfig:
    settings = dict(strategy="fsdp2", ppo_micro_batch_size_per_gpu=2, use_kl_loss=True, kl_loss_coef=0.1)
    settings.update(overrides)
    return FSDPActorConfig(rollout_n=1, **settings)


def micro_batch(weights=None, seed=0) -> tuple[TensorDict, torch.Tensor]:
    """A padded micro-batch as the engine hands it to the loss, and log π_θ over all tokens (with grad)."""
    generator = torch.Generator().manual_seed(seed)
    fields = {
        "prompts": torch.ones(BS, PROMPT, dtype=torch.long),
        "responses": torch.ones(BS, RESPONSE, dtype=torch.long),
        "attention_mask": torch.ones(BS, PROMPT + RESPONSE, dtype=torch.long),
        "response_mask": MASK,
        "old_log_probs": -torch.rand(BS, RESPONSE, generator=generator),
        "advantages": torch.randn(BS, RESPONSE, generator=generator),
        "ref_log_prob": -torch.rand(BS, RESPONSE, generator=generator),
    }
    if weights is not None:
        fields["kl_weight"] = torch.tensor(weights, dtype=torch.float32)
    data = TensorDict(fields, batch_size=BS)
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=None, global_batch_size=None)
    log_probs = (-torch.rand(BS * (PROMPT + RESPONSE), generator=generator)).requires_grad_()
    return data, log_probs


def response_log_probs(log_probs: torch.Tensor) -> torch.Tensor:
    """log π_θ of the response tokens, (bs, response_length): the model output is shifted left by one."""
    per_sequence = log_probs.view(BS, PROMPT + RESPONSE)
    return per_sequence[:, PROMPT - 1 : PROMPT - 1 + RESPONSE]


def loss_and_grad(loss_fn, config, weights, kl_type="low_var_kl"):
    data, log_probs = micro_batch(weights)
    loss, metrics = loss_fn(config, {"log_probs": log_probs}, data)
    loss.backward()
    return loss.detach(), log_probs.grad, metrics, data, log_probs


def test_the_workers_use_the_wrapped_loss():
    assert hasattr(engine_workers.ppo_loss, compat.PATCHED_MARK)
    assert engine_workers.ppo_loss.__wrapped__.__module__ == "verl.workers.utils.losses"


@pytest.mark.parametrize("kl_type", ["low_var_kl", "kl", "mse"])
def test_weighted_kl_term_matches_an_independent_computation(kl_type):
    weights = [0.0, 1.0, 2.5]
    config = actor_config(kl_loss_type=kl_type)
    loss, _, metrics, data, log_probs = loss_and_grad(engine_workers.ppo_loss, config, weights)
    no_kl, _, _, _, _ = loss_and_grad(engine_workers.ppo_loss.__wrapped__, actor_config(use_kl_loss=False), None)

    log_ratio = (response_log_probs(log_probs) - data["ref_log_prob"]).detach()
    estimates = {"kl": log_ratio, "mse": 0.5 * log_ratio**2, "low_var_kl": torch.exp(-log_ratio) - 1 + log_ratio}
    token_kl = estimates[kl_type].clamp(-10, 10) if kl_type == "low_var_kl" else estimates[kl_type]
    weighted = (torch.tensor(weights)[:, None] * token_kl * MASK).sum() / MASK.sum()  # token-mean
    torch.testing.assert_close(loss - no_kl, 0.1 * weighted, rtol=1e-5, atol=1e-7)
    unweighted = (token_kl * MASK).sum() / MASK.sum()
    for key, expected in [("kl_loss", weighted), ("variance_kl/kl_loss_unweighted", unweighted)]:
        logged = torch.as_tensor(metrics[key].aggregate(), dtype=torch.float32)
        torch.testing.assert_close(logged, expected, rtol=1e-5, atol=1e-7)


def test_unit_weights_reproduce_verls_kl_loss_exactly():
    config = actor_config()
    ours, our_grad, _, _, _ = loss_and_grad(engine_workers.ppo_loss, config, [1.0, 1.0, 1.0])
    stock, stock_grad, _, _, _ = loss_and_grad(engine_workers.ppo_loss.__wrapped__, config, None)
    assert torch.equal(ours, stock)
    torch.testing.assert_close(our_grad, stock_grad, rtol=0, atol=1e-9)


def test_zero_weight_samples_get_no_kl_gradient():
    _, grad, _, _, _ = loss_and_grad(engine_workers.ppo_loss, actor_config(), [0.0, 1.0, 1.0])
    _, no_kl_grad, _, _, _ = loss_and_grad(engine_workers.ppo_loss.__wrapped__, actor_config(use_kl_loss=False), None)
    per_sequence, reference = grad.view(BS, -1), no_kl_grad.view(BS, -1)
    assert torch.equal(per_sequence[0], reference[0])  # sample 0: policy gradient only
    assert not torch.allclose(per_sequence[1], reference[1])  # sample 1 is pulled towards the reference


def test_without_weights_or_kl_loss_it_is_verls_loss():
    for config, weights in [(actor_config(), None), (actor_config(use_kl_loss=False), [0.0, 1.0, 2.0])]:
        ours, our_grad, ours_metrics, _, _ = loss_and_grad(engine_workers.ppo_loss, config, weights)
        stock, stock_grad, stock_metrics, _, _ = loss_and_grad(engine_workers.ppo_loss.__wrapped__, config, weights)
        assert torch.equal(ours, stock) and torch.equal(our_grad, stock_grad)
        assert set(ours_metrics) == set(stock_metrics)


def test_the_driver_sends_the_configured_weights_and_logs_telemetry():
    variance = torch.tensor([0.0, 0.25, 4.0], dtype=torch.float64)
    data, _ = micro_batch()
    settings = VarianceKLConfig(weighting="std", normalize=True, max_weight=2.0)
    weights, metrics = attach_kl_weights(
        variance, data["old_log_probs"], data["ref_log_prob"], MASK, settings, "low_var_kl"
    )
    expected = kl_weight(variance, "std", True, 0.0, 2.0).kl_weight
    assert torch.equal(weights, expected) and weights.dtype == torch.float32
    assert metrics["variance_kl/kl_weight/max"] == pytest.approx(2.0)
    assert metrics["variance_kl/clipped_fraction"] == pytest.approx(1 / 3)
    assert metrics["variance_kl/reward_variance/mean"] == pytest.approx(variance.mean().item())


def test_config_switch_and_checks():
    config = OmegaConf.create(
        {
            "algorithm": {"kl_penalty": "variance_aware", "use_kl_in_reward": False, "kl_ctrl": {"kl_coef": 0.0}},
            "actor_rollout_ref": {"actor": {"use_kl_loss": True}},
        }
    )
    assert uses_variance_kl_loss(config)
    check_kl_config(config)  # KL in the loss is a valid home for the variance-aware KL
    config.actor_rollout_ref.actor.use_kl_loss = False
    assert not uses_variance_kl_loss(config)
    with pytest.raises(Exception, match="actor_rollout_ref.actor.use_kl_loss=True"):
        check_kl_config(config)
