#!/usr/bin/env bash
# Ensemble reward model, evaluation | RewardBench: Table 1, Figures 6 and 9 | one GPU (or DEVICE=cpu)
#
# Banerjee & Gopalan, Section 4: accuracy r(chosen) > r(rejected) per RewardBench subset and section (Chat,
# Chat Hard, Safety, Reasoning; official weighting) for the ensemble mean, each head and the single stage-1
# model (Table 1; the paper's ensemble: 69.4 on average); the per-sample variance across heads of r(chosen)
# and of r(chosen) - r(rejected) per subset (Figure 6); each head against the single model (Figure 9).
# Writes EVAL_DIR/rewardbench.json, rewardbench.md, variance_histograms.png (Fig. 6), head_accuracy.png (Fig. 9).
#
#   bash recipes/gemma_ensemble_rm/eval_rewardbench.sh

set -xeuo pipefail

# ---- user-adjustable ----
DEVICE=${DEVICE:-gpu}
DATA_DIR=${DATA_DIR:-$HOME/data/gemma_rm}
OUTPUT_DIR=${OUTPUT_DIR:-$HOME/models/gemma2b_ensemble_rm}
EVAL_DIR=${EVAL_DIR:-$OUTPUT_DIR/eval_rewardbench}
BATCH_SIZE=${BATCH_SIZE:-16}
MAX_LENGTH=${MAX_LENGTH:-1024}
# ---- end user-adjustable ----

# ---- no user adjustment needed below ----
# shellcheck source=recipes/gemma_ensemble_rm/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

python3 -m verl_variance.cli analyze \
    "$OUTPUT_DIR/ensemble" \
    "$DATA_DIR/rewardbench.parquet" \
    --single-model "$OUTPUT_DIR/stage1" \
    --output-dir "$EVAL_DIR" \
    --batch-size "$BATCH_SIZE" \
    --max-length "$MAX_LENGTH" \
    "$@"
