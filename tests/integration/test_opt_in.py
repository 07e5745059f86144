"""Non-negotiable 7: installed but not opted in, verl's outputs are bit-identical to verl without the plugin."""

import textwrap

import torch

from tests.conftest import run_python

COMPUTE = textwrap.dedent(
    """
    import sys, torch, numpy as np
    import verl
    from verl import DataProto
    from verl.trainer.ppo import core_algos
    from verl.trainer.ppo.ray_trainer import apply_kl_penalty, compute_advantage
    from verl.trainer.config import AlgoConfig
    import verl.trainer.ppo.v1.trainer_base  # patch target of the V1 trainer
    assert ("verl_variance.integration.plugin" in sys.modules) == (sys.argv[1] == "plugin")

    g = torch.Generator().manual_seed(0)
    bs, T = 6, 7
    old = -torch.rand(bs, T, generator=g) * 3
    ref = -torch.rand(bs, T, generator=g) * 3
    mask = (torch.rand(bs, T, generator=g) > 0.2).float(); mask[:, 0] = 1
    scores = torch.zeros(bs, T); scores[:, -1] = torch.randn(bs, generator=g)
    values = torch.randn(bs, T, generator=g)
    out = {}
    for mode in ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3", "full"):
        if mode != "full":
            out[f"kl_{mode}"] = core_algos.kl_penalty(old, ref, mode)

    def batch():
        return DataProto.from_dict(
            tensors={"old_log_probs": old, "ref_log_prob": ref, "response_mask": mask,
                     "token_level_scores": scores.clone(), "token_level_rewards": scores.clone(), "values": values,
                     "responses": torch.zeros(bs, T, dtype=torch.long), "attention_mask": torch.ones(bs, 2 * T)},
            non_tensors={"uid": np.array(["a", "a", "b", "b", "c", "c"], dtype=object)},
        )

    for mode in ("kl", "low_var_kl"):
        ctrl = core_algos.FixedKLController(kl_coef=0.1)
        data, metrics = apply_kl_penalty(batch(), ctrl, kl_penalty=mode)
        out[f"apply_kl_{mode}"] = data.batch["token_level_rewards"]
        out[f"apply_kl_{mode}_metric"] = torch.tensor(metrics["actor/reward_kl_penalty"])
    for estimator in ("gae", "grpo", "rloo", "reinforce_plus_plus"):
        config = AlgoConfig(adv_estimator=estimator)
        data = compute_advantage(batch(), adv_estimator=estimator, gamma=0.99, lam=0.95, config=config)
        out[f"adv_{estimator}"] = data.batch["advantages"]
        out[f"ret_{estimator}"] = data.batch["returns"]
    torch.save(out, sys.argv[2])
    """
)


def test_verl_outputs_are_bit_identical_with_the_plugin_installed(tmp_path):
    script = tmp_path / "compute.py"
    script.write_text(COMPUTE)
    results = {}
    for label, env in (("plugin", {}), ("stock", {"VERL_USE_EXTERNAL_PLUGINS": "none"})):
        path = tmp_path / f"{label}.pt"
        proc = run_python(f"import runpy, sys; sys.argv = ['x', '{label}', '{path}']; runpy.run_path('{script}')", env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[label] = torch.load(path)
    assert results["plugin"].keys() == results["stock"].keys()
    assert len(results["plugin"]) == 19  # 7 KL estimators, 2 x apply_kl_penalty (+metric), 4 x (adv, ret)
    for key, stock in results["stock"].items():
        assert torch.equal(results["plugin"][key], stock), key
        assert torch.isfinite(stock).all(), key
