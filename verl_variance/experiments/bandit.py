"""The linearized bandit of Banerjee & Gopalan, Section 3 (Theorem 3.3, Figures 3-5), in numpy.

A policy is a vector π in R^n (one entry per prompt-response pair, not constrained to the simplex).
The true reward r* is fixed; the learned reward is R̂ ~ N(r*, Σ) with Σ = diag(σ²). Two policies
take one step of size ε away from the reference π0:

    variance-unaware (Def. 3.1):  π1 = π0 + sqrt(ε / R̂ᵀR̂) · R̂                    ‖π1 − π0‖²        = ε
    variance-aware   (Def. 3.2):  π2 = π0 + sqrt(ε̃ / R̂ᵀΣ⁻¹R̂) · Σ⁻¹R̂,  ε̃ = λ_min(Σ)·ε   (π2 − π0)ᵀΣ(π2 − π0) = ε̃

Theorem 3.3 (closed forms, Φ the standard normal CDF):

    P(π1ᵀr* ≤ π0ᵀr*) = Φ(−‖r*‖² / sqrt(r*ᵀΣr*))  ≥  P(π2ᵀr* ≤ π0ᵀr*) = Φ(−sqrt(r*ᵀΣ⁻¹r*))

The simulation (Figures 3-5) fixes r* (n = 1000) and Σ, draws R̂ many times and histograms the
returns πᵢᵀr*. Two settings: σ² ~ Uniform(3, 100) ("high" variability, Figure 3) and
σ² ~ Uniform(70, 100) ("low", Figure 4).

Default choice (the paper does not publish r*, π0 or ε): r*_i ~ N(0, 0.3²) i.i.d., π0 uniform
(1/n each, so π0ᵀr* ≈ 0.0095), ε = 0.2, seed 0; the same r* in both settings (r*, σ² and the
noise come from separate child streams of one ``numpy.random.SeedSequence``, so σ² of the two
settings are the same uniforms rescaled). ``verl-variance simulate`` (10,000 draws) gives:

    setting  policy    mean    std     P(underperform) MC / closed form   paper mean / std
    high     unaware   0.167   0.125   0.103 / 0.103                      4.643 / 0.13
    high     aware     0.087   0.043   0.039 / 0.037                      4.644 / 0.04
    low      unaware   0.131   0.126   0.167 / 0.165                      0.14  / 0.14
    low      aware     0.122   0.116   0.164 / 0.164                      0.13  / 0.12

Std ratio aware/unaware: 0.35 (high; paper 0.04/0.13 = 0.31, 0.26-0.36 given the paper's
rounding) and 0.92 (low; paper 0.12/0.14 = 0.86, 0.79-0.93 given rounding). With r* independent
of Σ the ratio is close to sqrt(λ_min(Σ) · mean(1/σ²)) (0.33 high, 0.91 low), whatever the scale
of r* or ε; those two only set the scale of the returns, chosen here so that the low-variability
numbers land on the paper's. The paper's high-setting means (≈ 4.64, equal for both policies)
cannot come from the r* and π0 of its low setting (means 0.13-0.14), so they are not reproduced;
a shift of π0ᵀr* would move both means and change no std and no probability. Here the aware
policy gives up mean return for its smaller spread (0.087 vs 0.167 in the high setting).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from verl_variance.core.config import from_mapping

VARIABILITY_SETTINGS: dict[str, tuple[float, float]] = {"high": (3.0, 100.0), "low": (70.0, 100.0)}
"""Named presets: range (lo, hi) of σ² ~ Uniform(lo, hi) (Figures 3 and 4)."""

REFERENCE_POLICIES = ("uniform", "zero")

PAPER_FIGURES: dict[str, dict[str, Any]] = {
    "high": {
        "figure": "Figure 3",
        "mean": {"unaware": 4.643, "aware": 4.644},
        "std": {"unaware": 0.13, "aware": 0.04},
        "std_ratio_aware_over_unaware": 0.04 / 0.13,
    },
    "low": {
        "figure": "Figure 4",
        "mean": {"unaware": 0.14, "aware": 0.13},
        "std": {"unaware": 0.14, "aware": 0.12},
        "std_ratio_aware_over_unaware": 0.12 / 0.14,
    },
}
"""The paper's reported numbers (r*, π0 and ε unpublished, so only the std ratio should match)."""

POLICIES = ("unaware", "aware")


