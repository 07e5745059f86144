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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
