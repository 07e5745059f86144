"""``verl-variance analyze`` and ``score``: a trained ensemble on files (Banerjee & Gopalan, Section 4, Table 1,
Figures 6 and 9).

- ``rewardbench_table``: accuracy r(chosen) > r(rejected) per subset and RewardBench section scores for the ensemble
  mean, every head and the single (stage-1) model, as in Table 1;
- ``variance_summary`` and ``plot_variance_histograms``: σ² across heads of r(chosen) and of r(chosen) − r(rejected)
  per subset (Figure 6);
- ``plot_head_accuracy``: each head against the single full model (Figure 9);
- ``score_file``: per-head rewards, mean, σ² and σ of every row of a JSONL/parquet file.

The numbers are pure functions of reward tensors; loading, scoring and plotting are separate.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from verl_variance.core.variance import ensemble_reward_variance
from verl_variance.reward_model.checkpoint import default_device, load_ensemble, load_reward_model
from verl_variance.reward_model.data import (
    PreferencePair,
    _check_turns,
    _plain,
    _read_rows,
    load_preferences,
    row_to_pair,
)
from verl_variance.reward_model.optimisation import show_progress as progress_enabled
from verl_variance.reward_model.scoring import CHUNK_BATCHES, pair_rewards, score_texts, write_scores

# RewardBench's official scoring, from allenai/reward-bench: rewardbench/constants.py (SUBSET_MAPPING, EXAMPLE_COUNTS
# as of commit 6552e93 "Mirror change from leaderboard", which set xstest-should-refuse 154 / should-respond 250),
# rewardbench/utils.py (calculate_scores_per_section: a section is the EXAMPLE_COUNTS-weighted mean of the accuracies
# of its subsets present) and analysis/get_benchmark_results.py (get_average_over_rewardbench: "Prior Sets" is the
# plain mean of four preference test sets and has half the weight of each section in the average).
SUBSET_MAPPING: dict[str, tuple[str, ...]] = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"),
    "Chat Hard": (
        *("mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst"),
        *("llmbar-adver-GPTOut", "llmbar-adver-manual"),
    ),
    "Safety": (
        "refusals-dangerous",
        "refusals-offensive",
        "xstest-should-refuse",
        "xstest-should-respond",
        "donotanswer",
    ),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"),
}
EXAMPLE_COUNTS: dict[str, int] = {
    **{"alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95},
    **{"mt-bench-easy": 28, "mt-bench-med": 40, "mt-bench-hard": 37},
    "math-prm": 984,  # 447 pairs, upweighted by RewardBench to weigh as much as the code subsets
    **{"refusals-dangerous": 100, "refusals-offensive": 100},
    **{"llmbar-natural": 100, "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92},
    **{"llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46},
    **{"xstest-should-refuse": 154, "xstest-should-respond": 250, "donotanswer": 136},
    **{f"hep-{language}": 164 for language in ("cpp", "go", "java", "js", "python", "rust")},
}
PRIOR_SETS = ("anthropic_helpful", "anthropic_hhh", "shp", "summarize")
PRIOR, OTHER, AVERAGE, ALL = "Prior Sets", "Other", "Average", "All pairs"
SECTION_WEIGHTS = {**dict.fromkeys(SUBSET_MAPPING, 2.0), PRIOR: 1.0}
"""Weights of the sections in the RewardBench average (Table 1's "Avg": 69.4 = (2·(95.6+44.5+55.9+81.8)+69.0)/9)."""


def section_of(subset: str) -> str:
    """The RewardBench section of a subset; ``Other`` for subsets RewardBench does not score."""
    for section, subsets in SUBSET_MAPPING.items():
        if subset in subsets:
            return section
    return PRIOR if subset in PRIOR_SETS else OTHER


def subset_accuracy(correct: torch.Tensor, subsets: Sequence[str]) -> dict[str, float]:
    """Fraction of pairs ranked right in each subset.

    Args:
        correct: (N,) bool, r(chosen) > r(rejected) (strictly: RewardBench counts ties as wrong).
        subsets: N subset names.
    """
    if len(subsets) != correct.shape[0]:
        raise ValueError(f"{correct.shape[0]} results but {len(subsets)} subset names")
    out: dict[str, list[bool]] = {}
    for name, right in zip(subsets, correct.tolist(), strict=True):
        out.setdefault(name, []).append(right)
    return {name: sum(values) / len(values) for name, values in out.items()}


def section_scores(accuracy: Mapping[str, float], sizes: Mapping[str, int]) -> dict[str, float]:
    """RewardBench section scores and average, in percent (Table 1).

    Args:
        accuracy: per subset, the fraction ranked right (``subset_accuracy``).
        sizes: pairs per subset in the evaluated data (weights of ``Other``).

    Returns:
        For each section with at least one subset present: Chat, Chat Hard, Safety, Reasoning (subset accuracies
        weighted by RewardBench's EXAMPLE_COUNTS), Prior Sets (plain mean of the prior test sets present), Other
        (subsets RewardBench does not score, pooled over their pairs); ``Average`` of the sections present, weighted
        2 per section and 1 for Prior Sets (Other excluded; absent without any RewardBench section); ``All pairs``,
        the accuracy over every pair.
    """
    grouped: dict[str, list[str]] = {}
    for subset in accuracy:
        grouped.setdefault(section_of(subset), []).append(subset)
    scores = {}
    for section, subsets in grouped.items():
        if section == PRIOR:
            weights = dict.fromkeys(subsets, 1)
        else:
            weights = {s: EXAMPLE_COUNTS[s] if section != OTHER else sizes[s] for s in subsets}
        scores[section] = 100 * sum(accuracy[s] * weights[s] for s in subsets) / sum(weights.values())
    ordered = {name: scores[name] for name in (*SUBSET_MAPPING, PRIOR, OTHER) if name in scores}
    weighted = {name: SECTION_WEIGHTS[name] for name in ordered if name in SECTION_WEIGHTS}
    if weighted:
        ordered[AVERAGE] = sum(ordered[name] * weight for name, weight in weighted.items()) / sum(weighted.values())
    total = sum(sizes[s] for s in accuracy)
    ordered[ALL] = 100 * sum(accuracy[s] * sizes[s] for s in accuracy) / total
    return ordered


def rewardbench_table(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    subsets: Sequence[str],
    single: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Table 1 for the ensemble mean, each head and the single model.

    Args:
        chosen: (N, K) reward of every head for the chosen responses.
        rejected: (N, K) for the rejected responses.
        subsets: N subset names (RewardBench's ``subset`` column).
        single: (N,) chosen and rejected rewards of the single full (stage-1) model.

    Returns:
        ``{"sizes": {subset: n}, "models": {name: {"subsets": {subset: %}, "sections": section_scores}}}`` with
        names ``ensemble mean`` (r̄ = (1/K) Σ_k r_k), ``single model`` and ``head_0`` .. ``head_{K-1}``.
    """
    if chosen.dim() != 2 or chosen.shape != rejected.shape:
        raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} must both be (N, K)")
    sizes: dict[str, int] = {}
    for name in subsets:
        sizes[name] = sizes.get(name, 0) + 1
    correct = {"ensemble mean": chosen.mean(dim=1) > rejected.mean(dim=1)}
    if single is not None:
        correct["single model"] = single[0] > single[1]
    correct.update({f"head_{k}": chosen[:, k] > rejected[:, k] for k in range(chosen.shape[1])})
    models = {}
    for name, right in correct.items():
        accuracy = subset_accuracy(right, subsets)
        percent = {subset: 100 * value for subset, value in accuracy.items()}
        models[name] = {"subsets": percent, "sections": section_scores(accuracy, sizes)}
    return {"sizes": sizes, "models": models}


def variance_summary(chosen: torch.Tensor, rejected: torch.Tensor, subsets: Sequence[str]) -> dict[str, Any]:
    """Figure 6's numbers: per subset, median / mean / max of σ² across heads of r(chosen) and of r(ch) − r(rej).

    Args:
        chosen: (N, K) rewards of the chosen responses, K >= 2.
        rejected: (N, K) rewards of the rejected responses.
    """
    variances = {
        "chosen_variance": ensemble_reward_variance(chosen),
        "difference_variance": ensemble_reward_variance(chosen - rejected),
    }
    out = {}
    for subset in dict.fromkeys(subsets):
        rows = torch.tensor([name == subset for name in subsets])
        out[subset] = {"n": int(rows.sum())}
        for key, values in variances.items():
            values = values[rows].double()
            stats = {"median": values.quantile(0.5), "mean": values.mean(), "max": values.max()}
            out[subset][key] = {stat: float(value) for stat, value in stats.items()}
    return out


def table_markdown(table: Mapping[str, Any]) -> str:
    """Markdown: section scores per model (Table 1 layout), then accuracy per subset."""
    models = table["models"]
    sections = list(next(iter(models.values()))["sections"])
    header = ["model", *sections]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        f"| {name} | " + " | ".join(f"{row['sections'][s]:.1f}" for s in sections) + " |"
        for name, row in models.items()
    ]
    header = ["subset", "section", "n", *models]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for subset, size in table["sizes"].items():
        cells = [f"{row['subsets'][subset]:.1f}" for row in models.values()]
        lines.append(f"| {subset} | {section_of(subset)} | {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _subset_order(subsets: Sequence[str]) -> list[str]:
    known = [*(s for group in SUBSET_MAPPING.values() for s in group), *PRIOR_SETS]
    present = set(subsets)
    return [s for s in known if s in present] + sorted(present - set(known))


def plot_variance_histograms(
    chosen: torch.Tensor, rejected: torch.Tensor, subsets: Sequence[str], path: str | os.PathLike, bins: int = 30
) -> Path:
    """Figure 6: per subset, histograms of σ² across heads of r(chosen) and of r(chosen) − r(rejected).

    Args:
        chosen: (N, K) rewards of the chosen responses, K >= 2.
        rejected: (N, K) rewards of the rejected responses.
    """
    from matplotlib.figure import Figure  # Agg canvas via Figure.savefig, no pyplot state

    chosen_variance = ensemble_reward_variance(chosen)
    difference_variance = ensemble_reward_variance(chosen - rejected)
    order = _subset_order(subsets)
    columns = min(4, len(order))
    rows = -(-len(order) // columns)
    figure = Figure(figsize=(max(6.4, 3.2 * columns), 0.6 + 2.4 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, subset in zip(axes, order, strict=False):
        mask = torch.tensor([name == subset for name in subsets])
        for values, label in ((chosen_variance, "σ² of r(chosen)"), (difference_variance, "σ² of r(ch) − r(rej)")):
            axis.hist(values[mask].numpy(), bins=bins, histtype="step", label=label)
        axis.set_title(f"{subset} (median σ² {float(chosen_variance[mask].median()):.2f})", fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in axes[len(order) :]:
        axis.set_visible(False)
    axes[0].legend(fontsize=7)
    figure.suptitle("Per-sample variance across reward heads (Figure 6)")
    path = Path(path)
    figure.savefig(path, format="png", dpi=110)
    return path


def plot_head_accuracy(table: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Figure 9: section scores of every head (dots) against the single full model and the ensemble mean."""
    from matplotlib.figure import Figure

    models = table["models"]
    sections = list(models["ensemble mean"]["sections"])
    heads = [name for name in models if name.startswith("head_")]
    figure = Figure(figsize=(max(5.0, 1.3 * len(sections)), 3.8), layout="constrained")
    axis = figure.subplots()
    for k, name in enumerate(heads):
        offsets = [i - 0.2 + 0.4 * k / max(1, len(heads) - 1) for i in range(len(sections))]
        scores = [models[name]["sections"][s] for s in sections]
        axis.scatter(offsets, scores, color="tab:gray", s=14, label="heads" if k == 0 else None)
    for name, marker, color in (("single model", "x", "tab:red"), ("ensemble mean", "D", "tab:blue")):
        if name in models:
            scores = [models[name]["sections"][s] for s in sections]
            axis.scatter(range(len(sections)), scores, marker=marker, color=color, s=40, label=name)
    axis.set_xticks(range(len(sections)), sections, fontsize=8)
    axis.set(ylabel="accuracy (%)", title="Each head vs the single full model (Figure 9)")
    axis.legend(fontsize=8)
    path = Path(path)
    figure.savefig(path, format="png", dpi=110)
    return path


def load_subset_pairs(files: Sequence[str | os.PathLike]) -> tuple[list[PreferencePair], list[str]]:
    """Pairs of RewardBench-layout files and each pair's subset (the file's stem when a row has none)."""
    pairs, subsets = [], []
    for file in files:
        loaded = load_preferences(file)
        pairs += loaded
        subsets += [pair.subset or Path(file).stem for pair in loaded]
    return pairs, subsets


def run_analysis(
    ensemble: str | os.PathLike,
    data_files: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    single_model: str | os.PathLike | None = None,
    batch_size: int = 32,
    max_length: int = 1024,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Score RewardBench-layout files with the ensemble (and the single model) and write Table 1, Figures 6 and 9.

    Writes ``rewardbench.json`` (table + variance summary), ``rewardbench.md``, ``variance_histograms.png``
    (Figure 6) and ``head_accuracy.png`` (Figure 9) to ``output_dir``; returns the JSON content.
    """
    model, tokenizer, _ = load_ensemble(ensemble, require_variance=True)
    model.to(default_device())
    pairs, subsets = load_subset_pairs(data_files)
    chosen, rejected = pair_rewards(model, tokenizer, pairs, batch_size, max_length, show_progress)
    single = None
    if single_model is not None:
        single_rm, single_tokenizer = load_reward_model(single_model)
        rewards = pair_rewards(single_rm, single_tokenizer, pairs, batch_size, max_length, show_progress)
        single = tuple(side.mean(dim=1) for side in rewards)  # a one-head model: its reward
    table = rewardbench_table(chosen, rejected, subsets, single)
    report = {
        "ensemble": str(ensemble),
        "single_model": None if single_model is None else str(single_model),
        "data_files": [str(file) for file in data_files],
        "num_pairs": len(pairs),
        **table,
        "variance": variance_summary(chosen, rejected, subsets),
    }
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "rewardbench.json").write_text(json.dumps(report, indent=2))
    (output_dir / "rewardbench.md").write_text(table_markdown(table))
    plot_variance_histograms(chosen, rejected, subsets, output_dir / "variance_histograms.png")
    plot_head_accuracy(table, output_dir / "head_accuracy.png")
    return report


def _score_items(model, tokenizer, items: Sequence[Any], batch_size: int, max_length: int, bar) -> dict:
    chunk, parts = batch_size * CHUNK_BATCHES, []
    for start in range(0, len(items), chunk):
        parts.append(score_texts(model, tokenizer, items[start : start + chunk], batch_size, max_length))
        bar.update(len(parts[-1]["mean"]))
    return {key: torch.cat([part[key] for part in parts]).tolist() for key in parts[0]}


def score_file(
    model_path: str | os.PathLike,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    batch_size: int = 32,
    max_length: int = 1024,
    show_progress: bool | None = None,
) -> Path:
    """Score every row of a JSONL/parquet file with every head of an ensemble and write the rows with their scores.

    Rows are pairs (``chosen``/``rejected``, with ``prompt`` for text) or responses (``response``, optional
    ``prompt``), text or chat messages. Each output row keeps the input columns and adds ``rewards`` (K per-head
    r_k), ``mean`` r̄, ``variance`` σ² (unbiased, across heads) and ``std`` σ, prefixed ``chosen_`` / ``rejected_``
    for pairs. The output format follows the suffix (``.jsonl`` or ``.parquet``).
    """
    input_path = Path(input_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"input file {input_path} does not exist")
    if Path(output_path).suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"cannot write scores to {output_path}: use a .jsonl or .parquet file name")
    rows = [(where, {key: _plain(value) for key, value in row.items()}) for where, row in _read_rows(input_path)]
    if not rows:
        raise ValueError(f"{input_path} holds no rows")
    is_pairs = "chosen" in rows[0][1] and "rejected" in rows[0][1]
    sides: dict[str, list[Any]] = {"chosen": [], "rejected": []} if is_pairs else {"": []}
    for where, row in rows:
        if is_pairs:
            pair = row_to_pair(row, where)
            sides["chosen"].append((pair.prompt, pair.chosen))
            sides["rejected"].append((pair.prompt, pair.rejected))
        elif "response" in row:
            prompt = _check_turns(row.get("prompt") or "", "prompt", where, allow_empty=True)
            sides[""].append((prompt, _check_turns(row["response"], "response", where)))
        else:
            raise ValueError(
                f"{where}: expected chosen/rejected (pairs) or response (optional prompt); columns: {sorted(row)}"
            )
    model, tokenizer, _ = load_ensemble(model_path, require_variance=True)
    model.to(default_device())
    out = [dict(row) for _, row in rows]
    total = len(rows) * len(sides)
    with tqdm(total=total, desc="scoring", unit="seq", disable=not progress_enabled(show_progress)) as bar:
        for side, items in sides.items():
            scores = _score_items(model, tokenizer, items, batch_size, max_length, bar)
            prefix = f"{side}_" if side else ""
            for index, row in enumerate(out):
                row.update({f"{prefix}{key}": values[index] for key, values in scores.items()})
    from pyarrow.lib import ArrowException

    try:
        return write_scores(out, output_path)
    except ArrowException as error:
        raise ValueError(
            f"cannot write {output_path} as parquet ({error}): a column of the input mixes types (e.g. text and "
            "chat messages); write a .jsonl file instead"
        ) from None
