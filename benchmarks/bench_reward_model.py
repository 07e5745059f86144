"""Speed and memory of the K-head ensemble reward model (issue 4), every variant side by side in one run.

1. Scoring throughput (sequences/s) through ``features.head_rewards``: one backbone with K=10 heads vs
   the same backbone with K=1 (target >= 0.95x), and vs 10 separate 1-head reward models, each scoring
   every sequence (target >= 8x; 0.8 K for other K). Calls are interleaved finely: rounds of (K=1, K=10,
   separate model i) in rotating order, so drift of a shared machine hits every variant alike; figures
   are medians of the calls (the separate ensemble: the sum over its models of each one's median). The
   best-of-calls ratios are reported beside them.
2. Stage 2, same ``HeadTrainingConfig`` (paper Table 4 defaults, no early stop) and so the same steps:
   ``train_heads_on_features`` on cached features vs ``train_heads_uncached`` (backbone forward at every
   step). Target: cached >= 50x faster. The cached figure includes the feature extraction
   (``last_token_features`` of every chosen and rejected sequence, kept on the CPU, as ``train_stage2``
   does); the ratio without it is reported too, and so are the sequences each path runs through the
   backbone, which bound the ratio with the extraction whatever the hardware.
3. The K heads' parameters as a fraction of the backbone's. Target: < 1%.
4. Peak memory of scoring with K=1, K=10 and 10 separate models, each variant in its own child
   process: peak RSS (VmHWM, reset after the models are built) on CPU, ``torch.cuda.max_memory_allocated``
   on GPU. No target; the ratios are reported.

Backbone: a Qwen2-style decoder with random weights, built locally from its config (no hub):
``--preset gpu`` is GPT-2-small sized (hidden 768, 12 layers, 12 heads, SwiGLU MLP 2048, vocab 50257:
124M parameters), bf16, 256-token sequences, batch 32; ``--preset cpu`` (default on CPU) keeps the
vocabulary and the 256-token sequences but is 4 layers of hidden 256 (16M parameters, 3M outside the
embedding) so that the whole run takes about 70 s on 2 idle cores (2.5 min with load 4.5 on them);
``--preset gpu-2b`` has the paper's backbone size (Gemma-2B's hidden 2048, 18 layers, MLP 16384; 1.9B
parameters with GPT-2's vocabulary).
Sequences are random tokens, right-padded, lengths uniform in [seq_len/2, seq_len]. On the GPU the stage-2
heads train on CPU-resident features, as ``train_stage2`` does.

    python benchmarks/bench_reward_model.py                                   # CPU
    python benchmarks/bench_reward_model.py --device cuda                     # GPU (--preset gpu)
    python benchmarks/bench_reward_model.py --device cuda --preset gpu-2b     # GPU, the paper's backbone size

One JSON line per figure on stdout (``--output figures.json`` also writes them as a list); a short
summary on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from verl_variance.reward_model.features import backbone_of, head_rewards, last_token_features, score_layer_of
from verl_variance.reward_model.heads import HeadTrainingConfig, head_order, train_heads_on_features
from verl_variance.reward_model.reference import train_heads_uncached

TARGET_K_RATIO, TARGET_STAGE2_RATIO, TARGET_HEAD_FRACTION = 0.95, 50.0, 0.01
TARGET_SEPARATE_SHARE = 0.8  # of the K-fold ideal: >= 8x for K = 10
PAD_ID = 0
VARIANTS = ("k1", "k10", "separate")  # K=1 heads, K heads, K separate 1-head models


@dataclass(frozen=True)
class Preset:
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int
    seq_len: int
    batch_size: int
    score_batches: int  # sequences scored per timed call = score_batches * batch_size
    repeats: int  # passes over the separate models, each interleaved with K=1 and K-head calls
    stage2_pairs: int
    stage2_repeats: int
    dtype: str


PRESETS = {
    "cpu": Preset(256, 4, 4, 688, 50257, 256, 8, 1, 3, 64, 1, "float32"),
    "gpu": Preset(768, 12, 12, 2048, 50257, 256, 32, 8, 5, 2048, 3, "bfloat16"),
    # the paper's backbone size (Gemma-2B: hidden 2048, 18 layers, MLP 16384), GPT-2's vocabulary
    "gpu-2b": Preset(2048, 18, 8, 16384, 50257, 256, 32, 4, 2, 2048, 2, "bfloat16"),
}

FIGURES: list[dict] = []


def emit(**figure) -> None:
    """One JSON line per figure."""
    FIGURES.append(figure)
    print(json.dumps(figure), flush=True)


# Non-timing helpers (tests/reward_model/test_bench_helpers.py).


def backbone_config(preset: Preset, num_labels: int, seq_len: int):
    """A Qwen2-style sequence-classifier config of the preset's shape, with K = ``num_labels`` heads."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=preset.vocab_size,
        hidden_size=preset.hidden_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_attention_heads,
        intermediate_size=preset.intermediate_size,
        max_position_embeddings=max(seq_len, 512),
        tie_word_embeddings=False,
        pad_token_id=PAD_ID,
        num_labels=num_labels,
    )