@dataclass
class SimulationConfig:
    """One setting of the linearized-bandit simulation (Banerjee & Gopalan, Section 3, Figures 3-5).

    ``setting`` picks the σ² range of Figure 3 ("high", σ² ~ U(3, 100)) or Figure 4 ("low",
    σ² ~ U(70, 100)); ``variance_low``/``variance_high`` override it, and are required for
    ``setting="custom"``. The paper's n = 1000; r*, π0 and ε are not published (see module docstring).
    """

    setting: str = field(default="high", metadata={"help": "'high' (Figure 3), 'low' (Figure 4) or 'custom'."})
    variance_low: float | None = field(default=None, metadata={"help": "lo of σ² ~ U(lo, hi); None: the setting's."})
    variance_high: float | None = field(default=None, metadata={"help": "hi of σ² ~ U(lo, hi); None: the setting's."})
    dim: int = field(default=1000, metadata={"help": "n, the number of prompt-response pairs (paper: 1000)."})
    eps: float = field(default=0.2, metadata={"help": "ε, the step budget ‖π1 − π0‖² = ε (ε̃ = λ_min(Σ)·ε)."})
    reward_mean: float = field(default=0.0, metadata={"help": "Mean of r*_i ~ N(reward_mean, reward_std²)."})
    reward_std: float = field(default=0.3, metadata={"help": "Std of r*_i ~ N(reward_mean, reward_std²)."})
    reference_policy: str = field(default="uniform", metadata={"help": "π0: 'uniform' (1/n each) or 'zero'."})
    draws: int = field(default=10_000, metadata={"help": "Monte Carlo draws of R̂ ~ N(r*, Σ)."})
    chunk_size: int = field(default=1000, metadata={"help": "Draws per batch (memory; same R̂ draws for any size)."})
    bins: int = field(default=60, metadata={"help": "Histogram bins (shared by both policies)."})
    seed: int = field(default=0, metadata={"help": "Seed of r*, σ² and the draws (same seed, same report)."})

    def __post_init__(self) -> None:
        self._resolve_variance_range()
        checks = [
            ("dim", self.dim >= 1, "must be >= 1"),
            ("variance_low", self.variance_low > 0, "must be > 0 (Σ must be invertible); set a positive lower bound"),
            ("variance_high", math.isfinite(self.variance_high), "must be finite"),
            ("variance_high", self.variance_high >= self.variance_low, "must be >= variance_low"),
            ("eps", self.eps > 0, "must be > 0 (the step budget ε)"),
            ("reward_std", self.reward_std >= 0, "must be >= 0"),
            ("draws", self.draws >= 2, "must be >= 2 (a std needs two draws)"),
            ("chunk_size", self.chunk_size >= 1, "must be >= 1"),
            ("bins", self.bins >= 1, "must be >= 1"),
            ("seed", self.seed >= 0, "must be >= 0 (numpy SeedSequence)"),
        ]
        for name, ok, fix in checks:
            if not ok:
                raise ValueError(f"SimulationConfig.{name}={getattr(self, name)!r}: {fix}")
        if self.reference_policy not in REFERENCE_POLICIES:
            raise ValueError(
                f"SimulationConfig.reference_policy={self.reference_policy!r}: expected one of {REFERENCE_POLICIES}"
            )

    def _resolve_variance_range(self) -> None:
        if self.setting in VARIABILITY_SETTINGS:
            lo, hi = VARIABILITY_SETTINGS[self.setting]
            self.variance_low = lo if self.variance_low is None else float(self.variance_low)
            self.variance_high = hi if self.variance_high is None else float(self.variance_high)
        elif self.setting != "custom":
            raise ValueError(
                f"SimulationConfig.setting={self.setting!r}: unknown setting; expected one of "
                f"{sorted(VARIABILITY_SETTINGS)} or 'custom' (with variance_low and variance_high)"
            )
        elif self.variance_low is None or self.variance_high is None:
            raise ValueError("SimulationConfig.setting='custom' needs both variance_low and variance_high")
        else:
            self.variance_low, self.variance_high = float(self.variance_low), float(self.variance_high)


def make_config(setting: str = "high", **overrides: Any) -> SimulationConfig:
    """The named preset ``setting`` with ``overrides`` (``from_mapping``: typed; an unknown key fails with the
    valid ones)."""
    return from_mapping(SimulationConfig, {"setting": setting}, overrides, where="the simulation config")


# --- the paper's quantities ---------------------------------------------------------------------


def epsilon_tilde(sigma2: np.ndarray, eps: float) -> float:
    """ε̃ = λ_min(Σ)·ε (Section 3): the aware budget whose largest ellipsoid axis matches the ε-sphere.

    sigma2: (n,) the diagonal of Σ.
    """
    return float(np.min(sigma2)) * eps


def variance_unaware_policy(reward_estimate: np.ndarray, pi0: np.ndarray, eps: float) -> np.ndarray:
    """π1 = π0 + sqrt(ε / R̂ᵀR̂) · R̂: argmax πᵀR̂ s.t. ‖π − π0‖² ≤ ε (Definition 3.1).

    reward_estimate: (..., n) R̂, one row per draw; pi0: (n,). Returns (..., n).
    """
    squared_norm = np.sum(reward_estimate * reward_estimate, axis=-1, keepdims=True)
    return pi0 + np.sqrt(eps / squared_norm) * reward_estimate


