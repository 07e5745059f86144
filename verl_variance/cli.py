"""``verl-variance``: one command, one subcommand per job."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys


def _doctor(args: argparse.Namespace) -> int:
    from verl_variance.integration.doctor import main

    return main(as_json=args.json)


def _ppo(args: argparse.Namespace) -> int:
    from verl_variance.cpu.launcher import run_ppo

    return run_ppo(args.overrides, device=args.device)


def _tiny_model(args: argparse.Namespace) -> int:
    from verl_variance.models.tiny import TinyModelConfig, build_tiny_model

    try:
        config = TinyModelConfig(architecture=args.architecture, num_labels=args.num_labels)
        print(build_tiny_model(args.output_dir, config))
    except (ValueError, OSError) as error:  # a bad field, a folder that cannot be written
        return _fail("tiny-model", error)
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from verl_variance.experiments.quickstart import run_quickstart

    return run_quickstart(args.workdir, steps=args.steps, extra_overrides=args.overrides)


def _extra_missing(command: str, extra: str, *modules: str) -> int | None:
    """Exit code 2 with one line naming the install command when a module of ``extra`` that ``command`` needs is
    missing (checked before the command's own imports, which would fail on it with a traceback)."""
    from verl_variance.extras import MissingExtra, require_extra

    try:
        require_extra(extra, command, *modules)
    except MissingExtra as error:
        print(f"verl-variance {command}: {error}", file=sys.stderr)
        return 2
    return None


def _demo(args: argparse.Namespace) -> int:
    if (missing := _extra_missing("demo", "demo")) is not None:
        return missing
    from verl_variance.experiments.assets import InsufficientDiskSpace, MissingDemoExtra
    from verl_variance.experiments.cluster import ClusterError
    from verl_variance.experiments.demo import SCALES, DemoError, run_demo
    from verl_variance.experiments.rvpo_study import SCALES as RVPO_SCALES
    from verl_variance.experiments.rvpo_study import run_rvpo_study
    from verl_variance.experiments.study import StudyError

    scales = RVPO_SCALES if args.study == "rvpo" else SCALES
    if args.scale not in scales:  # run_demo/run_rvpo_study are also called from Python
        print(f"verl-variance demo: unknown scale {args.scale!r} for --study {args.study}; valid: {sorted(scales)}",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.study == "rvpo":
        overrides = {"seeds": args.policies, "steps": args.steps}
    else:
        try:
            overrides = _scale_settings(SCALES[args.scale], args.set)
        except ValueError as error:
            print(f"verl-variance demo: {error}", file=sys.stderr)
            return 2
        overrides |= {key: value for key, value in (("policies_per_method", args.policies), ("steps", args.steps))
                      if value is not None}  # fmt: skip
    overrides = {key: value for key, value in overrides.items() if value is not None}
    extra = [flag for flag, value in (("--heads", args.heads), ("--parallel", args.parallel),
                                      ("--ray-address", args.ray_address), ("--set", args.set or None))
             if value is not None]  # fmt: skip
    if args.study == "rvpo" and extra:
        print(f"verl-variance demo: {', '.join(extra)} are for --study variance_kl", file=sys.stderr)
        return 2
    if args.study == "rvpo" and (args.device == "gpu" or args.precision):
        print("verl-variance demo: --study rvpo runs on the CPU preset (fp32); leave --device at auto or cpu and "
              "--precision unset", file=sys.stderr)  # fmt: skip
        return 2
    if args.device != "auto" and args.study != "rvpo":
        overrides["device"] = args.device
    if args.precision:
        overrides["precision"] = args.precision
    if args.parallel is not None:
        overrides["parallel_runs"] = args.parallel
    if args.heads is not None:
        overrides["heads"] = args.heads
    if args.first_seed is not None:
        if args.study == "rvpo":
            print("verl-variance demo: --first-seed is for --study variance_kl", file=sys.stderr)
            return 2
        overrides["first_seed"] = args.first_seed
    workdir = args.workdir or ("runs/rvpo" if args.study == "rvpo" else "runs/demo")
    try:
        if args.study == "rvpo":
            run_rvpo_study(args.scale, workdir, args.assets_dir, **overrides)
        else:
            address = os.environ.get("RAY_ADDRESS") if args.ray_address is None else args.ray_address
            run_demo(args.scale, workdir, args.assets_dir, address, args.run_cpus, **overrides)
    except (MissingDemoExtra, InsufficientDiskSpace, DemoError, StudyError, ClusterError) as error:
        print(f"verl-variance demo: {error}", file=sys.stderr)
        return 2
    report = "rvpo_report.json, rvpo_report.md" if args.study == "rvpo" else "report.json, report.md"
    print(f"verl-variance demo: report in {workdir}/{report} and fig*.png")
    return 0


def _scale_settings(scale, settings: list[str]) -> dict:
    """``demo --set KEY=VALUE ...``: the scale's fields those settings change, typed and checked through the one
    config mechanism (``core.config.from_mapping``: an unknown field fails with the valid ones)."""
    from omegaconf import OmegaConf

    from verl_variance.core.config import from_mapping

    if bad := [item for item in settings if "=" not in item]:
        raise ValueError(f"--set takes KEY=VALUE pairs (e.g. --set beta=0.1 actor_lr=4e-4), got {bad[0]!r}")
    changed = from_mapping(type(scale), dataclasses.asdict(scale), OmegaConf.from_dotlist(settings), where="--set")
    return {name: value for name, value in vars(changed).items() if value != getattr(scale, name)}


def _integer_at_least(text: str, minimum: int) -> int:
    value = int(text)
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type of counts (steps, policies, batch sizes): an integer >= 1, else argparse's one-line error."""
    return _integer_at_least(text, 1)


def positive_float(text: str) -> float:
    """argparse type of amounts (CPUs a run reserves): a finite number > 0, else argparse's one-line error."""
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number > 0")
    return value


def non_negative_float(text: str) -> float:
    """argparse type of amounts that may be 0 (GPUs a run reserves): a finite number >= 0."""
    value = _number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number >= 0")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ray-address`` and ``--run-cpus``: the policy runs as Ray Jobs on a cluster (``experiments/cluster.py``)."""
    parser.add_argument("--ray-address",
                        help="a Ray cluster's dashboard address (http://<head>:8265; default $RAY_ADDRESS): each "
                             "policy run becomes a Ray Job on one of its nodes; unset: subprocesses here")  # fmt: skip
    parser.add_argument("--run-cpus", type=positive_float, default=1.0,
                        help="on a cluster, CPUs one run reserves on its node (default 1)")  # fmt: skip


def non_negative_int(text: str) -> int:
    """argparse type of seeds: an integer >= 0, else argparse's one-line error."""
    return _integer_at_least(text, 0)


def _config_parser(command: str, flags: type, description: str) -> argparse.ArgumentParser:
    """A command's own parser, its flags made from a config dataclass's fields (``core.config.flag_fields``) by
    transformers' ``HfArgumentParser`` (help: each field's metadata help and default; ``--a_b`` and ``--a-b``)."""
    from transformers import HfArgumentParser

    return HfArgumentParser(flags, prog=f"verl-variance {command}", description=description, allow_abbrev=False,
                            formatter_class=argparse.HelpFormatter)  # the defaults are in the fields' help  # fmt: skip


def _simulate_parser() -> argparse.ArgumentParser:
    from verl_variance.core.config import flag_fields
    from verl_variance.experiments.bandit import SimulationConfig

    parser = _config_parser("simulate", flag_fields(SimulationConfig, exclude=("setting",)), _SIMULATE_HELP)
    parser.add_argument("--output-dir", default="runs/simulate")
    parser.add_argument("--settings", nargs="+", choices=["high", "low"], default=["high", "low"],
                        help="the variance settings to run: high (Figure 3), low (Figure 4)")  # fmt: skip
    return parser


def _set_fields(args: argparse.Namespace, flags: type, shortcuts: dict[str, tuple[str, ...]] | None = None) -> dict:
    """The config keys the given flags set (a shortcut's keys, else the flag's name) -> their values."""
    given = {item.name: getattr(args, item.name) for item in dataclasses.fields(flags)}
    return {key: value for name, value in given.items() if value is not None
            for key in (shortcuts or {}).get(name, (name,))}  # fmt: skip


def _simulate(args: argparse.Namespace) -> int:
    if (missing := _extra_missing("simulate", "demo", "matplotlib")) is not None:
        return missing
    from verl_variance.core.config import flag_fields
    from verl_variance.experiments.bandit import SimulationConfig, run, summary_lines

    overrides = _set_fields(args, flag_fields(SimulationConfig, exclude=("setting",)))
    try:
        report = run(args.output_dir, settings=tuple(args.settings), **overrides)
    except ValueError as error:  # a SimulationConfig field out of range: the message names it
        print(f"verl-variance simulate: {error}", file=sys.stderr)
        return 2
    print(f"verl-variance simulate: wrote {args.output_dir}/simulation.json and returns_<setting>.png")
    print("\n".join(summary_lines(report)))
    return 0


def _fail(command: str, error: Exception) -> int:
    """Bad input (a file, a field, a checkpoint): one message on stderr, exit code 2."""
    print(f"verl-variance {command}: {error}", file=sys.stderr)
    return 2


def _train_rm(args: argparse.Namespace) -> int:
    import logging

    from verl_variance.reward_model.train import build_config, check_inputs, run_train_rm

    logging.basicConfig(level=logging.INFO, format="verl-variance train-rm: %(message)s")
    if args.keys:
        from verl_variance.core.config import config_keys, spelled
        from verl_variance.reward_model.train import TrainRMConfig

        rows = [(f"{key}={spelled(default)}", text) for key, default, text in config_keys(TrainRMConfig)]
        width = max(len(setting) for setting, _ in rows)
        print("\n".join(f"  {setting:<{width}}  {text}" for setting, text in rows))
        return 0
    if not args.dry_run and (missing := _extra_missing("train-rm", "train-rm")) is not None:
        return missing
    from verl_variance.reward_model.train import SHORTCUTS

    flags = _set_fields(args, _train_rm_flags(), SHORTCUTS)
    try:
        config = build_config(args.config, flags, args.overrides)
        if args.check or args.dry_run:
            if args.check:
                check_inputs(config)
            print(json.dumps(dataclasses.asdict(config), indent=2))
            return 0
        summary = run_train_rm(config)
    except (ValueError, FileNotFoundError) as error:
        return _fail("train-rm", error)
    if summary is not None:  # the main process
        print(json.dumps(summary, indent=2))
    return 0


def _train_rm_flags() -> type:
    from verl_variance.core.config import flag_fields
    from verl_variance.reward_model.train import SHORTCUTS, TrainRMConfig

    return flag_fields(TrainRMConfig, shortcuts=SHORTCUTS)


def _train_rm_parser() -> argparse.ArgumentParser:
    parser = _config_parser("train-rm", _train_rm_flags(), _TRAIN_RM_HELP)
    parser.add_argument("--config", help="YAML/JSON file of TrainRMConfig fields (stage1: {...}, stage2: {...})")
    parser.add_argument(
        "--check", action="store_true", help="check the inputs (files, tokenizer vs config), print the config, exit"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit (reads nothing)")
    parser.add_argument("--keys", action="store_true", help="list every config key (--set, --config) with its default")
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="dotted overrides, applied last (--keys lists them), e.g. --set stage1.learning_rate=1e-3",
    )
    return parser


def _score(args: argparse.Namespace) -> int:
    from verl_variance.reward_model.analysis import score_file

    try:
        path = score_file(args.model, args.input, args.output, args.batch_size, args.max_length)
    except (ValueError, FileNotFoundError) as error:
        return _fail("score", error)
    print(f"verl-variance score: wrote {path}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    if (missing := _extra_missing("analyze", "train-rm", "matplotlib")) is not None:
        return missing
    from verl_variance.reward_model.analysis import AVERAGE, run_analysis

    try:
        report = run_analysis(
            args.ensemble, args.data, args.output_dir, args.single_model, args.batch_size, args.max_length
        )
    except (ValueError, FileNotFoundError) as error:
        return _fail("analyze", error)
    print(f"verl-variance analyze: wrote {args.output_dir}/rewardbench.json, rewardbench.md, *.png")
    for name in ("ensemble mean", "single model"):
        if name in report["models"]:
            sections = report["models"][name]["sections"]
            print(f"  {name}: " + ", ".join(f"{key} {value:.1f}" for key, value in sections.items()))
    heads = [row["sections"].get(AVERAGE) for key, row in report["models"].items() if key.startswith("head_")]
    if None not in heads:
        print(f"  heads' {AVERAGE}: " + " ".join(f"{value:.1f}" for value in heads))
    return 0


def _hacking_monitor(args: argparse.Namespace) -> int:
    if args.judge and (missing := _extra_missing("hacking-monitor", "demo", "sklearn", "matplotlib")) is not None:
        return missing
    from pathlib import Path

    from omegaconf import OmegaConf

    from verl_variance.core.config import HackingMonitorConfig, from_mapping
    from verl_variance.experiments import hacking

    output = Path(args.output_dir)
    try:
        if bad := [item for item in args.set if "=" not in item]:
            raise ValueError(f"--set takes KEY=VALUE pairs of the hacking_monitor group, got {bad[0]!r}")
        settings = from_mapping(HackingMonitorConfig, {"enable": True}, OmegaConf.from_dotlist(args.set),
                                where="hacking_monitor")  # fmt: skip
        runs = [hacking.read_run(path) for path in args.runs]
        output.mkdir(parents=True, exist_ok=True)
        if args.judge:
            from verl_variance.experiments.judge import make_judge

            judge = make_judge(args.judge, args.assets_dir)
            report = hacking.validate(runs, settings, judge, args.kl_threshold, args.proxy_threshold)
            (output / "hacking_validation.json").write_text(json.dumps(report, indent=1))
            (output / "hacking_validation.md").write_text(hacking.markdown(report))
            hacking.plot(report, output / "fig_hacking_monitor.png")
            print(hacking.markdown(report))
            print(f"verl-variance hacking-monitor: wrote {output}/hacking_validation.json, hacking_validation.md and "
                  "fig_hacking_monitor.png")  # fmt: skip
            return 0
    except (ValueError, OSError) as error:  # a bad run, setting, or an output folder that cannot be written
        return _fail("hacking-monitor", error)
    scans = [hacking.scan(run, settings) for run in runs]
    (output / "hacking_monitor.json").write_text(json.dumps({"settings": vars(settings), "runs": scans}, indent=1))
    for scanned in scans:
        alarms = ", ".join(f"{a['signal']} at step {a['step']} ({a['value']:.4g} >= {a['threshold']:.4g})"
                           for a in scanned["alarms"]) or "no alarm"  # fmt: skip
        print(f"{scanned['run']}: {len(scanned['steps'])} steps; {alarms}")
    print(f"verl-variance hacking-monitor: wrote {output}/hacking_monitor.json")
    return 0


def _recipe_check(args: argparse.Namespace) -> int:
    from verl_variance.experiments.recipes import RecipeError, preflight

    models = dict(item.split("=", 1) for item in args.model)
    numbers = dict(item.split("=", 1) for item in args.number)
    try:
        attention, note = preflight(args.device, args.backend, args.data_dir, models, args.reward_model, numbers,
                                    (args.infer_backend, args.rm_server), args.attention)  # fmt: skip
    except RecipeError as error:
        return _fail("recipe-check", error)
    if note:
        print(f"verl-variance: {note}", file=sys.stderr)
    print(attention)  # the recipe reads the attention implementation from stdout
    return 0


def _study(args: argparse.Namespace) -> int:
    if (missing := _extra_missing("study", "demo", "scipy", "matplotlib")) is not None:
        return missing
    from verl_variance.experiments import recipes
    from verl_variance.experiments.assets import MissingDemoExtra
    from verl_variance.experiments.cluster import ClusterError
    from verl_variance.experiments.study import StudyError

    try:
        if args.study_command == "run":
            betas = {"vanilla": args.vanilla_kl_coef, "variance_aware": args.aware_kl_coef}
            overrides = args.overrides[1:] if args.overrides[:1] == ["--"] else args.overrides
            address = os.environ.get("RAY_ADDRESS") if args.ray_address is None else args.ray_address
            resources = None
            if address:
                device, nnodes = os.environ.get("DEVICE", "gpu"), int(os.environ.get("NNODES", "1"))
                resources = recipes.run_resources(device, args.run_gpus, args.run_cpus, nnodes)
            recipes.run_recipe_study(args.recipe_dir, args.study_dir, args.heads, args.seeds, betas, args.steps,
                                     calibrate=args.calibrate, overrides=overrides, parallel=args.parallel,
                                     ray_address=address, resources=resources)  # fmt: skip
            print(f"verl-variance study: trained every policy in {args.study_dir}; judge them with evaluate.sh")
        else:
            from verl_variance.experiments.judge import make_judge

            judge = make_judge(args.judge, args.assets_dir, args.judge_format, args.batch_size, args.max_length)
            recipes.evaluate_recipe_study(args.study_dir, judge, args.kl_tolerance)
            print(f"verl-variance study: report in {args.study_dir}/report.json, report.md and fig*.png")
    except (StudyError, ClusterError, MissingDemoExtra, ValueError, FileNotFoundError) as error:
        return _fail("study", error)
    return 0


_SIMULATE_HELP = "the paper's linearized bandit (Section 3, Theorem 3.3, Figures 3-5): numpy, seconds"
_TRAIN_RM_HELP = ("ensemble reward model (Section 4, Appendix 7): stage 1 BT fine-tune, stage 2 K heads; "
                  "several GPUs: accelerate launch -m verl_variance.cli train-rm ...")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    from verl_variance.experiments.judge import PAPER_JUDGE

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
    quick.add_argument("--steps", type=positive_int, default=2)
    quick.add_argument("overrides", nargs=argparse.REMAINDER, help="extra verl Hydra overrides")
    quick.set_defaults(run=_quickstart)

    demo = commands.add_parser(
        "demo", help="the paper's IMDB study offline: ensemble RM, vanilla vs variance-aware PPO through verl, report"
    )
    demo.add_argument("--scale", default="default",
                      help="quick (CI, tiny models), default (SmolLM2, CPU, ~21 min), long (SmolLM2, CPU, ~2 h: the "
                           "study that can answer the question), paper (GPU)")  # fmt: skip
    demo.add_argument(
        "--study",
        choices=["variance_kl", "rvpo"],
        default="variance_kl",
        help="variance_kl: vanilla vs variance-aware PPO (the paper); rvpo: GDPO vs RVPO, two objectives",
    )
    demo.add_argument(
        "--workdir", default=None, help="outputs (default runs/demo, runs/rvpo); re-running resumes from what is there"
    )
    demo.add_argument("--assets-dir", default=None, help="asset cache (default $VERL_VARIANCE_ASSETS or ~/.cache)")
    demo.add_argument("--policies", type=positive_int, help="policies (rvpo: seeds) per method (default: the scale's)")
    demo.add_argument("--steps", type=positive_int, help="PPO steps per policy (default: the scale's)")
    demo.add_argument("--first-seed", type=non_negative_int,
                      help="policy seeds start here (default 0): the same study with other samples")  # fmt: skip
    demo.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto", help="auto: the scale's")
    demo.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                      help="CPU compute of actor, reference and sampler (default: the scale's; default scale: auto, "
                           "bf16 on a CPU with native bf16 (AMX or AVX512-BF16), else fp32)")  # fmt: skip
    demo.add_argument("--parallel", type=positive_int, help="policy runs at once (default: the scale's)")
    demo.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                      help="any other field of the scale, e.g. --set beta=0.1 actor_lr=4e-4 rm_stage2.num_epochs=2 "
                           "(the fields: docs/demo.md); --policies, --steps and the flags above win")  # fmt: skip
    demo.add_argument("--heads", choices=["init", "bootstrap"],
                      help="how the reward heads differ: init (initialisation only, the paper; default) or bootstrap "
                           "(each also trains on its own resample of the preference pairs)")  # fmt: skip
    _cluster_arguments(demo)
    demo.set_defaults(run=_demo)

    for name, help_text, run, own_parser in (("simulate", _SIMULATE_HELP, _simulate, _simulate_parser),
                                             ("train-rm", _TRAIN_RM_HELP, _train_rm, _train_rm_parser)):
        command = commands.add_parser(name, help=help_text, add_help=False)  # its flags: its own parser, built on use
        command.set_defaults(run=run, own_parser=own_parser)

    score = commands.add_parser(
        "score", help="per-head rewards, mean, variance and std of every row of a JSONL/parquet file"
    )
    score.add_argument("model", help="ensemble folder (train-rm's OUTPUT_DIR/ensemble)")
    score.add_argument("input", help=".jsonl/.parquet of pairs (prompt/chosen/rejected) or prompt/response rows")
    score.add_argument("output", help=".jsonl or .parquet: the input rows with their scores")
    score.add_argument("--batch-size", type=positive_int, default=32)
    score.add_argument("--max-length", type=positive_int, default=1024)
    score.set_defaults(run=_score)

    analyze = commands.add_parser(
        "analyze", help="RewardBench table (Table 1), variance histograms (Figure 6), heads vs single model (Figure 9)"
    )
    analyze.add_argument("ensemble", help="ensemble folder (train-rm's OUTPUT_DIR/ensemble)")
    analyze.add_argument("data", nargs="+", help="RewardBench-layout .jsonl/.parquet (prompt/chosen/rejected/subset)")
    analyze.add_argument("--output-dir", default="runs/analysis")
    analyze.add_argument("--single-model", help="the single full model, e.g. OUTPUT_DIR/stage1 (Figure 9)")
    analyze.add_argument("--batch-size", type=positive_int, default=32)
    analyze.add_argument("--max-length", type=positive_int, default=1024)
    analyze.set_defaults(run=_analyze)

    monitor = commands.add_parser(
        "hacking-monitor",
        help="replay finished runs' metrics.jsonl through the reward-hacking monitor (any thresholds); with --judge, "
        "how well its alarms predict a falling judge reward, against KL and proxy thresholds",
    )
    monitor.add_argument("runs", nargs="+", help="metrics.jsonl files (verl's file logger) or the folders holding them")
    monitor.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                         help="hacking_monitor settings, e.g. --set disagreement_ratio=1.3 window=3 (docs/"
                              "hacking_monitor.md)")  # fmt: skip
    monitor.add_argument("--judge", help="a gold judge of each step's samples (the runs' rollouts/<step>.jsonl): "
                         "tfidf or a Hugging Face sequence classifier")  # fmt: skip
    monitor.add_argument("--assets-dir", default=None, help="asset cache of the tfidf judge")
    monitor.add_argument("--kl-threshold", type=float, help="the KL baseline's threshold (default: the runs' median "
                         "largest KL)")  # fmt: skip
    monitor.add_argument("--proxy-threshold", type=float, help="the proxy baseline's threshold (default: the runs' "
                         "median largest proxy reward)")  # fmt: skip
    monitor.add_argument("--output-dir", default="runs/hacking_monitor")
    monitor.set_defaults(run=_hacking_monitor)

    check = commands.add_parser(
        "recipe-check", help="check a recipe's inputs before Ray starts (recipes/imdb_gpt2/common.sh runs it)"
    )
    check.add_argument("--device", required=True, help="gpu or cpu")
    check.add_argument("--backend", default="fsdp", help="fsdp or megatron")
    check.add_argument("--data-dir", help="DATA_DIR: train.parquet and test.parquet (unset: a dry run's checks)")
    check.add_argument("--model", action="append", default=[], metavar="VARIABLE=PATH", help="a model path to check")
    check.add_argument("--reward-model", help="REWARD_MODEL_PATH: the K-head ensemble folder")
    check.add_argument("--number", action="append", default=[], metavar="VARIABLE=VALUE",
                       help="a numeric variable to check: HEAD, TRAIN_BATCH_SIZE, ... (RECIPE_NUMBERS)")  # fmt: skip
    check.add_argument("--infer-backend", default="vllm", help="INFER_BACKEND: vllm or hf")
    check.add_argument("--rm-server", default="vllm", help="RM_SERVER: vllm, hf or none")
    check.add_argument("--attention", default="auto",
                       help="ATTENTION: auto, flash_attention_2, sdpa or eager; prints the one to use")  # fmt: skip
    check.set_defaults(run=_recipe_check)

    study = commands.add_parser("study", help="the IMDB study through the recipes (run_study.sh, evaluate.sh)")
    study_commands = study.add_subparsers(dest="study_command", required=True)
    study_run = study_commands.add_parser(
        "run", help="train HEADS x SEEDS policies of both methods with the recipe scripts, resumable, beta-calibrated"
    )
    study_run.add_argument("--recipe-dir", required=True, help="the folder of run_gpt2_<method>_fsdp.sh")
    study_run.add_argument("--study-dir", required=True, help="policies/, calibration.json, later the report")
    study_run.add_argument("--heads", type=int, nargs="+", required=True, help="reward heads (paper: 0..9)")
    study_run.add_argument("--seeds", type=int, nargs="+", required=True, help="seeds (paper: 0..3)")
    study_run.add_argument("--steps", type=positive_int, required=True, help="TRAIN_STEPS of every run")
    study_run.add_argument("--vanilla-kl-coef", type=float, default=0.2, help="beta of vanilla PPO (Table 6: 0.2)")
    study_run.add_argument("--aware-kl-coef", type=float, default=0.05, help="initial variance-aware beta (Table 7)")
    study_run.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="policy runs at once (CPU: about one core each; GPU: 1 unless each run has its own)",
    )
    _cluster_arguments(study_run)
    study_run.add_argument("--run-gpus", type=non_negative_float,
                           help="on a cluster, GPUs a run reserves (default GPUS_PER_NODE; DEVICE=cpu: 0)")  # fmt: skip
    study_run.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                           help="keep --aware-kl-coef instead of matching the vanilla pilot's final KL")  # fmt: skip
    study_run.add_argument("overrides", nargs=argparse.REMAINDER, help="-- then verl overrides for every run")
    evaluate = study_commands.add_parser("evaluate", help="judge every finished policy, write the report")
    evaluate.add_argument("--study-dir", required=True)
    evaluate.add_argument(
        "--judge", default=PAPER_JUDGE, help="a Hugging Face sequence classifier (folder or hub name), or tfidf"
    )
    evaluate.add_argument("--judge-format", default="chat", help="chat (the judge's chat template) or text")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--max-length", type=int, default=1024)
    evaluate.add_argument("--assets-dir", default=None, help="asset cache of the tfidf judge")
    evaluate.add_argument("--kl-tolerance", type=float, default=1.25, help="max final-KL ratio called matched")
    study.set_defaults(run=_study)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "own_parser", None) is not None:  # a command whose flags come from a config dataclass
        args = args.own_parser().parse_args(rest, namespace=args)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
