#!/usr/bin/env bash
# Vanilla PPO | GPT-2 on IMDB prompts, K-head ensemble reward (head HEAD) | vLLM rollout | FSDP | NVIDIA GPUs
# (DEVICE=cpu: the same run on CPUs, with the verl-variance CPU preset and its transformers rollout)
#
# The baseline of Banerjee & Gopalan, Section 5 and Table 6: verl's own KL penalty, one beta for every
# sample, r_t - beta * kl_t. Defaults are the paper's: batch 128, lr 1.414e-5, 192 steps, fixed KL coef
# 0.2, responses <= 10 tokens, GAE critic. The policy trains on head HEAD of the ensemble, as the
# variance-aware run does (run_gpt2_variance_aware_fsdp.sh); run_study.sh runs both over heads x seeds.
#
#   python3 recipes/imdb_gpt2/prepare_data.py --local_save_dir ~/data/imdb      # once
#   REWARD_MODEL_PATH=<K-head ensemble> HEAD=0 SEED=0 bash recipes/imdb_gpt2/run_gpt2_vanilla_fsdp.sh
#   DRY_RUN=1 bash recipes/imdb_gpt2/run_gpt2_vanilla_fsdp.sh                    # the resolved verl config
# Several nodes: `ray start --head` here, `ray start --address=<head ip>:6379` on the others, NNODES=<n>.

set -xeuo pipefail

# ---- user-adjustable ----
DEVICE=${DEVICE:-gpu}
MODEL_PATH=${MODEL_PATH:-openai-community/gpt2}
CRITIC_MODEL_PATH=${CRITIC_MODEL_PATH:-$MODEL_PATH}
REWARD_MODEL_PATH=${REWARD_MODEL_PATH:-$HOME/models/gemma2b_ensemble_rm/ensemble}
DATA_DIR=${DATA_DIR:-$HOME/data/imdb}
NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-4}

TRAIN_BATCH_SIZE=${TRAIN_BATCH_SIZE:-128}
PPO_MINI_BATCH_SIZE=${PPO_MINI_BATCH_SIZE:-$TRAIN_BATCH_SIZE}
PPO_EPOCHS=${PPO_EPOCHS:-4}
MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-32}
ACTOR_LR=${ACTOR_LR:-1.414e-5}
CRITIC_LR=${CRITIC_LR:-1e-5}
TRAIN_STEPS=${TRAIN_STEPS:-192}
KL_COEF=${KL_COEF:-0.2}
HEAD=${HEAD:-0}
SEED=${SEED:-0}

MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-16}
MAX_RESPONSE_LENGTH=${MAX_RESPONSE_LENGTH:-10}
INFER_BACKEND=${INFER_BACKEND:-}
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
EXPERIMENT_NAME=${EXPERIMENT_NAME:-gpt2_vanilla_head${HEAD}_seed${SEED}}
OUTPUT_DIR=${OUTPUT_DIR:-$HOME/verl_variance/imdb_gpt2/$EXPERIMENT_NAME}
# ---- end user-adjustable ----
# DEVICE: gpu | cpu. INFER_BACKEND: vllm (DEVICE=gpu default) | hf (DEVICE=cpu default; also on a GPU
# without vLLM). RM_SERVER: the engine verl serves the reward model with, vllm | hf (the DEVICE=cpu default) |
# none (scored in verl's reward-loop worker instead); RM_MAX_LENGTH: the tokens it reads, the last ones.
# ATTENTION: auto (flash-attn where installed, else sdpa, said in one line) | flash_attention_2 | sdpa | eager.
# TRL's IMDB example (the paper's PPO code) takes 4 PPO epochs over mini-batches of 128.

# ---- no user adjustment needed below ----
# shellcheck source=recipes/imdb_gpt2/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
########################### parameter arrays ###########################

KL_PENALTY=(
    algorithm.kl_penalty=kl
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
    "${TRAINER[@]}" \
    "$@"