def variance_aware_policy(reward_estimate: np.ndarray, sigma2: np.ndarray, pi0: np.ndarray, eps: float) -> np.ndarray:
    """π2 = π0 + sqrt(ε̃ / R̂ᵀΣ⁻¹R̂) · Σ⁻¹R̂, ε̃ = λ_min(Σ)·ε: argmax πᵀR̂ s.t. (π−π0)ᵀΣ(π−π0) ≤ ε̃ (Def. 3.2).

    reward_estimate: (..., n) R̂; sigma2: (n,) the diagonal of Σ; pi0: (n,). Returns (..., n).
    """
    weighted = reward_estimate / sigma2
    weighted_norm = np.sum(reward_estimate * weighted, axis=-1, keepdims=True)
    return pi0 + np.sqrt(epsilon_tilde(sigma2, eps) / weighted_norm) * weighted


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def underperformance_probability_unaware(r_star: np.ndarray, sigma2: np.ndarray) -> float:
    """P(π1ᵀr* ≤ π0ᵀr*) = P(R̂ᵀr* ≤ 0) = Φ(−‖r*‖² / sqrt(r*ᵀΣr*)) (Theorem 3.3).

    r_star: (n,) the true reward; sigma2: (n,) the diagonal of Σ.
    """
    return _normal_cdf(-float(r_star @ r_star) / math.sqrt(float(r_star @ (sigma2 * r_star))))


def underperformance_probability_aware(r_star: np.ndarray, sigma2: np.ndarray) -> float:
    """P(π2ᵀr* ≤ π0ᵀr*) = P(R̂ᵀΣ⁻¹r* ≤ 0) = Φ(−sqrt(r*ᵀΣ⁻¹r*)) (Theorem 3.3).

    r_star: (n,) the true reward; sigma2: (n,) the diagonal of Σ.
    """
    return _normal_cdf(-math.sqrt(float(r_star @ (r_star / sigma2))))


# --- the simulation (Figures 3-5) ---------------------------------------------------------------


def bandit_instance(config: SimulationConfig) -> dict[str, np.ndarray]:
    """The fixed r* (n,), σ² (n,) and π0 (n,) of ``config``, from the seed's first two child streams."""
    reward_stream, variance_stream, _ = np.random.SeedSequence(config.seed).spawn(3)
    r_star = np.random.default_rng(reward_stream).normal(config.reward_mean, config.reward_std, config.dim)
    sigma2 = np.random.default_rng(variance_stream).uniform(config.variance_low, config.variance_high, config.dim)
    pi0 = np.full(config.dim, 1.0 / config.dim) if config.reference_policy == "uniform" else np.zeros(config.dim)
    return {"r_star": r_star, "sigma2": sigma2, "pi0": pi0}


def monte_carlo_returns(config: SimulationConfig) -> dict[str, Any]:
    """Draw R̂ ~ N(r*, Σ) ``config.draws`` times; the returns π1ᵀr* and π2ᵀr* of each draw.

    Returns {"r_star", "sigma2", "pi0": (n,), "reference_return": π0ᵀr*, "unaware", "aware": (draws,)}.
    """
    instance = bandit_instance(config)
    r_star, sigma2, pi0 = instance["r_star"], instance["sigma2"], instance["pi0"]
    noise = np.random.default_rng(np.random.SeedSequence(config.seed).spawn(3)[2])
    returns: dict[str, list[np.ndarray]] = {name: [] for name in POLICIES}
    for start in range(0, config.draws, config.chunk_size):
        size = min(config.chunk_size, config.draws - start)
        reward_estimate = r_star + np.sqrt(sigma2) * noise.standard_normal((size, config.dim))
        returns["unaware"].append(variance_unaware_policy(reward_estimate, pi0, config.eps) @ r_star)
        returns["aware"].append(variance_aware_policy(reward_estimate, sigma2, pi0, config.eps) @ r_star)
    result: dict[str, Any] = {name: np.concatenate(parts) for name, parts in returns.items()}
    return {**instance, "reference_return": float(pi0 @ r_star), **result}


def _return_statistics(returns: np.ndarray, reference_return: float) -> dict[str, float]:
    probability = float(np.mean(returns <= reference_return))
    return {
        "mean": float(np.mean(returns)),
        "std": float(np.std(returns, ddof=1)),
        "underperformance_probability": probability,
        "standard_error": math.sqrt(probability * (1.0 - probability) / len(returns)),
    }


def _histogram(samples: dict[str, np.ndarray], bins: int) -> dict[str, list[float]]:
    both = np.concatenate([samples[name] for name in POLICIES])
    edges = np.histogram_bin_edges(both, bins=bins)
    counts = {name: np.histogram(samples[name], bins=edges)[0].astype(float).tolist() for name in POLICIES}
    return {"edges": edges.tolist(), **counts}


