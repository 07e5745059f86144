"""Prepare the ensemble reward model's data (Banerjee & Gopalan, Section 4, Appendix 7) in train-rm's layouts.

preference_dataset_mix2 (weqweasdas/preference_dataset_mix2, ~50k pairs of whole conversations) ->
train.parquet (chat layout: chosen, rejected) for stages 1 and 2; RewardBench (allenai/reward-bench, split
filtered) -> rewardbench.parquet (prompt, chosen, rejected, subset) for Table 1 and Figures 6 and 9.

    python3 recipes/gemma_ensemble_rm/prepare_data.py --local_save_dir ~/data/gemma_rm
    python3 recipes/gemma_ensemble_rm/prepare_data.py --local_save_dir ~/data/gemma_rm \
        --local_dataset_path ~/mix2_copy --local_rewardbench_path ~/reward_bench_copy

Where the data comes from: --local_dataset_path / --local_rewardbench_path (a save_to_disk folder, a hub
snapshot folder or one .parquet/.jsonl file), else the Hugging Face hub. With neither, the error names the
dataset and the option.
"""

import argparse
import sys

from verl_variance.experiments.datasets_io import run_preparation
from verl_variance.experiments.rm_data import prepare_rm_data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local_save_dir", default="~/data/gemma_rm", help="train.parquet, rewardbench.parquet")
    parser.add_argument("--local_dataset_path", default=None, help="a local copy of preference_dataset_mix2")
    parser.add_argument("--local_rewardbench_path", default=None, help="a local copy of allenai/reward-bench")
    parser.add_argument("--max_train_pairs", type=int, default=None, help="keep the first N pairs (a quick run)")
    parser.add_argument("--max_eval_pairs", type=int, default=None, help="keep the first N RewardBench pairs")
    args = parser.parse_args()
    return run_preparation(
        lambda: prepare_rm_data(
            args.local_save_dir, args.local_dataset_path, args.local_rewardbench_path, args.max_train_pairs,
            args.max_eval_pairs,
        )
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
