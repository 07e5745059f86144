#!/usr/bin/env bash
# IMDB study | GPT-2, K-head ensemble reward | vanilla vs variance-aware PPO over HEADS x SEEDS | what the
# two run scripts use (NVIDIA GPUs with vLLM; DEVICE=cpu for CPUs)
#
# Banerjee & Gopalan, Section 5: for every reward head and seed, one policy of each method (the paper:
# 10 heads x 4 seeds = 40 policies per method), each one run of run_gpt2_vanilla_fsdp.sh or
# run_gpt2_variance_aware_fsdp.sh. The first head/seed of each method is a pilot: the ratio of their final
# KLs rescales the variance-aware beta of every later run so both methods end at about the same KL
# (Figure 10; recorded in STUDY_DIR/calibration.json). Resumable: finished runs are skipped, an
# interrupted one resumes from its last checkpoint. With RAY_ADDRESS set, each run is a Ray Job on that cluster
# (one node per run, PARALLEL_RUNS at a time; the study folder on a filesystem all nodes share); re-running attaches
# to the jobs still running. Then evaluate.sh judges the policies and writes the
# report. Every variable of the run scripts (MODEL_PATH, REWARD_MODEL_PATH, DATA_DIR, DEVICE, NNODES,
# GPUS_PER_NODE, TRAIN_BATCH_SIZE, ...) passes through; trailing arguments are verl overrides for every run.
#
#   REWARD_MODEL_PATH=<K-head ensemble> bash recipes/imdb_gpt2/run_study.sh
#   STUDY_DIR=<same> bash recipes/imdb_gpt2/evaluate.sh

set -xeuo pipefail

# ---- user-adjustable ----
HEADS=${HEADS:-"0 1 2 3 4 5 6 7 8 9"}
SEEDS=${SEEDS:-"0 1 2 3"}
STUDY_DIR=${STUDY_DIR:-$HOME/verl_variance/imdb_gpt2_study}
TRAIN_STEPS=${TRAIN_STEPS:-192}
VANILLA_KL_COEF=${VANILLA_KL_COEF:-0.2}
AWARE_KL_COEF=${AWARE_KL_COEF:-0.05}
CALIBRATE=${CALIBRATE:-1}
PARALLEL_RUNS=${PARALLEL_RUNS:-1}   # policy runs at once: on CPUs one per core (DEVICE=cpu); on GPUs keep 1
RAY_ADDRESS=${RAY_ADDRESS:-}        # a Ray cluster's dashboard (http://<head>:8265): each run becomes a Ray Job there
RUN_CPUS=${RUN_CPUS:-1}             # with RAY_ADDRESS: CPUs one run reserves on its node
RUN_GPUS=${RUN_GPUS:-}              # with RAY_ADDRESS: GPUs one run reserves (default GPUS_PER_NODE; DEVICE=cpu: 0)
# ---- end user-adjustable ----

# ---- no user adjustment needed below ----
export TRAIN_STEPS
RECIPE_DIR=$(cd -- "$(dirname "${BASH_SOURCE[0]}")" >/dev/null 2>&1 && pwd)
read -ra HEAD_LIST <<< "$HEADS"
read -ra SEED_LIST <<< "$SEEDS"
STUDY=(
    --recipe-dir "$RECIPE_DIR"
    --study-dir "$STUDY_DIR"
    --heads "${HEAD_LIST[@]}"
    --seeds "${SEED_LIST[@]}"
    --steps "$TRAIN_STEPS"
    --vanilla-kl-coef "$VANILLA_KL_COEF"
    --aware-kl-coef "$AWARE_KL_COEF"
    --parallel "$PARALLEL_RUNS"
    --ray-address "$RAY_ADDRESS"
    --run-cpus "$RUN_CPUS"
)
if [ -n "$RUN_GPUS" ]; then
    STUDY+=(--run-gpus "$RUN_GPUS")
fi
if [ "$CALIBRATE" != 1 ]; then
    STUDY+=(--no-calibrate)
fi

python3 -m verl_variance.cli study run "${STUDY[@]}" -- "$@"
