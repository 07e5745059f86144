"""R²VPO in verl: the registered policy loss, the lambda that travels with the batch, the dual step, its state."""

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from verl_variance.core.config import R2VPOConfig
from verl_variance.core.losses import r2vpo_loss
from verl_variance.integration import checkpoints, r2vpo
from verl_variance.integration.compat import VerlVarianceError


def controller(**settings) -> r2vpo.R2VPOController:
    """A trainer's λ controller for an ``r2vpo`` group, as its state builds it."""
    return r2vpo.R2VPOController.from_trainer_config({"r2vpo": settings})


def _inputs():
    generator = torch.Generator().manual_seed(0)
    old = -torch.rand(3, 5, generator=generator) * 2
    new = old + 0.2 * torch.randn(3, 5, generator=generator)
    advantages = torch.randn(3, 5, generator=generator)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[2, 3:] = False
    return old, new, advantages, mask


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_registered_loss_is_the_core_formula_with_verls_aggregation(mode):
    from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn

    import verl_variance.integration.plugin  # noqa: F401  (registers on import of core_algos)

    old, new, advantages, mask = _inputs()
    config = SimpleNamespace(global_batch_info={})
    token = r2vpo._lambda.set(0.5)
    try:
        loss, metrics = get_policy_loss_fn("r2vpo")(old, new, advantages, mask, mode, config)
    finally:
        r2vpo._lambda.reset(token)
    expected, _, variance = r2vpo_loss(
        new, old, advantages, mask, 0.5, aggregate=lambda m, k: agg_loss(loss_mat=m, loss_mask=k, loss_agg_mode=mode)
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert metrics["actor/ratio_variance"] == pytest.approx(variance.item(), rel=1e-6)
    assert metrics["actor/r2vpo_lambda"] == 0.5
    assert metrics["actor/ppo_kl"] == pytest.approx(((old - new)[mask]).mean().item(), rel=1e-5)


def test_loss_without_a_lambda_from_the_driver_is_an_error():
    old, new, advantages, mask = _inputs()
    with pytest.raises(VerlVarianceError, match="got no lambda with the batch"):
        r2vpo.r2vpo_policy_loss(old, new, advantages, mask, "token-mean", SimpleNamespace(global_batch_info={}))


def test_wrapped_ppo_loss_hands_the_batch_lambda_to_the_policy_loss():
    from tensordict import TensorDict

    seen = []

    def ppo_loss(config, model_output, data, dp_group=None):
        seen.append(r2vpo._lambda.get())
        return "loss", {}

    wrapped = r2vpo.wrap_ppo_loss(ppo_loss)
    wrapped(None, None, TensorDict({r2vpo.LAMBDA_FIELD: torch.full((4,), 0.25)}, batch_size=4))
    wrapped(None, None, TensorDict({"other": torch.zeros(4)}, batch_size=4))
    assert seen == [0.25, None]


def test_controller_fixed_and_adaptive_lambda(tmp_path):
    fixed = controller(lam=0.3)
    assert fixed.after_update({"actor/ratio_variance": 5.0}) == {} and fixed.lam == 0.3
    assert fixed.lambda_field(3).tolist() == pytest.approx([0.3] * 3)

    adaptive = controller(lam=1.0, target_variance=0.01, dual_lr=10.0)
    metrics = adaptive.after_update({"actor/ratio_variance": [0.02, 0.04]})  # verl's per-micro-batch list
    assert adaptive.lam == pytest.approx(1.0 + 10.0 * (0.03 - 0.01))
    assert metrics == {"r2vpo/lambda_next": adaptive.lam, "r2vpo/constraint_violation": pytest.approx(0.02)}
    adaptive.after_update({"actor/ratio_variance": 0.0})
    assert adaptive.lam == pytest.approx(1.1)  # variance under delta lowers lambda
    with pytest.raises(VerlVarianceError, match="returned no actor/ratio_variance"):
        adaptive.after_update({})

    adaptive.save(str(tmp_path / "global_step_3"))
    restored = controller(lam=1.0, target_variance=0.01)
    restored.load(str(tmp_path / "global_step_3"))
    assert restored.lam == pytest.approx(1.1)


def test_checkpoint_folders_follow_verls_resume_modes(tmp_path):
    config = OmegaConf.create({"trainer": {"default_local_dir": str(tmp_path), "resume_mode": "auto"}})
    assert checkpoints.step_folder(config, 4, resuming=True) == str(tmp_path / "global_step_4")
    config.trainer.resume_mode, config.trainer.resume_from_path = "resume_path", str(tmp_path / "x/global_step_2")
    assert checkpoints.step_folder(config, 2, resuming=True) == str(tmp_path / "x/global_step_2")
    assert checkpoints.step_folder(config, 5, resuming=False) == str(tmp_path / "global_step_5")


@pytest.mark.parametrize(
    ("group", "message"),
    [
        ({"lam": -1}, "r2vpo.lam must be >= 0"),
        ({"target_variance": -0.1}, "r2vpo.target_variance must be >= 0"),
        ({"dual_lr": 0}, "r2vpo.dual_lr must be > 0"),
        ({"lambda": 1}, r"unknown key\(s\) \['lambda'\] in r2vpo; valid keys: \['lam', 'target_variance', 'dual_lr'\]"),
    ],
)
def test_bad_settings(group, message):
    with pytest.raises(ValueError, match=message):
        R2VPOConfig.from_trainer_config({"r2vpo": group})
