"""``verl-variance train-rm``: the two-stage ensemble reward model end to end (Banerjee & Gopalan, Section 4, App. 7).

    pairs ─► stage 1: BT fine-tune of one reward model, every weight (Table 2)      ─► output_dir/stage1/
          ─► stage 2: K heads on the frozen stage-1 backbone, Σ_k BT(θ_k) (Table 4) ─► output_dir/ensemble/
          ─► output_dir/history.json, loss_curves.png (Figure 8), eval/ (eval_files: Table 1, Figs 6, 9)

Stage 1 runs on TRL's ``RewardTrainer`` (``stage1``), so one command serves one device or several (a 2B backbone):

    verl-variance train-rm --config rm.yaml                                                         # one process
    accelerate launch --num_processes 4 -m verl_variance.cli train-rm --config rm.yaml                      # DDP
    accelerate launch --config_file recipes/gemma_ensemble_rm/config/fsdp2.yaml -m verl_variance.cli train-rm ...
    torchrun --nproc_per_node 2 -m verl_variance.cli train-rm --config rm.yaml              # also on CPUs (gloo)

Stage 2 (cached features, 20,480 parameters for K = 10) and the evaluation run on the main process; the
other processes stop after stage 1. ``stage`` (``--stage``) runs one of them: 1 (on many GPUs), then 2 (on one).

Resuming: ``output_dir/stage1`` made with the same backbone, data, ``max_length`` and stage-1 config is
reused (a different one is an error: it took the paper 51 h, so it is never replaced silently); an
interrupted stage 1 continues from its last checkpoint in ``output_dir/checkpoints/stage1`` (every
``stage1.save_steps`` steps; removed once the stage-1 model is saved); an ``output_dir/ensemble`` whose
record also matches the stage-2 config is kept and nothing is trained, one made with another stage-2
config is retrained. ``overwrite`` retrains both.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from verl_variance.core.config import from_mapping
from verl_variance.reward_model.analysis import ALL, run_analysis
from verl_variance.reward_model.checkpoint import (
    ENSEMBLE_FILE,
    check_folder,
    check_tokenizer_matches,
    data_hash,
    from_pretrained,
    load_backbone,
    load_ensemble,
    read_record,
    save_ensemble,
    write_record,
)
from verl_variance.reward_model.data import PreferencePair, encode_pairs, load_preferences
from verl_variance.reward_model.heads import HeadTrainingConfig, train_stage2
from verl_variance.reward_model.optimisation import TrainingHistory, derived_seed
from verl_variance.reward_model.stage1 import Stage1Config, process_state, train_stage1

if TYPE_CHECKING:
    from accelerate import PartialState

logger = logging.getLogger(__name__)

STAGE1_DIR, ENSEMBLE_DIR, CHECKPOINTS_DIR = "stage1", "ensemble", "checkpoints/stage1"
HISTORY_FILE, CURVES_FILE, EVAL_DIR = "history.json", "loss_curves.png", "eval"
CHECKPOINT_RECORD = "record.json"
NOT_RESULTS = (
    *("show_progress", "micro_batch_size_per_device", "gradient_checkpointing", "save_steps", "save_total_limit"),
    *("logger", "project_name", "experiment_name"),
)
"""Config fields that do not change what is trained (up to float rounding); ignored when a record is compared."""
PREPARE_DATA = "recipes/gemma_ensemble_rm/prepare_data.py"
_RUN_STAGE1 = "run stage 1 first (recipes/gemma_ensemble_rm/run_gemma2b_stage1_fsdp.sh, or train-rm --stage 1)"
BACKBONE_INIT = 3
"""Derived-seed purpose of the stage-1 score head's initialisation (heads.ORDER/BOOTSTRAP/INIT are 0-2)."""


