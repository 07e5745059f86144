"""Config dataclasses of verl-variance (TRL style: typed fields, defaults, one-line help each).

They live in the verl trainer config as top-level groups (``variance_kl: {...}``), set in the
Hydra presets or with ``+variance_kl.weighting=variance`` on verl's stock config.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, make_dataclass
from typing import Any, get_type_hints

from verl_variance.core.kl import KL_WEIGHTINGS

KL_MODE = "variance_aware"
"""The value of ``algorithm.kl_penalty`` that turns on variance-aware KL."""
VARIANCE_KL_ESTIMATOR = "grpo_variance_kl"
"""The value of ``algorithm.adv_estimator`` of GRPO on the scores plus the variance-weighted KL per token."""

VERL_KL_ESTIMATORS = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")
"""verl 0.9's per-token KL estimators (each also with a "+" straight-through suffix)."""


def valid_kl_estimators() -> tuple[str, ...]:
    return VERL_KL_ESTIMATORS + tuple(f"{name}+" for name in VERL_KL_ESTIMATORS)


def from_mapping(cls, *layers: Mapping[str, Any] | None, where: str):
    """Build dataclass ``cls`` from mappings merged in order (dicts, verl's DictConfig groups, YAML file contents,
    ``OmegaConf.from_dotlist`` overrides), through OmegaConf's structured configs: the one config mechanism of
    verl-variance. Values are checked and converted to the fields' types (YAML's ``"1e-5"`` -> 1e-5), nested
    dataclass fields are built too, and the dataclasses' own checks run last.

    Raises:
        ValueError: naming ``where`` and the key; an unknown key with the valid ones.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    try:  # a group of verl's config is resolved in that config (``${trainer.x}`` points outside the group)
        resolved = [OmegaConf.to_container(layer, resolve=True) if OmegaConf.is_config(layer) else layer or {}
                    for layer in layers]  # fmt: skip
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), *resolved))
    except ConfigKeyError as error:
        group = error.full_key.rpartition(".")[0]
        valid = [f.name for f in fields(error.object_type)] if is_dataclass(error.object_type) else []
        raise ValueError(
            f"unknown key(s) {[error.key]} in {where}{f' ({group})' if group else ''}; valid keys: {valid}"
        ) from None
    except OmegaConfBaseException as error:
        if "is not a ListConfig" in error.msg:
            raise ValueError(f"{where}: {error.full_key} must be a list, e.g. {error.full_key}=[a,b]") from None
        raise ValueError(f"{where}: {error.full_key}: {error.msg.splitlines()[0]}") from None


def spelled(value: Any) -> str:
    """A default as an override or YAML reads it: ``null``, ``true``/``false``, else ``str``."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def config_table(cls, prefix: str = "") -> str:
    """A Markdown table (key, default, meaning) of dataclass ``cls``'s keys (``config_keys``), as the docs show
    them (defaults ``spelled``). ``tests/test_docs.py`` keeps the docs' copies in sync."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{key}` | `{spelled(default)}` | {text} |" for key, default, text in config_keys(cls, prefix)]
    return "\n".join(rows)


_TABLE = re.compile(r"(<!-- config-table (\S+) (\S*) -->\n)(.*?)(<!-- /config-table -->)", re.DOTALL)


def fill_config_tables(markdown: str) -> str:
    """``markdown`` with each block ``<!-- config-table <module>.<Class> <prefix> -->`` ... ``<!-- /config-table -->``
    holding ``config_table`` of that dataclass (``python -m verl_variance.core.config docs/*.md`` rewrites them)."""

    def table(match: re.Match) -> str:
        module, _, name = match.group(2).rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        return f"{match.group(1)}{config_table(cls, match.group(3))}\n{match.group(5)}"

    return _TABLE.sub(table, markdown)


def config_keys(cls, prefix: str = "") -> list[tuple[str, Any, str]]:
    """``(dotted key, default, help)`` of every field of dataclass ``cls``, nested dataclass fields expanded: the
    fields' ``help`` metadata, as the command line shows it (``verl-variance train-rm --keys``)."""
    rows = []
    for item in fields(cls):
        default = item.default if item.default_factory is MISSING else item.default_factory()
        if is_dataclass(default):
            rows += config_keys(type(default), f"{prefix}{item.name}.")
        else:
            rows.append((f"{prefix}{item.name}", default, item.metadata.get("help", "")))
    return rows


def flag_fields(cls, exclude: tuple[str, ...] = (), shortcuts: Mapping[str, tuple[str, ...]] | None = None) -> type:
    """A dataclass of the flags that set ``cls``'s fields, for a command line built by a parser of dataclasses
    (transformers' ``HfArgumentParser``): one per scalar field (nested dataclasses and ``exclude`` left out), and one
    per ``shortcuts`` entry (flag name -> the dotted keys of nested fields it sets, typed as the first). Each is
    ``T | None`` with default None (a flag not given changes nothing), its help the field's metadata help and default
    (a shortcut's names its keys first)."""
    rows = {key: (default, text) for key, default, text in config_keys(cls)}
    specs = []
    for item in fields(cls):
        if item.name not in exclude and item.name in rows:
            specs.append(_flag(item.name, _hint(cls, item.name), item.metadata, *rows[item.name]))
    for name, keys in (shortcuts or {}).items():
        default, text = rows[keys[0]]
        specs.append(_flag(name, _hint(cls, keys[0]), {}, default, f"{' and '.join(keys)}: {text}"))
    return make_dataclass(f"{cls.__name__}Flags", specs)


def _hint(cls, key: str) -> Any:
    """The type of the field at dotted ``key`` of dataclass ``cls``."""
    head, _, rest = key.partition(".")
    if rest:
        return _hint(get_type_hints(cls)[head], rest)
    return get_type_hints(cls)[head]


def _flag(name: str, hint: Any, metadata: Mapping[str, Any], default: Any, text: str) -> tuple:
    help_text = f"{text} (default {spelled(default)})".strip()
    kind = bool if hint is bool else hint | None  # a bool: ``--flag`` alone is true (HfArgumentParser's nargs="?")
    return name, kind, field(default=None, metadata={**metadata, "help": help_text})


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
    telemetry: bool = field(
        default=True, metadata={"help": "Log the variance_kl/* statistics every step (host numpy, ~0.1-0.4 ms)."}
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
        return from_mapping(cls, config.get("variance_kl"), where="variance_kl")


@dataclass
class EnsembleRewardConfig:
    """The ensemble reward manager (``reward.reward_manager.name=ensemble``): K heads -> reward and σ².

    Banerjee & Gopalan, Section 4: one forward pass of a K-head reward model gives K rewards; the
    training reward is their aggregate (Section 5 trains policy i on head i: ``aggregator=member``)
    and their sample variance σ² goes to the variance-aware KL.
    """

    model_path: str | None = field(
        default=None,
        metadata={"help": "Ensemble RM folder (num_labels=K >= 2); null: reward.reward_model.model_path."},
    )
    aggregator: str = field(default="mean", metadata={"help": "mean, member, min, uwo, lcb or softmin."})
    aggregator_params: dict = field(
        default_factory=dict,
        metadata={"help": "The aggregator's parameters: member {index}, uwo {lam}, lcb {k}, softmin {tau}."},
    )
    batch_size: int = field(
        default=32, metadata={"help": "Rows of every forward pass (fixed: unused rows are padding)."}
    )
    max_length: int = field(
        default=1024,
        metadata={"help": "Tokens per scored sequence: a longer one is scored on its last max_length tokens."},
    )
    batch_wait_ms: float = field(default=5.0, metadata={"help": "How long to gather concurrent requests."})
    variance_key: str = field(
        default="reward_variance", metadata={"help": "Reward extra-info key for sigma^2 (variance_kl reads it)."}
    )
    prompt_format: str = field(
        default="chat",
        metadata={"help": "chat: RM chat template over prompt + response; text: prompt text + response as one text."},
    )
    head_scores: bool = field(default=True, metadata={"help": "Also emit reward_head_<k> for every head."})
    num_threads: int = field(default=1, metadata={"help": "torch threads of in-process CPU scoring."})

    def __post_init__(self) -> None:
        import inspect

        from verl_variance.core.aggregators import AGGREGATORS

        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"ensemble_reward.aggregator={self.aggregator!r} is unknown; valid: {sorted(AGGREGATORS)}")
        try:  # unknown parameter names fail here, not at the first reward
            inspect.signature(AGGREGATORS[self.aggregator].fn).bind(None, **dict(self.aggregator_params))
        except TypeError as exc:
            raise ValueError(
                f"ensemble_reward.aggregator_params={dict(self.aggregator_params)} do not fit aggregator "
                f"{self.aggregator!r}: {exc}"
            ) from exc
        if self.prompt_format not in ("chat", "text"):
            raise ValueError(f"ensemble_reward.prompt_format={self.prompt_format!r}; valid: ['chat', 'text']")
        for name in ("batch_size", "max_length", "num_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"ensemble_reward.{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"ensemble_reward.batch_wait_ms must be >= 0, got {self.batch_wait_ms}")

    @classmethod
    def from_trainer_config(cls, config: Mapping[str, Any]) -> EnsembleRewardConfig:
        """Read the ``ensemble_reward`` group of a verl trainer config (defaults when absent)."""
        return from_mapping(cls, config.get("ensemble_reward"), where="ensemble_reward")


RVPO_ESTIMATOR = "rvpo"
"""The value of ``algorithm.adv_estimator`` that selects RVPO."""

ENSEMBLE_HEAD_PREFIX = "reward_head_"
"""Reward extra-info keys of the ensemble manager's per-head scores: ``reward_head_0`` ... ``reward_head_{K-1}``."""


@dataclass
class RVPOConfig:
    """RVPO, reward-variance soft-min across objectives (seed 000, SPEC §2): ``algorithm.adv_estimator=rvpo``.

    Per-objective GRPO advantages A_k (GDPO's first step), aggregated as
    A = −τ · log Σ_k w_k exp(−A_k/τ), then whitened as GDPO does.
    """

    reward_keys: list[str] | None = field(
        default=None,
        metadata={"help": "Reward extra-info keys of the objectives; null: algorithm.gdpo_reward_keys."},
    )
    weights: list[float] | None = field(
        default=None, metadata={"help": "w_k, one per objective, >= 0 and summing to 1; null: uniform 1/K."}
    )
    tau: float = field(default=1.0, metadata={"help": "Soft-min temperature (> 0): small -> min, large -> mean."})
    ensemble_heads: bool = field(
        default=False,
        metadata={"help": "Objectives = the ensemble manager's per-head scores reward_head_<k> (reward_keys null)."},
    )

    def __post_init__(self) -> None:
        from verl_variance.core.aggregators import check_objective_weights

        if not self.tau > 0:
            raise ValueError(f"rvpo.tau must be > 0, got {self.tau}")
        if self.reward_keys is not None:
            self.reward_keys = [str(key) for key in self.reward_keys]
            if self.ensemble_heads:
                raise ValueError("rvpo.ensemble_heads=True takes the objectives from the ensemble's heads: "
                                 "leave rvpo.reward_keys unset (null)")  # fmt: skip
            if not self.reward_keys or len(set(self.reward_keys)) != len(self.reward_keys):
                raise ValueError(f"rvpo.reward_keys={self.reward_keys} must name distinct reward extra-info keys")
        if self.weights is not None:
            self.weights = [float(w) for w in self.weights]
            if self.reward_keys is not None:
                try:
                    check_objective_weights(self.weights, len(self.reward_keys))
                except ValueError as exc:
                    raise ValueError(f"rvpo.weights: {exc}") from exc

    def keys(self, gdpo_reward_keys: list[str] | None) -> list[str] | None:
        """The objectives' reward keys: ``reward_keys``, else GDPO's; None with ``ensemble_heads``."""
        if self.ensemble_heads:
            return None
        keys = self.reward_keys if self.reward_keys is not None else gdpo_reward_keys
        if not keys:
            raise ValueError(
                "algorithm.adv_estimator=rvpo needs the objectives: set rvpo.reward_keys=[a,b] (the keys your reward "
                "function returns), or algorithm.gdpo_reward_keys, or rvpo.ensemble_heads=True with the ensemble "
                "reward manager"
            )
        return [str(key) for key in keys]

    @classmethod
    def from_trainer_config(cls, config: Mapping[str, Any]) -> RVPOConfig:
        """Read the ``rvpo`` group of a verl trainer config (defaults when absent)."""
        return from_mapping(cls, config.get("rvpo"), where="rvpo")


R2VPO_LOSS = "r2vpo"
"""The value of ``actor_rollout_ref.actor.policy_loss.loss_mode`` that selects R²VPO."""


@dataclass
class R2VPOConfig:
    """R²VPO, ratio-variance regularisation instead of clipping (seed 001, SPEC §3): ``policy_loss.loss_mode=r2vpo``.

    L = −agg(ρ_t · A_t) + λ · Var(ρ). λ fixed (``target_variance: null``), or a dual variable of the
    constraint Var(ρ) ≤ δ updated once per training step: λ ← max(0, λ + η · (Var(ρ) − δ)).
    """

    lam: float = field(
        default=1.0, metadata={"help": "lambda, the weight of Var(rho) (the initial one when adaptive)."}
    )
    target_variance: float | None = field(
        default=None, metadata={"help": "delta of the constraint Var(rho) <= delta; null: lambda stays fixed."}
    )
    dual_lr: float = field(default=10.0, metadata={"help": "eta, the dual step size of the adaptive lambda."})

    def __post_init__(self) -> None:
        if not self.lam >= 0:
            raise ValueError(f"r2vpo.lam must be >= 0, got {self.lam}")
        if self.target_variance is not None and not self.target_variance >= 0:
            raise ValueError(
                f"r2vpo.target_variance must be >= 0 (or null for a fixed lambda), got {self.target_variance}"
            )
        if not self.dual_lr > 0:
            raise ValueError(f"r2vpo.dual_lr must be > 0, got {self.dual_lr}")

    @property
    def adaptive(self) -> bool:
        return self.target_variance is not None

    @classmethod
    def from_trainer_config(cls, config: Mapping[str, Any]) -> R2VPOConfig:
        """Read the ``r2vpo`` group of a verl trainer config (defaults when absent)."""
        return from_mapping(cls, config.get("r2vpo"), where="r2vpo")


HACKING_ACTIONS = ("warn", "checkpoint", "stop")
"""What the reward-hacking monitor does at an alarm: a console line; also a verl checkpoint; also end the run."""


@dataclass
class HackingMonitorConfig:
    """The reward-hacking monitor (``hacking_monitor`` group, ``core/hacking.py``): signals from the ensemble's
    disagreement, the KL and the entropy each step, an alarm when one crosses its threshold (null: never)."""

    enable: bool = field(default=False, metadata={"help": "Compute the hacking/* signals and watch them."})
    window: int = field(default=4, metadata={"help": "Steps in each trend (slopes, KL acceleration), >= 2."})
    baseline_steps: int = field(
        default=2, metadata={"help": "First steps whose mean is the baseline of the disagreement and the entropy."}
    )
    baseline_variance: float | None = field(
        default=None,
        metadata={"help": "sigma^2 baseline, e.g. the heads' mean on the reward model's held-out pairs; null: the "
                  "first steps'."},
    )  # fmt: skip
    disagreement_ratio: float | None = field(
        default=1.5, metadata={"help": "Alarm when the batch's mean sigma^2 reaches this multiple of the baseline's."}
    )
    lower_bound_gap: float | None = field(
        default=None, metadata={"help": "Alarm when the trained reward stands this far above the heads' LCB."}
    )
    kappa: float = field(default=1.0, metadata={"help": "The LCB's width in the heads' standard deviations."})
    kl_acceleration: float | None = field(
        default=None, metadata={"help": "Alarm when the KL's second derivative (per step^2) reaches this."}
    )
    entropy_drop: float | None = field(
        default=0.5, metadata={"help": "Alarm when the policy has lost this fraction of its baseline entropy."}
    )
    rising_together: float | None = field(
        default=None, metadata={"help": "Alarm when the proxy reward's and the disagreement's slopes both reach this."}
    )
    action: str = field(
        default="warn", metadata={"help": "At an alarm: warn, checkpoint (and warn), stop (after a checkpoint)."}
    )

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError(f"hacking_monitor.window must be >= 2 steps, got {self.window}")
        if self.baseline_steps < 1:
            raise ValueError(f"hacking_monitor.baseline_steps must be >= 1, got {self.baseline_steps}")
        for name in ("disagreement_ratio", "lower_bound_gap", "kl_acceleration", "entropy_drop", "rising_together"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"hacking_monitor.{name} must be a finite number or null, got {value}")
        if self.baseline_variance is not None and not (math.isfinite(self.baseline_variance)
                                                       and self.baseline_variance > 0):
            raise ValueError(f"hacking_monitor.baseline_variance must be > 0 or null, got {self.baseline_variance}")
        if self.disagreement_ratio is not None and not self.disagreement_ratio > 0:
            raise ValueError(f"hacking_monitor.disagreement_ratio must be > 0, got {self.disagreement_ratio}")
        if self.entropy_drop is not None and not 0 < self.entropy_drop <= 1:
            raise ValueError(f"hacking_monitor.entropy_drop is a fraction in (0, 1], got {self.entropy_drop}")
        if not self.kappa >= 0:
            raise ValueError(f"hacking_monitor.kappa must be >= 0, got {self.kappa}")
        if self.action not in HACKING_ACTIONS:
            raise ValueError(f"hacking_monitor.action={self.action!r} is unknown; valid: {list(HACKING_ACTIONS)}")

    @classmethod
    def from_trainer_config(cls, config: Mapping[str, Any]) -> HackingMonitorConfig:
        """Read the ``hacking_monitor`` group of a verl trainer config (defaults when absent)."""
        return from_mapping(cls, config.get("hacking_monitor"), where="hacking_monitor")


if __name__ == "__main__":  # python -m verl_variance.core.config docs/*.md: refresh the docs' config tables
    for path in sys.argv[1:]:
        with open(path) as file:
            text = file.read()
        with open(path, "w") as file:
            file.write(fill_config_tables(text))
