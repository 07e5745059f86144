#!/usr/bin/env bash
# Ensemble reward model, stage 2 | K = 10 linear heads on the frozen stage-1 Gemma-2B backbone | one GPU
# (DEVICE=cpu: the same on CPUs)
#
# Banerjee & Gopalan, Section 4 and Appendix 7, Table 4: the backbone of run_gemma2b_stage1_fsdp.sh is frozen,
# its last-token features are computed once, and K heads (one Linear 2048 -> K, 20,480 parameters for K = 10)
# train together on sum_k BT(theta_k): batch 32, lr 1e-5, 0.5 epoch (2,060 steps), until every head's running
# loss is near 0.2. The paper: 7 h on 4 x A40 (here the features are cached, so the steps cost almost nothing).
# Writes OUTPUT_DIR/ensemble: the K-head reward model the PPO recipes take as REWARD_MODEL_PATH.
#
#   bash recipes/gemma_ensemble_rm/run_gemma2b_stage2.sh
#   REWARD_MODEL_PATH=$OUTPUT_DIR/ensemble bash recipes/imdb_gpt2/run_gpt2_variance_aware_fsdp.sh

set -xeuo pipefail

# ---- user-adjustable ----
DEVICE=${DEVICE:-gpu}
DATA_DIR=${DATA_DIR:-$HOME/data/gemma_rm}
OUTPUT_DIR=${OUTPUT_DIR:-$HOME/models/gemma2b_ensemble_rm}
NUM_HEADS=${NUM_HEADS:-10}
BATCH_SIZE=${BATCH_SIZE:-32}
LR=${LR:-1e-5}
NUM_EPOCHS=${NUM_EPOCHS:-0.5}
MAX_STEPS=${MAX_STEPS:-null}
TARGET_LOSS=${TARGET_LOSS:-0.2}
BOOTSTRAP=${BOOTSTRAP:-false}
FEATURE_BATCH_SIZE=${FEATURE_BATCH_SIZE:-32}
MAX_LENGTH=${MAX_LENGTH:-1024}
SEED=${SEED:-0}
# ---- end user-adjustable ----
# MAX_LENGTH must be stage 1's (the features are of the same sequences). BOOTSTRAP=true: each head trains on
# its own resample of the pairs. The stage-1 settings are read from OUTPUT_DIR/stage1, not repeated here.

# ---- no user adjustment needed below ----
# shellcheck source=recipes/gemma_ensemble_rm/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ARGS=(
    --stage 2
    --train-files "$DATA_DIR/train.parquet"
    --output-dir "$OUTPUT_DIR"
    --max-length "$MAX_LENGTH"
    --num-heads "$NUM_HEADS"
)

STAGE2=(
    stage2.batch_size="$BATCH_SIZE"
    stage2.learning_rate="$LR"
    stage2.num_epochs="$NUM_EPOCHS"
    stage2.max_steps="$MAX_STEPS"
    stage2.target_loss="$TARGET_LOSS"
    stage2.bootstrap="$BOOTSTRAP"
    stage2.feature_batch_size="$FEATURE_BATCH_SIZE"
    stage2.seed="$SEED"
)

# DRY_RUN=1: the resolved config, nothing read; otherwise the inputs are checked first and the config printed
if [ "${DRY_RUN:-0}" = 1 ]; then
    python3 -m verl_variance.cli train-rm "${ARGS[@]}" --set "${STAGE2[@]}" "$@" --dry-run
    exit 0
fi
python3 -m verl_variance.cli train-rm "${ARGS[@]}" --set "${STAGE2[@]}" "$@" --check

python3 -m verl_variance.cli train-rm \
    "${ARGS[@]}" \
    --set "${STAGE2[@]}" \
    "$@"