@dataclass
class TrainRMConfig:
    """The ensemble reward model pipeline (defaults: Banerjee & Gopalan, Section 4, Appendix 7, Tables 2 and 4).

    K, the bootstrap and the seeds are ``stage2.num_heads``, ``stage2.bootstrap``, ``stage1.seed`` and
    ``stage2.seed`` (``--num-heads``, ``--bootstrap`` and ``--seed`` on the command line).
    """

    model_name_or_path: str = field(
        default="google/gemma-2b-it",
        metadata={"help": "Backbone: a local folder or a hub name (paper: Gemma-2B-it).", "aliases": ["--model"]},
    )
    train_files: list[str] = field(
        default_factory=list, metadata={"help": "Preference pairs, .jsonl/.parquet (paper: preference_dataset_mix2)."}
    )
    eval_files: list[str] = field(
        default_factory=list, metadata={"help": "Held-out pairs: accuracy of the stage-1 model, each head, the mean."}
    )
    output_dir: str = field(default="runs/reward_model", metadata={"help": "Checkpoints, history and plots go here."})
    max_length: int = field(default=1024, metadata={"help": "Tokens per sequence; longer ones are cut (warned)."})
    skip_stage1: bool = field(
        default=False, metadata={"help": "Train the heads directly on model_name_or_path (already a reward model)."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Retrain both stages even if output_dir has them."})
    stage: int | None = field(
        default=None, metadata={"help": "1: stage 1 only; 2: stage 2 on output_dir/stage1; null: both."}
    )
    stage1: Stage1Config = field(default_factory=Stage1Config, metadata={"help": "Stage 1 (Table 2)."})
    stage2: HeadTrainingConfig = field(default_factory=HeadTrainingConfig, metadata={"help": "Stage 2 (Table 4)."})

    def __post_init__(self) -> None:
        if isinstance(self.train_files, str):
            self.train_files = [self.train_files]
        if isinstance(self.eval_files, str):
            self.eval_files = [self.eval_files]
        if not self.train_files:
            raise ValueError(
                "TrainRMConfig.train_files is empty: pass --train-files pairs.jsonl (or train_files: [...] in --config)"
            )
        if self.max_length < 1:
            raise ValueError(f"TrainRMConfig.max_length must be >= 1, got {self.max_length}")
        if self.stage not in (None, 1, 2):
            raise ValueError(f"TrainRMConfig.stage={self.stage!r}: use 1, 2 or null (both)")
        if self.stage == 1 and self.skip_stage1:
            raise ValueError("TrainRMConfig.stage=1 with skip_stage1: there is nothing to train")
        if self.stage2.num_heads < 2:
            raise ValueError(
                f"stage2.num_heads={self.stage2.num_heads}: an ensemble needs K >= 2 heads for a variance (paper: 10)"
            )

    @property
    def seeds(self) -> list[int]:
        """[stage-1 seed, stage-2 seed], as recorded in the checkpoints."""
        return [self.stage1.seed, self.stage2.seed]

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any] | None) -> TrainRMConfig:
        """Build from nested mappings (``stage1: {...}``, ``stage2: {...}``), e.g. a YAML file (``from_mapping``)."""
        return from_mapping(cls, mapping, where="the train-rm config")


SHORTCUTS = {"num_heads": ("stage2.num_heads",), "bootstrap": ("stage2.bootstrap",),
             "seed": ("stage1.seed", "stage2.seed")}  # fmt: skip
"""``train-rm`` flags of nested keys (flag -> the keys it sets); ``--set`` reaches every key."""


