"""The methods' state in a verl run: one ``MethodsState`` per trainer, on the trainer (``trainer.verl_variance``).

It holds each method's settings (the config groups, parsed once when the trainer is built) and controllers
(R²VPO's λ, the hacking monitor), and, while the trainer computes a step's advantages, that step's reward extra
info and metrics.
Per-sample data travels as batch fields: the V1 trainer keeps the reward's extra info in its queue, so its
``_compute_advantage`` hands it here and the first of our hooks that sees the step's ``DataProto`` adds it as
columns of ``non_tensor_batch`` (``fill_batch``), where the legacy trainer already has it.

verl calls ``apply_kl_penalty`` and ``compute_advantage`` (module functions) without the trainer: they read the
state of the trainer whose step runs now (``current``), which each trainer's step sets (``entered``).
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from verl_variance.core.config import KL_MODE, RVPO_ESTIMATOR, VARIANCE_KL_ESTIMATOR, RVPOConfig, VarianceKLConfig
from verl_variance.integration.extra_info import reward_extra_columns
from verl_variance.integration.hacking_monitor import TrainerMonitor, uses_monitor
from verl_variance.integration.r2vpo import R2VPOController, uses_r2vpo

ATTRIBUTE = "verl_variance"
"""The trainer attribute that holds its ``MethodsState``."""


@dataclass
class MethodsState:
    """One trainer's settings and controllers of the methods (``None``: the method is not selected)."""

    variance_kl: VarianceKLConfig | None = None
    """``algorithm.kl_penalty=variance_aware``: the ``variance_kl`` group."""
    kl_penalty_in_advantage: bool = False
    """``adv_estimator=grpo_variance_kl``: ``apply_kl_penalty`` keeps the weighted KL as a batch field for it."""
    rvpo: RVPOConfig | None = None
    r2vpo: R2VPOController | None = None
    monitor: TrainerMonitor | None = None
    """``hacking_monitor.enable=true``: the reward-hacking monitor."""
    trainer: Any = field(default=None, repr=False)
    """The trainer (a weak reference), for what acts on it from outside its methods (the monitor's actions)."""
    step_extras: dict[str, list[Any]] | None = field(default=None, repr=False)
    """V1, during a step's advantages: the reward extra info, one column per key."""
    step_metrics: dict[str, Any] | None = field(default=None, repr=False)
    """V1, during a step's advantages: the step's metrics dict (verl logs it)."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MethodsState:
        """The state a trainer of ``config`` (verl's full trainer config) starts with."""
        algorithm = config.get("algorithm", {})
        estimator = algorithm.get("adv_estimator")
        return cls(
            variance_kl=(VarianceKLConfig.from_trainer_config(config) if algorithm.get("kl_penalty") == KL_MODE
                         else None),  # fmt: skip
            kl_penalty_in_advantage=estimator == VARIANCE_KL_ESTIMATOR,
            rvpo=RVPOConfig.from_trainer_config(config) if estimator == RVPO_ESTIMATOR else None,
            r2vpo=R2VPOController.from_trainer_config(config) if uses_r2vpo(config) else None,
            monitor=TrainerMonitor.from_trainer_config(config) if uses_monitor(config) else None,
        )

    @property
    def variance_kl_settings(self) -> VarianceKLConfig:
        return self.variance_kl or VarianceKLConfig()

    @property
    def rvpo_settings(self) -> RVPOConfig:
        return self.rvpo or RVPOConfig()

    @contextlib.contextmanager
    def advantage_step(
        self, extra_infos: Sequence[Mapping[str, Any]] | None, metrics: dict[str, Any]
    ) -> Iterator[None]:
        """V1: this step's per-sample reward extra info (``reward_extra_info`` dicts) and metrics dict while its
        advantages are computed."""
        self.step_extras = None if extra_infos is None else reward_extra_columns(extra_infos)
        self.step_metrics = metrics
        try:
            yield
        finally:
            self.step_extras = self.step_metrics = None

    def fill_batch(self, data) -> None:
        """Add the step's reward extra info (V1) to ``data.non_tensor_batch`` as the legacy trainer has it: one column
        per key every sample has (keys already there are kept)."""
        if self.step_extras is None:
            return
        for key, column in self.step_extras.items():
            if key in data.non_tensor_batch:
                continue
            if len(column) != len(data):
                raise ValueError(f"{len(column)} reward extra infos for a batch of {len(data)} samples")
            values = np.empty(len(column), dtype=object)  # one object per sample, whatever the reward returned
            for index, value in enumerate(column):
                values[index] = value
            data.non_tensor_batch[key] = values


def attach(trainer) -> MethodsState:
    """Called when a trainer is built: its state, from its config."""
    state = MethodsState.from_config(trainer.config)
    state.trainer = weakref.ref(trainer)
    setattr(trainer, ATTRIBUTE, state)
    return state


def of(trainer) -> MethodsState:
    """A trainer's state (a default one for a trainer built without the plugin's hooks)."""
    return getattr(trainer, ATTRIBUTE, None) or MethodsState()


_current: contextvars.ContextVar[MethodsState | None] = contextvars.ContextVar("verl_variance_state", default=None)


@contextlib.contextmanager
def entered(state: MethodsState) -> Iterator[MethodsState]:
    """Make ``state`` the one ``current`` returns while a trainer's step (or a test) runs."""
    token = _current.set(state)
    try:
        yield state
    finally:
        _current.reset(token)


def current() -> MethodsState:
    """The state of the trainer whose step runs now; defaults outside a trainer."""
    return _current.get() or MethodsState()
