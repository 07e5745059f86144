"""Stage-1 reward-model training speed and memory (issue 11): TRL's RewardTrainer (``stage1.train_stage1``, what
``train-rm`` runs) against the plain loop it replaced (``reference.train_stage1_reference``), same model, pairs, batch
and steps, side by side in one run.

Each trainer runs in its own child process (so peak memory is its own), alternating ``--repeats`` times
(reference, TRL, reference, TRL, ...) so that drift of a shared machine hits both alike. Per run: pairs/s over the
timed steps (the first ``--warmup`` steps excluded), and peak RSS (VmHWM, CPU) or ``torch.cuda.max_memory_allocated``
(GPU). Figures: the medians, and the ratio TRL / reference.

``--preset gemma-2b --device cuda`` (no reference run): the paper's backbone size, a Gemma-2B-shaped config with
random weights (no download), stage 1 in bf16 with gradient checkpointing for ``--steps`` (>= 50) steps of the
paper's batch (32 pairs, micro-batch ``--micro-batch``), 1024-token pairs: pairs/s, peak GPU memory, and the time
projected for the paper's 4,125 steps (paper: 51 h on 4 x A40).

    python benchmarks/bench_stage1.py                                       # CPU, both trainers
    python benchmarks/bench_stage1.py --device cuda --preset gemma-2b       # one GPU, TRL, Gemma-2B size

``--memory-plan`` (CPU, seconds): the measured inputs of the memory plan for Gemma-2B (recipes/README.md): its parameter
count (its config on the meta device), and the activation memory stage 1 keeps for the backward pass per pair
(2 sequences of 1,024 tokens, bf16), with and without gradient checkpointing: the bytes of every tensor autograd
saves in a forward pass of the real layer at full width (``torch.autograd.graph.saved_tensors_hooks``, storages
counted once), for 1 and 2 layers, so the per-layer figure is their difference.

One JSON line per figure on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PAPER_STEPS, PAPER_HOURS = 4125, 51.0


@dataclass(frozen=True)
class Preset:
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    seq_len: int
    pairs: int


PRESETS = {
    # small enough for 2 CPU cores: 4 layers of hidden 256, GPT-2's vocabulary, 128-token sequences
    "cpu": Preset(256, 4, 4, 4, 688, 50257, 128, 256),
    # Gemma-2B: hidden 2048, 18 layers, 8 heads with 1 KV head (MQA), MLP 16384, vocabulary 256000
    "gemma-2b": Preset(2048, 18, 8, 1, 16384, 256000, 1024, 4096),
}


def emit(**figure) -> None:
    print(json.dumps(figure), flush=True)


def build(preset: Preset, folder: Path) -> None:
    """A random-weight sequence classifier of the preset's shape (Gemma architecture) and a tokenizer, saved."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from verl_variance.models.tiny import build_tokenizer

    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(gemma_config(preset)).save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)


def gemma_config(preset: Preset, num_layers: int | None = None, vocab_size: int | None = None):
    from transformers import GemmaConfig

    return GemmaConfig(
        vocab_size=vocab_size or preset.vocab_size, hidden_size=preset.hidden_size,
        num_hidden_layers=num_layers or preset.num_layers, num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_key_value_heads, head_dim=preset.hidden_size // preset.num_attention_heads,
        intermediate_size=preset.intermediate_size, max_position_embeddings=max(preset.seq_len, 512), num_labels=1,
        pad_token_id=0,
    )  # fmt: skip


def saved_activation_bytes(preset: Preset, num_layers: int, checkpointing: bool) -> int:
    """Bytes of the tensors autograd keeps for backward in one training forward pass of one pair (2 × seq_len tokens)
    of a ``num_layers``-layer model of the preset's width in bf16 (small vocabulary: the embedding's output, not its
    table, is an activation); parameters excluded, each storage counted once."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(
        gemma_config(preset, num_layers, vocab_size=1000), dtype=torch.bfloat16, attn_implementation="sdpa"
    ).train()
    if checkpointing:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    saved: dict[int, int] = {}

    def pack(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    ids = torch.randint(1, 1000, (2, preset.seq_len), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    weights = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    return sum(size for pointer, size in saved.items() if pointer not in weights)


def memory_plan() -> None:
    """The measured inputs of the memory plan (recipes/README.md; Gemma-2B, 1,024-token pairs, bf16)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    preset = PRESETS["gemma-2b"]
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(gemma_config(preset))
    parameters = sum(parameter.numel() for parameter in model.parameters())
    setting = {"model": "gemma-2b", "seq_len": preset.seq_len, "sequences": 2, "dtype": "bfloat16"}
    emit(figure="gemma2b_parameters", value=parameters, **setting)
    emit(figure="gemma2b_model_states_gb_adamw_fp32", value=round(16 * parameters / 1e9, 2), bytes_per_parameter=16,
         **setting)  # fmt: skip
    for checkpointing in (False, True):
        one, two = (saved_activation_bytes(preset, layers, checkpointing) for layers in (1, 2))
        per_layer, rest = two - one, one - (two - one)
        total = rest + preset.num_layers * per_layer
        name = "with" if checkpointing else "without"
        emit(figure=f"activations_mib_per_layer_{name}_checkpointing", value=round(per_layer / 2**20, 1), **setting)
        emit(figure=f"activations_gib_per_pair_{name}_checkpointing", value=round(total / 2**30, 2),
             outside_layers_mib=round(rest / 2**20, 1), layers=preset.num_layers, **setting)  # fmt: skip


