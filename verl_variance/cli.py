"""``verl-variance``: one command, one subcommand per job."""

from __future__ import annotations

import argparse
import sys


def _doctor(args: argparse.Namespace) -> int:
    from verl_variance.integration.doctor import main

    return main(as_json=args.json)


def _ppo(args: argparse.Namespace) -> int:
    from verl_variance.integration.launcher import run_ppo

    return run_ppo(args.overrides, device=args.device)


def _tiny_model(args: argparse.Namespace) -> int:
    from verl_variance.models.tiny import TinyModelConfig, build_tiny_model

    config = TinyModelConfig(architecture=args.architecture, num_labels=args.num_labels)
    print(build_tiny_model(args.output_dir, config))
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from verl_variance.experiments.quickstart import run_quickstart

    return run_quickstart(args.workdir, steps=args.steps, extra_overrides=args.overrides)


_SIMULATE_FIELDS = (
    *("variance_low", "variance_high", "dim", "eps", "reward_mean", "reward_std", "reference_policy"),
    *("draws", "chunk_size", "bins", "seed"),
)
"""``simulate`` flags that map one to one to ``SimulationConfig`` fields (unset: the config's default)."""


def _simulate(args: argparse.Namespace) -> int:
    from verl_variance.experiments.bandit import run, summary_lines

    overrides = {name: getattr(args, name) for name in _SIMULATE_FIELDS if getattr(args, name) is not None}
    try:
        report = run(args.output_dir, settings=tuple(args.settings), **overrides)
    except ValueError as error:  # a SimulationConfig field out of range: the message names it
        print(f"verl-variance simulate: {error}", file=sys.stderr)
        return 2
    print(f"verl-variance simulate: wrote {args.output_dir}/simulation.json and returns_<setting>.png")
    print("\n".join(summary_lines(report)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="verl-variance", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    doctor = commands.add_parser("doctor", help="load verl in a fresh process and report what the plugin registered")
    doctor.add_argument("--json", action="store_true", help="print the raw report as JSON")
    doctor.set_defaults(run=_doctor)

    ppo = commands.add_parser(
        "ppo",
        help="verl.trainer.main_ppo with the CPU preset when there is no GPU (all arguments are Hydra overrides)",
    )
    ppo.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto", help="auto: CPU preset iff no GPU")
    ppo.add_argument("overrides", nargs=argparse.REMAINDER, help="verl Hydra overrides, e.g. data.train_files=...")
    ppo.set_defaults(run=_ppo)

    tiny = commands.add_parser("tiny-model", help="build a tiny random HF model + tokenizer folder (no hub)")
    tiny.add_argument("output_dir")
    tiny.add_argument("--architecture", choices=["qwen2", "llama", "gpt2"], default="qwen2")
    tiny.add_argument("--num-labels", type=int, default=0, help="K>0: sequence classifier with K heads")
    tiny.set_defaults(run=_tiny_model)

    quick = commands.add_parser("quickstart", help="2 PPO steps of a tiny model through verl on CPU")
    quick.add_argument("--workdir", default="runs/quickstart")
    quick.add_argument("--steps", type=int, default=2)
    quick.add_argument("overrides", nargs=argparse.REMAINDER, help="extra verl Hydra overrides")
    quick.set_defaults(run=_quickstart)

    sim = commands.add_parser(
        "simulate", help="the paper's linearized bandit (Section 3, Theorem 3.3, Figures 3-5): numpy, seconds"
    )
    sim.add_argument("--output-dir", default="runs/simulate")
    sim.add_argument("--settings", nargs="+", choices=["high", "low"], default=["high", "low"])
    sim.add_argument("--variance-low", type=float, help="lo of sigma^2 ~ U(lo, hi) (default: the setting's)")
    sim.add_argument("--variance-high", type=float, help="hi of sigma^2 ~ U(lo, hi) (default: the setting's)")
    sim.add_argument("--dim", type=int, help="n, the dimension of r* (default 1000)")
    sim.add_argument("--eps", type=float, help="step budget epsilon (default 0.2)")
    sim.add_argument("--reward-mean", type=float, help="r*_i ~ N(reward_mean, reward_std^2) (default 0)")
    sim.add_argument("--reward-std", type=float, help="r*_i ~ N(reward_mean, reward_std^2) (default 0.3)")
    sim.add_argument("--reference-policy", choices=["uniform", "zero"], help="pi0 (default uniform)")
    sim.add_argument("--draws", type=int, help="Monte Carlo draws of R-hat (default 10000)")
    sim.add_argument("--chunk-size", type=int, help="draws per vectorised batch (default 1000)")
    sim.add_argument("--bins", type=int, help="histogram bins (default 60)")
    sim.add_argument("--seed", type=int, help="seed of r*, sigma^2 and the draws (default 0)")
    sim.set_defaults(run=_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
