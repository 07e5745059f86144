"""The reward-hacking monitor's verl wiring (``integration/hacking_monitor.py``, ``trainers.py``): the per-sample
signals on both trainers' batches, the actions at an alarm, the legacy trainer's logger hook, the early checks. The
end-to-end runs (both trainers, the served reward model, stop and resume): tests/e2e/test_variance_methods_cpu.py."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl import DataProto

from tests.integration.test_batches import BS, FakeQueue, Meta, T
from verl_variance.core import hacking
from verl_variance.core.config import HackingMonitorConfig
from verl_variance.integration import state
from verl_variance.integration.batches import LegacyBatch, V1Batch
from verl_variance.integration.checks import ConfigError, check_hacking_monitor
from verl_variance.integration.compat import VerlVarianceError
from verl_variance.integration.hacking_monitor import STATE_FILE, HackingStop, TrainerMonitor


def _heads_and_scores():
    generator = torch.Generator().manual_seed(1)
    heads = torch.randn(BS, 3, generator=generator, dtype=torch.float64)
    token_scores = torch.zeros(BS, T)
    token_scores[:, -1] = torch.randn(BS, generator=generator)
    return heads, token_scores


def test_both_trainers_batches_give_the_same_signals_as_an_independent_computation():
    heads, token_scores = _heads_and_scores()
    columns = {f"reward_head_{k}": heads[:, k].numpy() for k in range(3)}
    legacy = LegacyBatch(DataProto.from_dict(tensors={"token_level_scores": token_scores}, non_tensors=columns))
    extra_fields = np.empty(BS, dtype=object)
    extra_fields[:] = [{"reward_extra_info": {key: float(values[i]) for key, values in columns.items()}}
                       for i in range(BS)]  # fmt: skip
    v1 = V1Batch(FakeQueue({"extra_fields": extra_fields, "rm_scores": token_scores}), Meta(keys=list("abcd"),
                 partition_id="train"))  # fmt: skip
    monitor = TrainerMonitor(HackingMonitorConfig(enable=True, kappa=2.0))
    expected_variance = np.var(heads.numpy(), axis=1, ddof=1).mean()
    mean, sd = heads.numpy().mean(axis=1), heads.numpy().std(axis=1, ddof=1)
    expected_gap = (token_scores.sum(-1).double().numpy() - (mean - 2.0 * sd)).mean()
    for batch in (legacy, v1):
        signals = monitor.batch_metrics(batch)
        assert signals[hacking.VARIANCE_METRIC] == pytest.approx(expected_variance, rel=1e-6)
        assert signals[hacking.GAP_METRIC] == pytest.approx(expected_gap, rel=1e-6)
    legacy.data.non_tensor_batch.pop("reward_head_1")
    with pytest.raises(VerlVarianceError, match=r"head scores reward_head_0..K-1 .* got \['reward_head_0', "
                       r"'reward_head_2'\]\. Fix: reward.reward_manager.name=ensemble"):  # fmt: skip
        monitor.batch_metrics(legacy)


class FakeTrainer(SimpleNamespace):
    """What the monitor's actions use of verl's trainer: its config, step, and ``_save_checkpoint``."""

    __hash__ = object.__hash__

    def _save_checkpoint(self) -> None:
        folder = self.root / f"global_step_{self.global_steps}"
        folder.mkdir(parents=True)
        self.saved.append(self.global_steps)


def _trainer(tmp_path, action: str) -> FakeTrainer:
    config = OmegaConf.create({"trainer": {"default_local_dir": str(tmp_path)},
                               "hacking_monitor": {"enable": True, "baseline_steps": 1, "disagreement_ratio": 1.5,
                                                   "entropy_drop": None, "action": action}})  # fmt: skip
    trainer = FakeTrainer(config=config, global_steps=0, root=tmp_path, saved=[])
    state.attach(trainer)
    return trainer


def _step(variance: float) -> dict[str, float]:
    return {hacking.VARIANCE_METRIC: variance, hacking.GAP_METRIC: 0.3, hacking.PROXY_METRIC: 1.0}


@pytest.mark.parametrize("action", ["warn", "checkpoint", "stop"])
def test_each_action_at_the_alarm_step(tmp_path, capsys, action):
    """σ² doubles at step 3: warn prints the alarm; checkpoint also saves the step (once, with the monitor's
    history); stop also ends the run after it."""
    trainer = _trainer(tmp_path, action)
    monitor = state.of(trainer).monitor
    stops = []
    for step, variance in enumerate((0.2, 0.25, 0.4), start=1):
        trainer.global_steps = step
        metrics = _step(variance)
        stops.append(monitor.observe(trainer, metrics))
    assert metrics["hacking/disagreement_ratio"] == pytest.approx(2.0) and metrics["hacking/alarms"] == 1.0
    out = capsys.readouterr().out
    assert "verl-variance hacking monitor: step 3: disagreement_ratio 2 reached its threshold 1.5 " \
           "(hacking_monitor.disagreement_ratio)" in out  # fmt: skip
    assert stops == [False, False, action == "stop"]
    assert trainer.saved == ([] if action == "warn" else [3])
    if action != "warn":
        assert f"step 3: checkpoint in {tmp_path / 'global_step_3'}" in out
        history = json.loads((tmp_path / "global_step_3" / STATE_FILE).read_text())
        assert history["fired"] == ["disagreement_ratio"] and history["history"]["variance"] == [0.2, 0.25, 0.4]
    assert ("stopping the run after step 3 (disagreement_ratio; hacking_monitor.action=stop)" in out) == (
        action == "stop")


def test_a_step_verl_saved_is_not_saved_twice_and_keeps_the_history(tmp_path):
    trainer = _trainer(tmp_path, "checkpoint")
    (tmp_path / "global_step_1").mkdir()  # verl's save_freq saved step 1 before it logs
    trainer.global_steps = 1
    state.of(trainer).monitor.observe(trainer, _step(0.2))
    assert trainer.saved == [] and (tmp_path / "global_step_1" / STATE_FILE).exists()


def test_the_legacy_trainers_logger_gets_the_signals_and_stops_fit_after_logging(tmp_path):
    """Legacy: ``Tracking.log`` (its fit's local logger) runs the monitor of the trainer whose fit runs now; the
    step is logged with its signals before the run ends (``HackingStop``, caught by the patched fit)."""
    from verl.utils.tracking import Tracking

    trainer = _trainer(tmp_path, "stop")
    logged = []
    tracker = SimpleNamespace(logger={"file": SimpleNamespace(log=lambda data, step: logged.append((step, data)))})
    Tracking.log(tracker, {"val/score": 0.5}, 0)  # not a training step of a monitored trainer: verl's log alone
    with state.entered(state.of(trainer)):
        for step, variance in enumerate((0.2, 0.2), start=1):
            trainer.global_steps = step
            Tracking.log(tracker, _step(variance), step)
        trainer.global_steps = 3
        with pytest.raises(HackingStop):
            Tracking.log(tracker, _step(0.5), 3)
    assert [step for step, _ in logged] == [0, 1, 2, 3]
    assert logged[0][1] == {"val/score": 0.5}
    assert logged[3][1]["hacking/disagreement_ratio"] == pytest.approx(2.5) and trainer.saved == [3]


@pytest.mark.parametrize(
    ("group", "reward", "message"),
    [
        ({"enable": True, "windo": 3}, {}, r"unknown key\(s\) \['windo'\] in hacking_monitor"),
        ({"enable": True, "entropy_drop": 2.0}, {}, r"hacking_monitor.entropy_drop is a fraction in \(0, 1\]"),
        ({"enable": True, "baseline_variance": 0}, {}, "hacking_monitor.baseline_variance must be > 0 or null"),
        ({"enable": True}, {"reward_manager": {"name": "naive"}}, "reward_manager 'naive' does not give"),
        ({"enable": True}, {"reward_manager": {"name": "ensemble"}, "head_scores": False},
         "ensemble_reward.head_scores=False: set it to True"),
        ({"enable": True, "action": "stop"}, {"trainer": {"default_local_dir": None}},
         "hacking_monitor.action=stop saves a verl checkpoint, but trainer.default_local_dir is not set"),
    ],
)  # fmt: skip
def test_bad_monitor_settings_are_refused_before_ray(group, reward, message):
    config = {"hacking_monitor": group, "trainer": reward.pop("trainer", {"default_local_dir": "checkpoints"}),
              "reward": {"reward_manager": reward.get("reward_manager", {"name": "ensemble"})}}  # fmt: skip
    if "head_scores" in reward:
        config["ensemble_reward"] = {"head_scores": reward["head_scores"]}
    with pytest.raises(ConfigError, match=message):
        check_hacking_monitor(OmegaConf.create(config))
    check_hacking_monitor(OmegaConf.create({**config, "hacking_monitor": {**group, "enable": False}})
                          if "windo" not in group and "entropy_drop" not in group and "baseline_variance" not in group
                          else {"reward": config["reward"]})  # off: no requirement on the reward or the trainer