def random_pairs(preset: Preset, seed: int = 0) -> dict:
    """``encode_pairs``-shaped random pairs: right-padded ids, lengths uniform in [seq_len/2, seq_len]."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    out = {}
    for side in ("chosen", "rejected"):
        ids = torch.randint(1, preset.vocab_size, (preset.pairs, preset.seq_len), generator=generator)
        lengths = torch.randint(preset.seq_len // 2, preset.seq_len + 1, (preset.pairs,), generator=generator)
        mask = (torch.arange(preset.seq_len)[None, :] < lengths[:, None]).long()
        out[side] = {"input_ids": ids * mask, "attention_mask": mask}
    return out


def child(args: argparse.Namespace) -> dict:
    """One trainer, one run: ``{"pairs_per_s", "peak_bytes"}`` of the steps after the warm-up."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    from verl_variance.reward_model import optimisation, stage1
    from verl_variance.reward_model.reference import train_stage1_reference
    from verl_variance.reward_model.stage1 import Stage1Config, train_stage1

    preset, device = PRESETS[args.preset], args.device
    model = AutoModelForSequenceClassification.from_pretrained(args.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    encoded = random_pairs(preset)
    config = Stage1Config(
        learning_rate=1e-5, batch_size=args.batch_size, micro_batch_size_per_device=args.micro_batch,
        max_steps=args.steps, target_loss=None, bf16=args.bf16, gradient_checkpointing=args.bf16,
        save_steps=0, logger=[], show_progress=False,
    )  # fmt: skip
    stamps: list[float] = []

    def stamp(*_args, **_kwargs) -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    if args.trainer == "reference":
        model.to(device)

        original = optimisation.ensemble_bradley_terry_loss

        def timed_loss(*loss_args, **loss_kwargs):  # called once per step, after the step's forward passes
            stamp()
            return original(*loss_args, **loss_kwargs)

        optimisation.ensemble_bradley_terry_loss = timed_loss
        train_stage1_reference(model, encoded, config)
        stamp()
        # stamp k sits in step k (after its forwards); steps between stamps[warmup] and the last stamp
        timed = stamps[args.warmup :]
    else:

        class Stamp(TrainerCallback):
            def on_step_end(self, *cb_args, **cb_kwargs):
                stamp()

        make_callbacks = stage1.trainer_callbacks
        stage1.trainer_callbacks = lambda settings: [*make_callbacks(settings), Stamp()]
        with tempfile.TemporaryDirectory() as tmp:
            train_stage1(model, tokenizer, encoded, config, tmp)
        timed = stamps[args.warmup - 1 :]
    steps = len(timed) - 1
    pairs_per_s = steps * args.batch_size / (timed[-1] - timed[0])
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))
    return {"pairs_per_s": pairs_per_s, "peak_bytes": peak, "timed_steps": steps}


def run_child(args: argparse.Namespace, trainer: str, model_dir: Path) -> dict:
    command = [sys.executable, __file__, "--child", "--trainer", trainer, "--model-dir", str(model_dir)]
    for key in ("preset", "device", "steps", "warmup", "batch_size", "micro_batch"):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    command += ["--bf16"] if args.bf16 else []
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{trainer} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per run (cpu 12, gemma-2b 60)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    parser.add_argument("--batch-size", type=int, default=None, help="pairs per step (cpu 8, gemma-2b 32)")
    parser.add_argument("--micro-batch", type=int, default=None, help="pairs per forward pass (cpu 8, gemma-2b 4)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each trainer")
    parser.add_argument("--bf16", action="store_true", help="bf16 + gradient checkpointing (default on gemma-2b)")
    parser.add_argument("--memory-plan", action="store_true", help="Gemma-2B parameters and activations per pair")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trainer", choices=["reference", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_plan:
        memory_plan()
        return
    gemma = args.preset == "gemma-2b"
    args.steps = args.steps or (60 if gemma else 12)
    args.batch_size = args.batch_size or (32 if gemma else 8)
    args.micro_batch = args.micro_batch or (4 if gemma else args.batch_size)
    args.bf16 = args.bf16 or gemma
    if args.child:
        print(json.dumps(child(args)))
        return
    preset = PRESETS[args.preset]
    trainers = ["trl"] if gemma else ["reference", "trl"]
    runs: dict[str, list[dict]] = {name: [] for name in trainers}
    with tempfile.TemporaryDirectory() as tmp:
        build(preset, Path(tmp))
        for _ in range(1 if gemma else args.repeats):
            for name in trainers:
                runs[name].append(run_child(args, name, Path(tmp)))
    setting = {"preset": args.preset, "device": args.device, "batch": args.batch_size, "micro_batch": args.micro_batch,
               "seq_len": preset.seq_len, "bf16": args.bf16, "steps": args.steps, "runs": len(runs["trl"])}  # fmt: skip
    medians = {name: {key: statistics.median(run[key] for run in values) for key in ("pairs_per_s", "peak_bytes")}
               for name, values in runs.items()}  # fmt: skip
    for name, values in medians.items():
        emit(figure=f"stage1_pairs_per_s_{name}", value=round(values["pairs_per_s"], 3), **setting)
        emit(figure=f"stage1_peak_memory_gib_{name}", value=round(values["peak_bytes"] / 2**30, 3), **setting)
    if gemma:
        hours = PAPER_STEPS * args.batch_size / medians["trl"]["pairs_per_s"] / 3600
        emit(figure="stage1_projected_hours_4125_steps_one_gpu", value=round(hours, 2), paper_hours_4xA40=PAPER_HOURS,
             **setting)  # fmt: skip
        return
    for key, unit in (("pairs_per_s", "throughput"), ("peak_bytes", "peak_memory")):
        ratio = medians["trl"][key] / medians["reference"][key]
        emit(figure=f"stage1_{unit}_ratio_trl_over_reference", value=round(ratio, 3), **setting)


if __name__ == "__main__":
    main()
