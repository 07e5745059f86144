"""Config dataclasses of verl-variance (TRL style: typed fields, defaults, one-line help each).

They live in the verl trainer config as top-level groups (``variance_kl: {...}``), set in the
Hydra presets or with ``+variance_kl.weighting=variance`` on verl's stock config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from verl_variance.core.kl import KL_WEIGHTINGS

KL_MODE = "variance_aware"
"""The value of ``algorithm.kl_penalty`` that turns on variance-aware KL."""

VERL_KL_ESTIMATORS = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")
"""verl 0.9's per-token KL estimators (each also with a "+" straight-through suffix, except mse/k2)."""


def valid_kl_estimators() -> tuple[str, ...]:
    return VERL_KL_ESTIMATORS + tuple(f"{name}+" for name in VERL_KL_ESTIMATORS if name not in ("mse", "k2"))


def from_mapping(cls, mapping: Mapping[str, Any] | None, where: str):
    """Build dataclass ``cls`` from a mapping, failing on unknown keys with the list of valid ones."""
    mapping = dict(mapping or {})
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(mapping) - set(valid))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; valid keys: {valid}")
    return cls(**mapping)


@dataclass
class VarianceKLConfig:
    """Variance-aware KL in the reward (Banerjee & Gopalan, Theorem 3.6 and Section 5, Tables 6-7).

    Active when ``algorithm.kl_penalty=variance_aware`` and ``algorithm.use_kl_in_reward=True``; β is
    verl's ``algorithm.kl_ctrl.kl_coef`` (paper, Table 7: 0.05, no adaptive KL).
    """

    kl_estimator: str = field(
        default="kl", metadata={"help": "verl KL estimator per token: kl/k1 (paper), abs, mse/k2, low_var_kl/k3."}
    )
    weighting: str = field(
        default="std",
        metadata={"help": "w from sigma^2: 'std' (w = sigma, Section 5) or 'variance' (w = sigma^2, Thm 3.6)."},
    )
    normalize: bool = field(
        default=False, metadata={"help": "Divide w by its batch mean, so beta keeps its usual scale."}
    )
    min_weight: float = field(default=0.0, metadata={"help": "Clip w from below (after normalisation)."})
    max_weight: float | None = field(
        default=None, metadata={"help": "Clip w from above (after normalisation); null: no clip."}
    )
    variance_key: str = field(
        default="reward_variance", metadata={"help": "Reward extra-info key holding sigma^2 per sample."}
    )
    sample_log: str | None = field(
        default=None, metadata={"help": "JSONL file to append per-sample sigma^2, w and KL penalty each step."}
    )

    def __post_init__(self) -> None:
        if self.kl_estimator not in valid_kl_estimators():
            raise ValueError(
                f"variance_kl.kl_estimator={self.kl_estimator!r} is not a verl KL estimator; "
                f"valid: {valid_kl_estimators()}"
            )
        if self.weighting not in KL_WEIGHTINGS:
            raise ValueError(f"variance_kl.weighting={self.weighting!r} is unknown; valid: {sorted(KL_WEIGHTINGS)}")
        if self.min_weight < 0:
            raise ValueError(f"variance_kl.min_weight must be >= 0, got {self.min_weight}")
        if self.max_weight is not None and self.max_weight < self.min_weight:
            raise ValueError(f"variance_kl.max_weight={self.max_weight} is below min_weight={self.min_weight}")
        if not self.variance_key:
            raise ValueError("variance_kl.variance_key must name the reward extra-info key, e.g. reward_variance")

    @classmethod
    def from_trainer_config(cls, config: Mapping[str, Any]) -> VarianceKLConfig:
        """Read the ``variance_kl`` group of a verl trainer config (defaults when absent)."""
        return from_mapping(cls, config.get("variance_kl"), "variance_kl")