def simulate(config: SimulationConfig) -> dict[str, Any]:
    """One setting: Monte Carlo statistics beside Theorem 3.3's closed forms and the paper's numbers (JSON-able)."""
    samples = monte_carlo_returns(config)
    r_star, sigma2 = samples["r_star"], samples["sigma2"]
    monte_carlo = {name: _return_statistics(samples[name], samples["reference_return"]) for name in POLICIES}
    closed_form = {
        "unaware": underperformance_probability_unaware(r_star, sigma2),
        "aware": underperformance_probability_aware(r_star, sigma2),
    }
    return {
        "setting": config.setting,
        "config": asdict(config),
        "reference_return": samples["reference_return"],
        "eps_tilde": epsilon_tilde(sigma2, config.eps),
        "closed_form_underperformance_probability": closed_form,
        "theorem_3_3_holds": closed_form["aware"] <= closed_form["unaware"],
        "monte_carlo": monte_carlo,
        "std_ratio_aware_over_unaware": monte_carlo["aware"]["std"] / monte_carlo["unaware"]["std"],
        "histogram": _histogram(samples, config.bins),
        "paper": PAPER_FIGURES.get(config.setting),
    }


# --- outputs ------------------------------------------------------------------------------------


def _histogram_of(report_or_samples: dict[str, Any]) -> tuple[dict[str, Any], float]:
    if "histogram" in report_or_samples:
        return report_or_samples["histogram"], report_or_samples["reference_return"]
    return _histogram(report_or_samples, bins=60), report_or_samples["reference_return"]


def _title(report_or_samples: dict[str, Any]) -> str:
    config = report_or_samples.get("config")
    if config is None:
        return "Returns of the linearized policies"
    lo, hi = config["variance_low"], config["variance_high"]
    return f"{config['setting']} variability: σ² ~ U({lo:g}, {hi:g}), n = {config['dim']}"


def _label(report_or_samples: dict[str, Any], name: str) -> str:
    label = {"unaware": "π1 variance-unaware", "aware": "π2 variance-aware"}[name]
    if "monte_carlo" not in report_or_samples:
        return label
    stats = report_or_samples["monte_carlo"][name]
    return f"{label}: mean {stats['mean']:.3f}, std {stats['std']:.3f}"


def plot_returns(report_or_samples: dict[str, Any], path: str | Path) -> Path:
    """PNG of overlaid histograms of π1ᵀr* and π2ᵀr* (Figure 5), with π0ᵀr* marked.

    report_or_samples: a ``simulate`` result (one setting) or a ``monte_carlo_returns`` result.
    """
    from matplotlib.figure import Figure  # lazy: Agg canvas via Figure.savefig, no pyplot state

    histogram, reference_return = _histogram_of(report_or_samples)
    edges = np.asarray(histogram["edges"])
    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    axes = figure.subplots()
    for name, color in zip(POLICIES, ("tab:cyan", "tab:red"), strict=True):
        axes.stairs(histogram[name], edges, fill=True, alpha=0.45, color=color, label=_label(report_or_samples, name))
    axes.axvline(reference_return, color="black", linestyle="--", linewidth=1, label="π0ᵀr*")
    axes.set_xlabel("return πᵀr*")
    axes.set_ylabel("draws of R̂")
    axes.set_title(_title(report_or_samples))
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def run(output_dir: str | Path, settings: tuple[str, ...] = ("high", "low"), **overrides: Any) -> dict[str, Any]:
    """Simulate each setting; write ``simulation.json`` and ``returns_<setting>.png``; return the report."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"paper": "Banerjee & Gopalan, Section 3, Theorem 3.3, Figures 3-5", "settings": {}}
    for setting in settings:
        result = simulate(make_config(setting, **overrides))
        report["settings"][setting] = result
        plot_returns(result, output_dir / f"returns_{setting}.png")
    (output_dir / "simulation.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """One line per setting and policy: mean, std, P(underperform) Monte Carlo / closed form, paper's numbers."""
    lines = []
    for setting, result in report["settings"].items():
        paper = result["paper"] or {"mean": {}, "std": {}}
        for name in POLICIES:
            stats = result["monte_carlo"][name]
            lines.append(
                f"  {setting:>6} {name:>7}: mean={stats['mean']:.3f} std={stats['std']:.3f} "
                f"P(underperform)={stats['underperformance_probability']:.3f} "
                f"(closed form {result['closed_form_underperformance_probability'][name]:.3f}); "
                f"paper mean={paper['mean'].get(name)} std={paper['std'].get(name)}"
            )
        lines.append(f"  {setting:>6} std ratio aware/unaware={result['std_ratio_aware_over_unaware']:.3f}")
    return lines
