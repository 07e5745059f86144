"""The reward-hacking monitor in verl's trainers (``hacking_monitor.enable=true``; the signals: ``core/hacking.py``).

Each training step, on either trainer:

1. at the actor update (the step's samples at hand: ``batches``), the heads' mean σ² and the gap of the trained
   reward above their lower confidence bound become the step's ``hacking/reward_variance`` and
   ``hacking/lower_bound_gap`` (``TrainerMonitor.batch_metrics``);
2. when the step's metrics are complete, just before verl logs them (V1: ``_compute_metrics``; legacy: its
   ``Tracking.log``), the monitor reads those two with verl's proxy score, KL and entropy, adds the ``hacking/*``
   signals to what verl logs, and at an alarm acts (``TrainerMonitor.observe``): ``warn`` prints one line naming the
   signal and the step; ``checkpoint`` also saves a verl checkpoint of the step; ``stop`` saves one and ends the run
   after the step, cleanly (exit code 0).

Its history is kept in the step's checkpoint folder (``hacking_monitor_state.json``), so a resumed run alarms as
the uninterrupted one would.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

from verl_variance.core.config import HackingMonitorConfig
from verl_variance.core.hacking import HackingMonitor, batch_signals
from verl_variance.integration.checkpoints import step_folder
from verl_variance.integration.compat import VerlVarianceError
from verl_variance.integration.ensemble_reward import complete_heads, head_keys, head_score_matrix

STATE_FILE = "hacking_monitor_state.json"
TIMING_METRIC = "timing_s/hacking_monitor"
"""The monitor's own seconds in the step (its signals; a checkpoint it saves aside), beside verl's timing_s/*."""
PREFIX = "verl-variance hacking monitor"


class HackingStop(Exception):  # noqa: N818 - not an error: the run's end, asked for by hacking_monitor.action=stop
    """Raised after the step a ``stop`` alarm ended (the legacy trainer's way out of ``fit``)."""


def uses_monitor(config: Mapping[str, Any]) -> bool:
    return bool((config.get("hacking_monitor") or {}).get("enable", False))


class TrainerMonitor:
    """One trainer's monitor: the signals' history, the alarms fired, the action."""

    def __init__(self, settings: HackingMonitorConfig) -> None:
        self.settings = settings
        self.monitor = HackingMonitor(settings, settings.baseline_variance)
        self.seconds = 0.0  # the monitor's own time this step (``TIMING_METRIC``)

    @classmethod
    def from_trainer_config(cls, config: Mapping[str, Any]) -> TrainerMonitor:
        return cls(HackingMonitorConfig.from_trainer_config(config))

    def batch_metrics(self, batch) -> dict[str, float]:
        """The step's per-sample part (``batch``: a ``batches.LegacyBatch`` or ``V1Batch``)."""
        start = time.perf_counter()
        columns = batch.reward_columns()
        keys = head_keys(list(columns))
        if not complete_heads(keys):
            raise VerlVarianceError(
                f"hacking_monitor.enable=true needs each sample's K >= 2 head scores reward_head_0..K-1 in the reward "
                f"extra info, got {keys or 'none'}. Fix: reward.reward_manager.name=ensemble with "
                "ensemble_reward.head_scores=True (or a reward function that returns them), or "
                "hacking_monitor.enable=false"
            )
        signals = batch_signals(head_score_matrix(columns, keys), batch.sequence_scores().double(), self.settings.kappa)
        self.seconds = time.perf_counter() - start
        return signals

    def observe(self, trainer, metrics: dict[str, Any]) -> bool:
        """The step's signals into ``metrics``, its alarms acted on; True when the run is to stop after this step."""
        start = time.perf_counter()
        signals, alarms = self.monitor.observe(trainer.global_steps, metrics)
        metrics.update(signals)
        metrics[TIMING_METRIC] = self.seconds + time.perf_counter() - start  # its actions (a checkpoint) aside
        for alarm in alarms:
            print(alarm.line(), flush=True)
        folder = step_folder(trainer.config, trainer.global_steps, resuming=False)
        acting = bool(alarms) and self.settings.action in ("checkpoint", "stop")
        if acting and not os.path.isdir(folder):  # verl saves before it logs: a step it saved is not saved twice
            trainer._save_checkpoint()
        if acting:
            print(f"{PREFIX}: step {trainer.global_steps}: checkpoint in {folder}", flush=True)
        if os.path.isdir(folder):  # this step's checkpoint keeps the history up to this step
            self.save(folder)
        stop = bool(alarms) and self.settings.action == "stop"
        if stop:
            signals = ", ".join(alarm.signal for alarm in alarms)
            print(f"{PREFIX}: stopping the run after step {trainer.global_steps} ({signals}; "
                  f"hacking_monitor.action=stop); resume from {folder}", flush=True)  # fmt: skip
        return stop

    def save(self, folder: str) -> None:
        with open(os.path.join(folder, STATE_FILE), "w") as sink:
            json.dump(self.monitor.state_dict(), sink)

    def load(self, folder: str) -> None:
        path = os.path.join(folder, STATE_FILE)
        if os.path.exists(path):
            with open(path) as source:
                self.monitor.load_state_dict(json.load(source))