def build_reward_model(config, seed: int, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """A randomly initialised ``AutoModelForSequenceClassification`` (seeded), in eval mode on ``device``."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForSequenceClassification.from_config(config)
    return model.to(dtype).eval()


def head_parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(parameters of the ``score`` heads, parameters of the backbone body) of a sequence classifier."""
    heads = sum(p.numel() for p in score_layer_of(model).parameters())
    body = sum(p.numel() for p in backbone_of(model).parameters())
    return heads, body


def random_sequences(num: int, seq_len: int, vocab_size: int, seed: int) -> dict[str, torch.Tensor]:
    """``num`` right-padded sequences of random tokens (never the pad id), lengths uniform in [seq_len/2, seq_len]."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(PAD_ID + 1, vocab_size, (num, seq_len), generator=generator)
    lengths = torch.randint(max(1, seq_len // 2), seq_len + 1, (num, 1), generator=generator)
    mask = (torch.arange(seq_len)[None, :] < lengths).long()
    return {"input_ids": ids.masked_fill(mask == 0, PAD_ID), "attention_mask": mask}


def uncached_backbone_sequences(num_pairs: int, config: HeadTrainingConfig) -> int:
    """Sequences ``train_heads_uncached`` runs through the backbone: the distinct pairs of each step, chosen and
    rejected. Feature extraction for the cached path runs 2 * num_pairs, so with the extraction counted the
    cached speed-up is about this number / (2 * num_pairs), whatever the hardware."""
    order = head_order(num_pairs, config)
    return 2 * sum(int(torch.unique(step).numel()) for step in order)


# Timing.


def _timer(device: str) -> Callable[[Callable[[], object]], float]:
    def timed(fn: Callable[[], object]) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return timed


def _score_all(models: list[torch.nn.Module], batch: dict[str, torch.Tensor], batch_size: int) -> None:
    for model in models:
        head_rewards(model, batch["input_ids"], batch["attention_mask"], batch_size)


def time_scoring(
    models: dict[str, list[torch.nn.Module]], batch: dict[str, torch.Tensor], batch_size: int, passes: int, device: str
) -> dict[str, list[float]]:
    """Seconds per scoring call (``head_rewards`` over ``batch``) of every model, finely interleaved.

    One round is (K=1 model, K-head model, separate model i) in an order that rotates from round to round;
    i walks over the separate models, ``passes`` times. Drift of a shared machine then hits every variant
    alike. Returns the calls of "k1" and "k10", and of every separate model ("separate_0", ...).
    """
    timed = _timer(device)
    for model in [*models["k1"], *models["k10"], *models["separate"]]:  # warm-up
        _score_all([model], batch, batch_size)
    times: dict[str, list[float]] = {
        "k1": [],
        "k10": [],
        **{f"separate_{i}": [] for i in range(len(models["separate"]))},
    }
    round_index = 0
    for _ in range(passes):
        for i, separate in enumerate(models["separate"]):
            entries = [("k1", models["k1"][0]), ("k10", models["k10"][0]), (f"separate_{i}", separate)]
            shift = round_index % len(entries)
            for name, model in entries[shift:] + entries[:shift]:
                times[name].append(timed(lambda model=model: _score_all([model], batch, batch_size)))
            round_index += 1
    return times


@torch.no_grad()
def time_score_layer(model: torch.nn.Module, batch_size: int, seq_len: int, calls: int, device: str) -> float:
    """Median seconds of the ``score`` layer alone on one batch of hidden states (batch_size, seq_len, H): the
    classifier applies it at every position, so this is all that K heads add to a forward pass."""
    score, timed = score_layer_of(model), _timer(device)
    hidden = torch.randn(batch_size, seq_len, score.in_features, dtype=score.weight.dtype, device=device)
    score(hidden)
    return statistics.median(timed(lambda: score(hidden)) for _ in range(calls))


def ensemble_call_seconds(times: dict[str, list[float]], statistic: Callable[[list[float]], float]) -> dict[str, float]:
    """Seconds for each variant to score the batch: the K=1 and K-head models' calls, and the sum over the
    separate models of each one's calls (all of them score every sequence)."""
    separate = [values for name, values in times.items() if name.startswith("separate_")]
    return {"k1": statistic(times["k1"]), "k10": statistic(times["k10"]), "separate": sum(map(statistic, separate))}


def time_stage2(
    model: torch.nn.Module, chosen: dict, rejected: dict, config: HeadTrainingConfig, repeats: int, device: str
) -> dict:
    """Seconds of extraction + cached training and of uncached training, interleaved; and the two loss histories."""
    timed = _timer(device)
    runs: dict[str, list[float]] = {"extract": [], "cached_train": [], "uncached": []}
    result: dict = {}

    def extract() -> None:
        result["features"] = [
            last_token_features(model, b["input_ids"], b["attention_mask"], config.feature_batch_size)
            for b in (chosen, rejected)
        ]

    def cached() -> None:
        result["cached"] = train_heads_on_features(*result["features"], config)[1]

    def uncached() -> None:
        result["uncached"] = train_heads_uncached(model, chosen, rejected, config)[1]

    # Warm-up of the (cheap) head-training loop on stand-in features; the backbone is warm from the scoring rounds.
    stand_in = torch.zeros(chosen["input_ids"].shape[0], score_layer_of(model).in_features)
    train_heads_on_features(stand_in, stand_in, config)
    for round_index in range(repeats):
        order = ("cached", "uncached") if round_index % 2 == 0 else ("uncached", "cached")
        for path in order:
            if path == "cached":
                runs["extract"].append(timed(extract))
                runs["cached_train"].append(timed(cached))
            else:
                runs["uncached"].append(timed(uncached))
    loss_gap = float((result["cached"].loss - result["uncached"].loss).abs().max())
    return {**runs, "steps": result["cached"].steps, "max_loss_difference": loss_gap}


# Memory, one child process per variant.


def _hwm_bytes() -> int | None:
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024
    except (OSError, AttributeError):
        return None


def _rss_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


def _reset_hwm() -> bool:
    """Reset the process's peak RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_child(settings: dict) -> dict:
    """Build one variant's models, then score once; peak memory of the scoring (weights resident)."""
    preset, device, dtype = Preset(**settings["preset"]), settings["device"], getattr(torch, settings["dtype"])
    num_heads, variant = settings["num_heads"], settings["variant"]
    batch = random_sequences(settings["num_sequences"], settings["seq_len"], preset.vocab_size, seed=1)
    # Imports and first-call set-up (lazy transformers modules, CUDA context) stay out of the figures:
    # a tiny model of the same architecture scores once before the baseline is read.
    tiny = dataclasses.replace(preset, hidden_size=64, num_layers=1, num_attention_heads=2, intermediate_size=64)
    warm = build_reward_model(backbone_config(tiny, 1, settings["seq_len"]), 0, device, dtype)
    _score_all([warm], random_sequences(2, settings["seq_len"], preset.vocab_size, seed=0), 2)
    del warm
    gc.collect()
    baseline = _rss_bytes()
    labels, count = {"k1": (1, 1), "k10": (num_heads, 1), "separate": (1, num_heads)}[variant]
    config = backbone_config(preset, labels, settings["seq_len"])
    models = [build_reward_model(config, seed, device, dtype) for seed in range(count)]
    weights = sum(p.numel() * p.element_size() for m in models for p in m.parameters())
    reset = _reset_hwm()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _score_all(models, batch, settings["batch_size"])
    out = {"variant": variant, "weights_bytes": weights, "baseline_rss_bytes": baseline}
    if reset:
        out["peak_rss_bytes"] = _hwm_bytes()
    else:  # no clear_refs: the lifetime peak, which may be the import's
        out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["peak_rss_is_since_build"] = reset
    if device == "cuda":
        out["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return out


def measure_memory(settings: dict) -> dict[str, dict]:
    results = {}
    for variant in VARIANTS:
        command = [sys.executable, __file__, "--memory-child", json.dumps({**settings, "variant": variant})]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"memory child for {variant} failed:\n{proc.stderr[-4000:]}")
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


# Figures.


def _ratio_figure(name: str, value: float, target: float, device: str, **extra) -> None:
    emit(figure=name, value=round(value, 4), target=f">= {target}", met=value >= target, device=device, **extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--preset", choices=list(PRESETS), default=None, help="default: gpu on cuda, else cpu")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed passes over the separate models (default: the preset's)"
    )
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per forward pass")
    parser.add_argument("--num-heads", type=int, default=10, help="K, also the number of separate models")
    parser.add_argument("--stage2-pairs", type=int, default=None, help="preference pairs of the stage-2 run")
    parser.add_argument("--stage2-repeats", type=int, default=None)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--output", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        print(json.dumps(memory_child(json.loads(args.memory_child))), flush=True)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False; run with --device cpu")

    start_wall = time.perf_counter()
    preset = PRESETS[args.preset or ("gpu" if args.device == "cuda" else "cpu")]
    seq_len, batch_size = args.seq_len or preset.seq_len, args.batch_size or preset.batch_size
    repeats, dtype_name = args.repeats or preset.repeats, args.dtype or preset.dtype
    pairs, stage2_repeats = args.stage2_pairs or preset.stage2_pairs, args.stage2_repeats or preset.stage2_repeats
    device, dtype, num_heads = args.device, getattr(torch, dtype_name), args.num_heads
    num_sequences = preset.score_batches * batch_size
    fixed = {"device": device, "dtype": dtype_name, "seq_len": seq_len, "batch_size": batch_size,
             "hidden_size": preset.hidden_size, "num_layers": preset.num_layers, "num_heads": num_heads}  # fmt: skip
    if device == "cpu":
        fixed["threads"] = torch.get_num_threads()
    else:
        fixed["gpu"] = torch.cuda.get_device_name()

    def setup() -> dict:
        """The set-up, and on CPU the load average now: the figures are only as steady as the machine."""
        return {**fixed, "load_avg_1m": round(os.getloadavg()[0], 2)} if device == "cpu" else fixed

    # 3. Head parameters (cheapest first; also the backbone's size for the other figures).
    k10 = build_reward_model(backbone_config(preset, num_heads, seq_len), 0, device, dtype)
    head_params, body_params = head_parameter_counts(k10)
    embedding = k10.get_input_embeddings().weight.numel()
    fraction = head_params / body_params
    emit(figure="head_parameter_fraction", value=fraction, target=f"< {TARGET_HEAD_FRACTION}",
         met=fraction < TARGET_HEAD_FRACTION, device=device, head_params=head_params, backbone_params=body_params,
         fraction_of_non_embedding=head_params / (body_params - embedding), num_heads=num_heads)  # fmt: skip

    # 1. Scoring throughput.
    models = {
        "k1": [build_reward_model(backbone_config(preset, 1, seq_len), 0, device, dtype)],
        "k10": [k10],
        "separate": [
            build_reward_model(backbone_config(preset, 1, seq_len), seed, device, dtype) for seed in range(num_heads)
        ],
    }
    batch = random_sequences(num_sequences, seq_len, preset.vocab_size, seed=1)
    times = time_scoring(models, batch, batch_size, repeats, device)
    seconds = ensemble_call_seconds(times, statistics.median)
    throughput = {name: num_sequences / value for name, value in seconds.items()}
    best = {name: num_sequences / value for name, value in ensemble_call_seconds(times, min).items()}
    score_layer = {name: time_score_layer(models[name][0], batch_size, seq_len, 50, device) for name in ("k1", "k10")}
    score_share = score_layer["k10"] * preset.score_batches / seconds["k10"]
    # A/A check: the separate models are 1-head models like "k1", so their calls should take as long as its calls;
    # how far this ratio is from 1 is the noise floor of the K=10 vs K=1 figure on this machine.
    pooled = [t for name, values in times.items() if name.startswith("separate_") for t in values]
    noise_floor = statistics.median(pooled) / statistics.median(times["k1"])
    emit(figure="scoring_throughput_seq_per_s", k1=round(throughput["k1"], 2), k10=round(throughput["k10"], 2),
         separate=round(throughput["separate"], 2), statistic="median of the calls", sequences_per_call=num_sequences,
         passes=repeats, calls_per_variant=len(times["k1"]),
         best_of_calls={name: round(value, 2) for name, value in best.items()},
         ratios_of_best={"k10_vs_k1": round(best["k10"] / best["k1"], 4),
                         "k10_vs_separate": round(best["k10"] / best["separate"], 4)},
         score_layer_ms={name: round(1000 * value, 4) for name, value in score_layer.items()},
         score_layer_share_of_k10_call=round(score_share, 6),
         a_a_ratio_separate_model_vs_k1_calls=round(noise_floor, 4),
         k1_calls_s=[round(t, 4) for t in times["k1"]], k10_calls_s=[round(t, 4) for t in times["k10"]],
         **setup())  # fmt: skip
    _ratio_figure("scoring_throughput_ratio_k10_vs_k1", throughput["k10"] / throughput["k1"], TARGET_K_RATIO, device,
                  num_heads=num_heads)  # fmt: skip
    _ratio_figure("scoring_throughput_ratio_k10_vs_separate", throughput["k10"] / throughput["separate"],
                  round(TARGET_SEPARATE_SHARE * num_heads, 2), device, separate_models=num_heads)  # fmt: skip
    del models["k1"], models["separate"]

    # 2. Stage 2: cached vs uncached.
    config = HeadTrainingConfig(num_heads=num_heads, target_loss=None, feature_batch_size=batch_size,
                                show_progress=False)  # fmt: skip
    chosen = random_sequences(pairs, seq_len, preset.vocab_size, seed=2)
    rejected = random_sequences(pairs, seq_len, preset.vocab_size, seed=3)
    stage2 = time_stage2(k10, chosen, rejected, config, stage2_repeats, device)
    extract, train = statistics.median(stage2["extract"]), statistics.median(stage2["cached_train"])
    uncached = statistics.median(stage2["uncached"])
    sequences = {"cached_extraction": 2 * pairs, "uncached": uncached_backbone_sequences(pairs, config)}
    bootstrapped = uncached_backbone_sequences(pairs, dataclasses.replace(config, bootstrap=True))
    emit(figure="stage2_s", extract=round(extract, 4), cached_train=round(train, 5),
         cached_total=round(extract + train, 4), uncached=round(uncached, 4), pairs=pairs, steps=stage2["steps"],
         num_epochs=config.num_epochs, pairs_per_step=config.batch_size, bootstrap=config.bootstrap,
         backbone_sequences=sequences,
         max_loss_difference=stage2["max_loss_difference"], repeats=stage2_repeats, **setup())  # fmt: skip
    sequence_ratio = sequences["uncached"] / sequences["cached_extraction"]
    bootstrap_ratio = bootstrapped / sequences["cached_extraction"]
    _ratio_figure("stage2_speedup_cached_vs_uncached", uncached / (extract + train), TARGET_STAGE2_RATIO, device,
                  includes_extraction=True, backbone_sequence_ratio=round(sequence_ratio, 4),
                  backbone_sequence_ratio_if_bootstrap=round(bootstrap_ratio, 4))  # fmt: skip
    _ratio_figure("stage2_speedup_cached_vs_uncached_excl_extraction", uncached / train, TARGET_STAGE2_RATIO, device,
                  includes_extraction=False)  # fmt: skip
    del k10, models

    # 4. Peak memory of scoring, one child process per variant.
    if not args.skip_memory:
        settings = {"preset": dataclasses.asdict(preset), "device": device, "dtype": dtype_name, "seq_len": seq_len,
                    "batch_size": batch_size, "num_heads": num_heads, "num_sequences": num_sequences}  # fmt: skip
        memory = measure_memory(settings)
        mib = 2**20
        rss_over = {v: (m["peak_rss_bytes"] - m["baseline_rss_bytes"]) / mib for v, m in memory.items()}
        figure = {
            "figure": "scoring_peak_memory_mib",
            "measure": "peak RSS of a child process (VmHWM reset after building the models), and above its RSS "
            "before the models were built" + ("; torch.cuda.max_memory_allocated" if device == "cuda" else ""),
            "peak_rss": {v: round(m["peak_rss_bytes"] / mib, 1) for v, m in memory.items()},
            "peak_rss_over_baseline": {v: round(x, 1) for v, x in rss_over.items()},
            "weights": {v: round(m["weights_bytes"] / mib, 1) for v, m in memory.items()},
            "peak_rss_is_since_build": all(m["peak_rss_is_since_build"] for m in memory.values()),
        }
        if device == "cuda":
            figure["peak_cuda"] = {v: round(m["peak_cuda_bytes"] / mib, 1) for v, m in memory.items()}
        emit(**figure, sequences=num_sequences, **setup())
        key = "peak_cuda" if device == "cuda" else "peak_rss_over_baseline"
        peak = figure[key]
        emit(figure="scoring_peak_memory_ratio_k10_vs_k1", value=round(peak["k10"] / peak["k1"], 4), target=None,
             met=None, measure=key, device=device)  # fmt: skip
        emit(figure="scoring_peak_memory_ratio_separate_vs_k10", value=round(peak["separate"] / peak["k10"], 4),
             target=None, met=None, measure=key, device=device)  # fmt: skip

    wall = time.perf_counter() - start_wall
    emit(figure="benchmark_wall_s", value=round(wall, 1), device=device)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(FIGURES, indent=2))
    summary = ["", f"reward-model benchmark on {device} ({wall:.0f} s):"]
    for figure in FIGURES:
        if figure.get("target"):
            mark = "met" if figure["met"] else "NOT met"
            summary.append(f"  {figure['figure']}: {figure['value']:.4g} (target {figure['target']}: {mark})")
    steps = stage2["steps"]
    summary += [
        f"  scoring: the {num_heads}-head score layer alone takes {1000 * score_layer['k10']:.3f} ms per batch "
        f"({1000 * score_layer['k1']:.3f} ms with 1 head), {score_share:.3%} of a {num_heads}-head scoring call: "
        "all that the extra heads can cost. A/A check: a separate 1-head model's calls vs the K=1 model's calls "
        f"= {noise_floor:.3f} (ideally 1), the noise floor of the K10/K1 ratio on this machine.",
        f"  stage 2 ({config.num_epochs} epochs of {pairs} pairs): the uncached path runs {sequences['uncached']} "
        f"sequences through the backbone, the extraction {sequences['cached_extraction']}, so with the extraction "
        f"counted caching is at most ~{sequence_ratio:.2g}x faster ({bootstrap_ratio:.2g}x with bootstrap=True).",
        f"  per step: uncached {1000 * uncached / steps:.1f} ms (backbone forward of the step's pairs), cached "
        f"{1000 * train / steps:.2f} ms (head update); the ratio grows with the backbone's cost per step.",
    ]
    if device == "cpu" and os.getloadavg()[0] > torch.get_num_threads():
        summary.append(f"  note: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: other processes "
                       "shared the machine; compare the ratios, not the absolute figures")  # fmt: skip
    print("\n".join(summary), file=sys.stderr)


if __name__ == "__main__":
    main()
