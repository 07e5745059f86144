#!/usr/bin/env bash
# Ensemble reward model, stage 1 | Gemma-2B-it, full fine-tune, Bradley-Terry | TRL RewardTrainer | FSDP2 | NVIDIA GPUs
# (DEVICE=cpu: the same run on CPUs through torchrun and gloo, for a tiny local backbone)
#
# Banerjee & Gopalan, "Towards Reliable Alignment: Uncertainty-aware RLHF", Section 4 and Appendix 7, Table 2:
# one reward model, every weight trained with the BT loss on preference_dataset_mix2, batch 32, lr 1e-5,
# weight decay 0.001, cosine schedule, 1 epoch (4,125 steps), stopped early once the loss of the last 20
# steps is below 0.4. The paper: 51 h on 4 x A40. Writes OUTPUT_DIR/stage1 (run_gemma2b_stage2.sh reads it);
# checkpoints every SAVE_STEPS steps in OUTPUT_DIR/checkpoints/stage1, and a rerun resumes from the last one.
#
#   python3 recipes/gemma_ensemble_rm/prepare_data.py --local_save_dir ~/data/gemma_rm   # once
#   bash recipes/gemma_ensemble_rm/run_gemma2b_stage1_fsdp.sh
#   DRY_RUN=1 bash recipes/gemma_ensemble_rm/run_gemma2b_stage1_fsdp.sh      # the resolved config and the launch
# Several nodes: the same command on every node with NNODES=<n>, NODE_RANK=<0..n-1>, MASTER_ADDR=<node 0's ip>.

set -xeuo pipefail

# ---- user-adjustable ----
DEVICE=${DEVICE:-gpu}
MODEL_PATH=${MODEL_PATH:-google/gemma-2b-it}
DATA_DIR=${DATA_DIR:-$HOME/data/gemma_rm}
OUTPUT_DIR=${OUTPUT_DIR:-$HOME/models/gemma2b_ensemble_rm}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
GPUS_PER_NODE=${GPUS_PER_NODE:-4}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-$(dirname "${BASH_SOURCE[0]}")/config/fsdp2.yaml}

BATCH_SIZE=${BATCH_SIZE:-32}
MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-1}
LR=${LR:-1e-5}
NUM_EPOCHS=${NUM_EPOCHS:-1}
MAX_STEPS=${MAX_STEPS:-null}
WEIGHT_DECAY=${WEIGHT_DECAY:-0.001}
LR_SCHEDULER=${LR_SCHEDULER:-cosine}
OPTIM=${OPTIM:-adamw_torch}
TARGET_LOSS=${TARGET_LOSS:-0.4}
LOSS_WINDOW=${LOSS_WINDOW:-20}
MAX_LENGTH=${MAX_LENGTH:-1024}
BF16=${BF16:-true}
GRADIENT_CHECKPOINTING=${GRADIENT_CHECKPOINTING:-true}
SAVE_STEPS=${SAVE_STEPS:-250}
SEED=${SEED:-0}

LOGGER=${LOGGER:-'[console,tensorboard]'}
PROJECT_NAME=${PROJECT_NAME:-verl_variance_rm}
EXPERIMENT_NAME=${EXPERIMENT_NAME:-gemma2b_stage1_seed${SEED}}
# ---- end user-adjustable ----
# DEVICE: gpu | cpu. MICRO_BATCH_SIZE: pairs per GPU per forward pass; the rest of the global BATCH_SIZE is
# gradient accumulation (32 = 1 x 8 x 4 GPUs). OPTIM: the paper's paged AdamW 32-bit is paged_adamw_32bit
# (pip install bitsandbytes). LOGGER: verl's trainer.logger names, console, tensorboard ($TENSORBOARD_DIR), wandb.
# ACCELERATE_CONFIG: another accelerate config (e.g. DeepSpeed ZeRO-3) runs the same script.

# ---- no user adjustment needed below ----
########################### train-rm arguments ###########################
DATA=(
    --model "$MODEL_PATH"
    --train-files "$DATA_DIR/train.parquet"
    --output-dir "$OUTPUT_DIR"
    --max-length "$MAX_LENGTH"
    --seed "$SEED"
)

STAGE1=(
    stage1.batch_size="$BATCH_SIZE"
    stage1.micro_batch_size_per_device="$MICRO_BATCH_SIZE"
    stage1.learning_rate="$LR"
    stage1.num_epochs="$NUM_EPOCHS"
    stage1.max_steps="$MAX_STEPS"
    stage1.weight_decay="$WEIGHT_DECAY"
    stage1.lr_scheduler="$LR_SCHEDULER"
    stage1.optim="$OPTIM"
    stage1.target_loss="$TARGET_LOSS"
    stage1.loss_window="$LOSS_WINDOW"
    stage1.bf16="$BF16"
    stage1.gradient_checkpointing="$GRADIENT_CHECKPOINTING"
    stage1.save_steps="$SAVE_STEPS"
    stage1.logger="$LOGGER"
    stage1.project_name="$PROJECT_NAME"
    stage1.experiment_name="$EXPERIMENT_NAME"
)

########################### launcher ###########################
# shellcheck source=recipes/gemma_ensemble_rm/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [ "$DEVICE" = gpu ]; then
    LAUNCH=(accelerate launch --config_file "$ACCELERATE_CONFIG"
            --num_machines "$NNODES" --machine_rank "$NODE_RANK" --num_processes "$((NNODES * GPUS_PER_NODE))"
            --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT")
else
    LAUNCH=(torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS_PER_NODE"
            --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
fi

# DRY_RUN=1: the resolved config and the launch command, nothing read. Otherwise the inputs (data, tokenizer
# vs model config) are checked before any process starts, and the config is printed.
if [ "${DRY_RUN:-0}" = 1 ]; then
    python3 -m verl_variance.cli train-rm --stage 1 "${DATA[@]}" --set "${STAGE1[@]}" "$@" --dry-run
    echo "launch: ${LAUNCH[*]} -m verl_variance.cli train-rm --stage 1 ${DATA[*]} --set ${STAGE1[*]} $*" >&2
    exit 0
fi
python3 -m verl_variance.cli train-rm --stage 1 "${DATA[@]}" --set "${STAGE1[@]}" "$@" --check

########################### launch ###########################
"${LAUNCH[@]}" -m verl_variance.cli train-rm \
    --stage 1 \
    "${DATA[@]}" \
    --set "${STAGE1[@]}" \
    "$@"
