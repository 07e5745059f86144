#!/usr/bin/env bash
# Variance-aware PPO | Qwen2.5-0.5B on IMDB prompts, K-head ensemble reward (head HEAD) | vLLM rollout | Megatron | NVIDIA GPUs
#
# run_gpt2_variance_aware_fsdp.sh on verl's Megatron engine (model_engine=megatron). verl 0.9.1 loads
# models into Megatron through Megatron-Bridge, which has no GPT-2 bridge, so this recipe uses the smallest
# architecture with one: Qwen2.5-0.5B (Qwen2). Everything else is the paper's Table 7 (batch 128,
# lr 1.5e-5, 192 steps, fixed KL coef 0.05, responses <= 10 tokens, GAE critic). Needs verl's megatron
# extra (pip install 'verl-variance[megatron]'); no CPU path (Megatron is GPU-only).
#
#   python3 recipes/imdb_gpt2/prepare_data.py --local_save_dir ~/data/imdb_qwen2_5 --tokenizer Qwen/Qwen2.5-0.5B
#   DATA_DIR=~/data/imdb_qwen2_5 REWARD_MODEL_PATH=<K-head ensemble> bash recipes/imdb_gpt2/run_qwen2_5_0_5b_variance_aware_megatron.sh
#   DRY_RUN=1 bash recipes/imdb_gpt2/run_qwen2_5_0_5b_variance_aware_megatron.sh  # the resolved verl config
# Several nodes: `ray start --head` here, `ray start --address=<head ip>:6379` on the others, NNODES=<n>.

set -xeuo pipefail

export CUDA_DEVICE_MAX_CONNECTIONS=1

# ---- user-adjustable ----
DEVICE=${DEVICE:-gpu}
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-0.5B}
CRITIC_MODEL_PATH=${CRITIC_MODEL_PATH:-$MODEL_PATH}
REWARD_MODEL_PATH=${REWARD_MODEL_PATH:-$HOME/models/gemma2b_ensemble_rm/ensemble}
DATA_DIR=${DATA_DIR:-$HOME/data/imdb_qwen2_5}
NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-4}

TRAIN_BATCH_SIZE=${TRAIN_BATCH_SIZE:-128}
PPO_MINI_BATCH_SIZE=${PPO_MINI_BATCH_SIZE:-$TRAIN_BATCH_SIZE}
PPO_EPOCHS=${PPO_EPOCHS:-4}
MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-32}
ACTOR_LR=${ACTOR_LR:-1.5e-5}
CRITIC_LR=${CRITIC_LR:-1e-5}
TRAIN_STEPS=${TRAIN_STEPS:-192}
KL_COEF=${KL_COEF:-0.05}
VARIANCE_WEIGHTING=${VARIANCE_WEIGHTING:-std}
VARIANCE_NORMALIZE=${VARIANCE_NORMALIZE:-False}
HEAD=${HEAD:-0}
SEED=${SEED:-0}

ACTOR_TP=${ACTOR_TP:-1}
ACTOR_PP=${ACTOR_PP:-1}
CRITIC_TP=${CRITIC_TP:-1}
CRITIC_PP=${CRITIC_PP:-1}

MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-16}
MAX_RESPONSE_LENGTH=${MAX_RESPONSE_LENGTH:-10}
INFER_BACKEND=${INFER_BACKEND:-vllm}
RM_SERVER=${RM_SERVER:-}
ROLLOUT_TP=${ROLLOUT_TP:-1}
ROLLOUT_GPU_MEM_UTIL=${ROLLOUT_GPU_MEM_UTIL:-0.3}
RM_GPU_MEM_UTIL=${RM_GPU_MEM_UTIL:-0.3}
RM_PROMPT_FORMAT=${RM_PROMPT_FORMAT:-chat}
RM_MAX_LENGTH=${RM_MAX_LENGTH:-512}
ATTENTION=${ATTENTION:-auto}

SAVE_FREQ=${SAVE_FREQ:-50}
LOGGER=${LOGGER:-'["console","file"]'}
PROJECT_NAME=${PROJECT_NAME:-verl_variance_imdb}
EXPERIMENT_NAME=${EXPERIMENT_NAME:-qwen2_5_0_5b_variance_aware_megatron_head${HEAD}_seed${SEED}}
OUTPUT_DIR=${OUTPUT_DIR:-$HOME/verl_variance/imdb_gpt2/$EXPERIMENT_NAME}
# ---- end user-adjustable ----
# A 0.5B model fits one GPU per rank: tensor and pipeline parallel 1 (raise them for larger models).
# RM_SERVER, RM_MAX_LENGTH: as in run_gpt2_variance_aware_fsdp.sh (Megatron brings its own attention: ATTENTION
# is checked only).

# ---- no user adjustment needed below ----
BACKEND=megatron
# shellcheck source=recipes/imdb_gpt2/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
########################### parameter arrays ###########################

KL_PENALTY=(
    algorithm.kl_penalty=variance_aware
    ++variance_kl.weighting="$VARIANCE_WEIGHTING"
    ++variance_kl.normalize="$VARIANCE_NORMALIZE"
)

MEGATRON=(
    model_engine=megatron
    actor_rollout_ref.actor.megatron.tensor_model_parallel_size="$ACTOR_TP"
    actor_rollout_ref.actor.megatron.pipeline_model_parallel_size="$ACTOR_PP"
    actor_rollout_ref.ref.megatron.tensor_model_parallel_size="$ACTOR_TP"
    actor_rollout_ref.ref.megatron.pipeline_model_parallel_size="$ACTOR_PP"
    critic.megatron.tensor_model_parallel_size="$CRITIC_TP"
    critic.megatron.pipeline_model_parallel_size="$CRITIC_PP"
)

########################### launch ###########################
python3 -m verl.trainer.main_ppo \
    "${CONFIG[@]}" \
    "${DRY_RUN_ARGS[@]}" \
    "${DATA[@]}" \
    "${MODEL[@]}" \
    "${ACTOR[@]}" \
    "${ROLLOUT[@]}" \
    "${REF[@]}" \
    "${CRITIC[@]}" \
    "${REWARD[@]}" \
    "${ALGORITHM[@]}" \
    "${KL_PENALTY[@]}" \
    "${MEGATRON[@]}" \
    "${TRAINER[@]}" \
    "$@"