def build_config(
    file: str | os.PathLike | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> TrainRMConfig:
    """The config of ``verl-variance train-rm``: a YAML/JSON file, then flags, then dotted ``key=value`` overrides,
    merged by OmegaConf onto ``TrainRMConfig`` (``from_mapping``).

    Args:
        file: ``.yaml``/``.yml``/``.json`` holding ``TrainRMConfig`` fields.
        flags: top-level or dotted keys (``{"stage2.num_heads": 5}``); None values are skipped.
        overrides: ``["stage1.learning_rate=1e-3", "train_files=[a.jsonl,b.jsonl]"]``, OmegaConf's dot-list syntax.
    """
    from omegaconf import OmegaConf

    layers: list[Any] = []
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        if path.suffix not in (".yaml", ".yml", ".json"):
            raise ValueError(f"config file {path}: use a .yaml, .yml or .json file")
        loaded = OmegaConf.load(path)  # YAML, of which JSON is a subset
        if not OmegaConf.is_dict(loaded):
            raise ValueError(f"config file {path} must hold a mapping of TrainRMConfig fields")
        layers.append(loaded)
    dotted = OmegaConf.create()
    for key, value in (flags or {}).items():
        if value is not None:
            OmegaConf.update(dotted, key, value)
    layers.append(dotted)
    for override in overrides:
        key, sep, _ = override.partition("=")
        if not sep or not key:
            raise ValueError(f"override {override!r} is not key=value (e.g. stage1.learning_rate=1e-3)")
    layers.append(OmegaConf.from_dotlist(list(overrides)))
    return from_mapping(TrainRMConfig, *layers, where="the train-rm config")


def check_inputs(config: TrainRMConfig) -> None:
    """What ``run_train_rm`` would refuse, checked without loading weights or starting a launch (``train-rm --check``,
    run by the recipes before ``accelerate launch``/``torchrun``): the data files, the backbone's tokenizer against
    its config (pad token, vocabulary), and for ``stage=2`` the stage-1 model."""
    from transformers import AutoConfig, AutoTokenizer

    for file in [*config.train_files, *config.eval_files]:
        if not Path(file).is_file():
            raise FileNotFoundError(_missing_data(file))
    stage1_dir = Path(config.output_dir) / STAGE1_DIR
    if config.stage == 2 and not config.skip_stage1:
        if not (stage1_dir / ENSEMBLE_FILE).is_file():
            raise FileNotFoundError(f"stage=2 needs the stage-1 model, and {stage1_dir} has none: {_RUN_STAGE1}")
        return
    name = config.model_name_or_path
    check_folder(name)
    tokenizer = from_pretrained(AutoTokenizer.from_pretrained, name)
    model_config = from_pretrained(AutoConfig.from_pretrained, name).get_text_config()
    check_tokenizer_matches(tokenizer, model_config.vocab_size, model_config.pad_token_id, f"backbone {name}")


def _missing_data(file: str | os.PathLike) -> str:
    return (
        f"preference file {file} does not exist: prepare the paper's data with `python3 {PREPARE_DATA} "
        "--local_save_dir <dir>` (preference_dataset_mix2 -> train.parquet, RewardBench -> rewardbench.parquet)"
    )


def load_pairs(files: Sequence[str | os.PathLike]) -> list[PreferencePair]:
    """All pairs of ``files`` (.jsonl/.parquet), in order."""
    pairs = []
    for file in files:
        if not Path(file).is_file():
            raise FileNotFoundError(_missing_data(file))
        pairs += load_preferences(file)
    return pairs


def _settings(config: Any) -> dict[str, Any]:
    return {key: value for key, value in asdict(config).items() if key not in NOT_RESULTS}


def expected_record(config: TrainRMConfig, digest: str, stage: int) -> dict[str, Any]:
    """What a checkpoint of ``stage`` made by ``config`` on data ``digest`` records in its ``ensemble.json``."""
    record = {
        "stage": stage,
        "data_sha256": digest,
        "model_name_or_path": config.model_name_or_path,
        "max_length": config.max_length,
        "stage1": None if config.skip_stage1 else _settings(config.stage1),
    }
    if stage == 2:
        record.update(stage2=_settings(config.stage2), seeds=config.seeds)
    else:
        record.update(seeds=config.seeds[:1])
    return record


def record_differences(record: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """``key: recorded -> wanted`` for every expected key the record disagrees on (nested configs per field)."""
    out = []
    for key, want in expected.items():
        have = record.get(key)
        if isinstance(want, Mapping) and isinstance(have, Mapping):
            out += [f"{key}.{name}: {have.get(name)!r} -> {v!r}" for name, v in want.items() if have.get(name) != v]
        elif have != want:
            out.append(f"{key}: {have!r} -> {want!r}")
    return out


def _checkpoint_error(path: Path, error: Exception, fix: str) -> ValueError:
    return ValueError(f"{error}\n  checkpoint: {path}\n  fix: {fix}")


def _existing_record(path: Path, fix: str) -> dict[str, Any] | None:
    """The ``ensemble.json`` record of checkpoint folder ``path``, None when there is no folder."""
    if not path.exists():
        return None
    try:
        return read_record(path)
    except ValueError as error:
        raise _checkpoint_error(path, error, fix) from None


def _load_checkpoint(path: Path, fix: str):
    try:
        return load_ensemble(path)
    except ValueError as error:
        raise _checkpoint_error(path, error, fix) from None


def history_dict(history: TrainingHistory, config: Stage1Config | HeadTrainingConfig) -> dict[str, Any]:
    """JSON form of a loss history: ``loss`` (steps, K) per step and head, and what stopped it."""
    return {
        "loss": history.loss.tolist(),
        "steps": history.steps,
        "stopped_early": history.stopped_early,
        "target_loss": config.target_loss,
        "loss_window": config.loss_window,
        "final_loss": running_loss(history.loss, config.loss_window)[-1].tolist(),
    }


def running_loss(loss: torch.Tensor, window: int) -> torch.Tensor:
    """Mean of the last ``window`` steps at every step (the early-stopping quantity).

    Args:
        loss: (steps, K) per-step BT loss of each head.

    Returns:
        (steps, K); row t averages rows max(0, t − window + 1) .. t.
    """
    cumulative = torch.cat([torch.zeros(1, loss.shape[1], dtype=torch.float64), loss.double().cumsum(dim=0)])
    ends = torch.arange(1, loss.shape[0] + 1)
    starts = (ends - window).clamp(min=0)
    return ((cumulative[ends] - cumulative[starts]) / (ends - starts)[:, None]).to(loss.dtype)


def plot_loss_curves(history: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Figure 8: (a) the stage-1 BT loss and (b) the K stage-2 head losses vs step, each with its target line.

    Args:
        history: ``history.json`` content, ``{"stage1": history_dict | None, "stage2": history_dict}``.
    """
    from matplotlib.figure import Figure  # Agg canvas via Figure.savefig, no pyplot state

    figure = Figure(figsize=(11, 4), layout="constrained")
    panels = figure.subplots(1, 2)
    titles = {"stage1": "(a) stage 1: one reward model", "stage2": "(b) stage 2: K heads, frozen backbone"}
    for axis, (stage, title) in zip(panels, titles.items(), strict=True):
        entry = history.get(stage)
        axis.set(title=title, xlabel="step", ylabel="Bradley-Terry loss")
        if not entry:
            axis.text(0.5, 0.5, "not trained in this output_dir", ha="center", va="center", transform=axis.transAxes)
            continue
        loss = torch.tensor(entry["loss"], dtype=torch.float64)
        smooth, steps = running_loss(loss, entry["loss_window"]), range(1, loss.shape[0] + 1)
        if loss.shape[1] == 1:
            axis.plot(steps, loss[:, 0], color="0.75", linewidth=0.8, label="per step")
            axis.plot(steps, smooth[:, 0], label=f"mean of the last {entry['loss_window']} steps")
        else:
            for k in range(loss.shape[1]):
                axis.plot(steps, smooth[:, k], linewidth=1.0, label=f"head {k}")
        if entry["target_loss"] is not None:
            axis.axhline(entry["target_loss"], color="black", linestyle="--", label=f"target {entry['target_loss']}")
        axis.legend(fontsize=7, ncols=2)
    path = Path(path)
    figure.savefig(path, format="png", dpi=120)
    return path


def _write_history(output_dir: Path, history: dict[str, Any]) -> None:
    (output_dir / HISTORY_FILE).write_text(json.dumps(history))
    plot_loss_curves(history, output_dir / CURVES_FILE)


def _read_history(output_dir: Path) -> dict[str, Any]:
    file = output_dir / HISTORY_FILE
    try:
        return json.loads(file.read_text()) if file.is_file() else {}
    except json.JSONDecodeError:
        logger.warning("%s is not valid JSON: the loss curves will lack the earlier stages", file)
        return {}


def run_train_rm(config: TrainRMConfig) -> dict[str, Any] | None:
    """Stage 1, stage 2, history, plots and evaluation, resuming from ``config.output_dir``.

    Call it in every process of a launch; stage 2 and the evaluation run on the main process.

    Returns:
        On the main process: ``{"output_dir", "ensemble", "trained": [stages trained now], "num_heads",
        "final_loss": (K,) running stage-2 loss, "eval_accuracy": {model: % of eval pairs ranked right} | None}``;
        None on the other processes.
    """
    state = process_state()
    main = state.is_main_process
    output_dir = Path(config.output_dir)
    stage1_dir, ensemble_dir = output_dir / STAGE1_DIR, output_dir / ENSEMBLE_DIR
    fix_ensemble = f"delete {ensemble_dir} (stage 1 is kept) or pass --overwrite to retrain both stages"
    fix_stage1 = f"delete {stage1_dir} or pass --overwrite to retrain both stages"
    if config.overwrite and main:
        for folder in (stage1_dir, ensemble_dir, output_dir / CHECKPOINTS_DIR):
            shutil.rmtree(folder, ignore_errors=True)
    state.wait_for_everyone()
    pairs = load_pairs(config.train_files)
    digest = data_hash(pairs)
    history = _read_history(output_dir) if main else {}

    trained = []
    if not config.skip_stage1 and config.stage != 2:
        stage1 = _existing_record(stage1_dir, fix_stage1)
        if stage1 is None:
            history["stage1"] = _run_stage1(config, pairs, digest, state)
            trained.append("stage1")
        elif differences := record_differences(stage1, expected_record(config, digest, stage=1)):
            raise ValueError(
                f"{stage1_dir} holds a stage-1 model trained differently: {'; '.join(differences)}; "
                f"pass --overwrite to retrain it, or use another --output-dir"
            )
        elif main:
            logger.info("%s holds the stage-1 model of this config and data: stage 1 is not retrained", stage1_dir)
    state.wait_for_everyone()
    if not main:
        return None
    if config.stage == 1:
        history.setdefault("stage2", None)
        _write_history(output_dir, history)
        return _summary(config, None, trained, history, None)

    wanted = _stage2_record(config, digest, stage1_dir)
    ensemble = _existing_record(ensemble_dir, fix_ensemble)
    if ensemble is not None and not record_differences(ensemble, wanted):
        _load_checkpoint(ensemble_dir, fix_ensemble)  # the weights load too: the folder is whole
        logger.info("%s matches the config and data: nothing to train (pass --overwrite to retrain)", ensemble_dir)
        return _finish(config, ensemble["num_heads"], trained, history)
    if ensemble is not None:
        differences = "; ".join(record_differences(ensemble, wanted))
        logger.info("%s was trained differently (%s): retraining stage 2", ensemble_dir, differences)
    if config.skip_stage1:
        model, tokenizer = load_backbone(config.model_name_or_path, num_labels=None)
    else:
        model, tokenizer, _ = _load_checkpoint(stage1_dir, fix_stage1)
    encoded = encode_pairs(pairs, tokenizer, config.max_length)
    model.to(state.device)
    stage2 = train_stage2(model, encoded, config.stage2)
    history["stage2"] = history_dict(stage2, config.stage2)
    metadata = {**wanted, "final_loss": history["stage2"]["final_loss"], "steps": stage2.steps}
    save_ensemble(model, tokenizer, ensemble_dir, {**metadata, "stopped_early": stage2.stopped_early})
    trained.append("stage2")
    return _finish(config, config.stage2.num_heads, trained, history)


def _stage2_record(config: TrainRMConfig, digest: str, stage1_dir: Path) -> dict[str, Any]:
    """What the ensemble of ``config`` records; with ``stage=2`` its stage-1 part is the stage-1 model's own record
    (the stage-2 script need not repeat the stage-1 settings), which must have been trained on the same data."""
    wanted = expected_record(config, digest, stage=2)
    if config.stage != 2 or config.skip_stage1:
        return wanted
    fix = f"{_RUN_STAGE1} into {stage1_dir}"
    if not (stage1_dir / ENSEMBLE_FILE).is_file():
        raise FileNotFoundError(f"stage=2 needs the stage-1 model, and {stage1_dir} has none: {fix}")
    stage1 = _existing_record(stage1_dir, fix)
    for key in ("data_sha256", "max_length"):
        if stage1.get(key) != wanted[key]:
            raise ValueError(
                f"{stage1_dir} was trained with {key}={stage1.get(key)!r}, this config has {wanted[key]!r}: stage 2 "
                f"trains on the stage-1 data; pass the same train_files and max_length, or {fix}"
            )
    seeds = [(stage1.get("seeds") or [None])[0], config.stage2.seed]
    return {**wanted, "model_name_or_path": stage1.get("model_name_or_path"), "stage1": stage1.get("stage1"),
            "seeds": seeds}  # fmt: skip


def _resume_point(checkpoints: Path, record: dict[str, Any], fix: str) -> Path | None:
    """The newest ``checkpoint-<step>`` of an interrupted stage 1 of this config and data, or None (fresh start)."""
    from transformers.trainer_utils import get_last_checkpoint

    file = checkpoints / CHECKPOINT_RECORD
    if not file.is_file():
        return None
    try:
        saved = json.loads(file.read_text())
    except json.JSONDecodeError:
        raise _checkpoint_error(checkpoints, ValueError(f"{file} is not valid JSON"), fix) from None
    if differences := record_differences(saved, record):
        raise ValueError(
            f"{checkpoints} holds an interrupted stage 1 trained differently: {'; '.join(differences)}; {fix}"
        )
    last = get_last_checkpoint(str(checkpoints))
    return None if last is None else Path(last)


def _run_stage1(config: TrainRMConfig, pairs: Sequence[PreferencePair], digest: str, state: PartialState):
    """Train stage 1 in every process (from its last checkpoint if interrupted) and save it; returns its history."""
    output_dir = Path(config.output_dir)
    checkpoints, record = output_dir / CHECKPOINTS_DIR, expected_record(config, digest, stage=1)
    fix = f"delete {checkpoints} to start stage 1 again, or pass --overwrite"
    resume = _resume_point(checkpoints, record, fix)
    if state.is_main_process and resume is None:
        shutil.rmtree(checkpoints, ignore_errors=True)
        checkpoints.mkdir(parents=True)
        (checkpoints / CHECKPOINT_RECORD).write_text(json.dumps(record, indent=2, default=str))
    state.wait_for_everyone()
    with torch.random.fork_rng(devices=[]):  # a fresh scalar head gets the same init in every process and run
        torch.manual_seed(derived_seed(config.stage1.seed, BACKBONE_INIT))
        model, tokenizer = load_backbone(config.model_name_or_path, num_labels=1)
    encoded = encode_pairs(pairs, tokenizer, config.max_length)
    result = train_stage1(model, tokenizer, encoded, config.stage1, checkpoints, resume)
    entry = history_dict(result.history, config.stage1)
    stage1_dir = output_dir / STAGE1_DIR
    if state.is_main_process:
        (stage1_dir / ENSEMBLE_FILE).unlink(missing_ok=True)
    result.trainer.save_model(str(stage1_dir))  # every process: FSDP/ZeRO-3 gather the full weights
    if state.is_main_process:
        metadata = {**record, "final_loss": entry["final_loss"], "steps": result.history.steps}
        resumed = None if resume is None else resume.name
        metadata.update(stopped_early=result.history.stopped_early, resumed_from=resumed)
        write_record(result.trainer.accelerator.unwrap_model(result.trainer.model), tokenizer, stage1_dir, metadata)
        _write_history(output_dir, {"stage1": entry})
        shutil.rmtree(checkpoints)  # the stage-1 model is whole: the mid-stage checkpoints are not needed any more
    return entry


def _finish(config: TrainRMConfig, num_heads: int, trained: list[str], history: dict[str, Any]) -> dict[str, Any]:
    """history.json, loss_curves.png and, with eval files, ``output_dir/eval`` (``run_analysis``); the run's summary."""
    output_dir = Path(config.output_dir)
    if "stage1" not in history and not config.skip_stage1:
        logger.warning("%s has no stage-1 history: the loss curves show stage 2 only", output_dir / HISTORY_FILE)
    history.setdefault("stage1", None)
    _write_history(output_dir, history)
    evaluation = None
    if config.eval_files:
        report = run_analysis(
            output_dir / ENSEMBLE_DIR,
            config.eval_files,
            output_dir / EVAL_DIR,
            single_model=None if config.skip_stage1 else output_dir / STAGE1_DIR,
            batch_size=config.stage2.feature_batch_size,
            max_length=config.max_length,
            show_progress=config.stage2.show_progress,
        )
        evaluation = {name: row["sections"][ALL] for name, row in report["models"].items()}
    return _summary(config, num_heads, trained, history, evaluation)


def _summary(
    config: TrainRMConfig,
    num_heads: int | None,
    trained: list[str],
    history: dict[str, Any],
    evaluation: dict[str, float] | None,
) -> dict[str, Any]:
    output_dir = Path(config.output_dir)
    return {
        "output_dir": str(output_dir),
        "ensemble": str(output_dir / ENSEMBLE_DIR),
        "trained": trained,
        "num_heads": num_heads,
        "final_loss": history["stage2"]["final_loss"] if history.get("stage2") else None,
        "eval_accuracy": evaluation,
    }
