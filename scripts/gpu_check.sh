#!/usr/bin/env bash
# Before a study on GPU nodes: does this machine run the recipes' GPU dataflow, and how long will a policy take?
#
#   bash scripts/gpu_check.sh                  # one GPU: about 10-20 minutes
#
# 1. `verl-variance doctor` (and nvidia-smi);
# 2. the variance-aware recipe (recipes/imdb_gpt2/run_gpt2_variance_aware_fsdp.sh) for STEPS steps: vLLM rollout,
#    the K-head reward model served by verl (vLLM's /classify), a random GPT-2-sized policy and a K = HEADS
#    reward model built from configs (no hub), prompts from the offline IMDB copy;
# 3. the Megatron recipe (run_qwen2_5_0_5b_variance_aware_megatron.sh) for MEGATRON_STEPS steps on a random
#    Qwen2.5-0.5B-shaped policy;
# then one JSON line per figure in $OUT/gpu_check.jsonl: step 1, the median later step, GPU memory, and the
# projected time of the paper's 192 steps. A run that fails is reported with its log's path; the script goes on
# and exits non-zero at the end. DEVICE=cpu SIZE=tiny runs the same steps on a CPU (hf rollout and reward server).
set -euo pipefail

# ---- user-adjustable ----
OUT=${OUT:-runs/gpu_check}
DEVICE=${DEVICE:-gpu}
SIZE=${SIZE:-gpt2}                  # gpt2 (the study's policy size) | tiny (a smoke test of this script)
HEADS=${HEADS:-10}
STEPS=${STEPS:-20}
MEGATRON_STEPS=${MEGATRON_STEPS:-5}
RUN_MEGATRON=${RUN_MEGATRON:-1}
BATCH_SIZE=${BATCH_SIZE:-128}
# ---- end user-adjustable ----

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RECIPES="$ROOT/recipes/imdb_gpt2"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
REPORT="$OUT/gpu_check.jsonl"
: > "$REPORT"
failed=0

python3 -m verl_variance.cli doctor > "$OUT/doctor.txt" 2>&1 || failed=1
tail -n 1 "$OUT/doctor.txt"
if command -v nvidia-smi > /dev/null; then nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true; fi

models="$(python3 -m verl_variance.experiments.gpu_check models --out "$OUT/models" --size "$SIZE" --heads "$HEADS")"
policy="$OUT/models/policy" reward_model="$OUT/models/reward_model" megatron_policy="$OUT/models/megatron_policy"
echo "gpu_check: models $models"

# run NAME DATA_TOKENIZER RECIPE [VAR=VALUE...]: prepare prompts for the tokenizer, run the recipe, report it
run() {
    local name=$1 tokenizer=$2 recipe=$3
    shift 3
    local data="$OUT/data_$name" output="$OUT/$name" rc=0
    HF_DATASETS_OFFLINE=1 python3 "$RECIPES/prepare_data.py" --local_save_dir "$data" --tokenizer "$tokenizer" \
        --num_test_prompts 64 > "$OUT/prepare_$name.log" 2>&1 || { echo "gpu_check: $name: prepare_data failed ($OUT/prepare_$name.log)"; return 1; }
    echo "gpu_check: $name running (log: $output/run.log)"
    mkdir -p "$output"
    env DEVICE="$DEVICE" DATA_DIR="$data" REWARD_MODEL_PATH="$reward_model" GPUS_PER_NODE=1 NNODES=1 \
        TRAIN_BATCH_SIZE="$BATCH_SIZE" OUTPUT_DIR="$output" SAVE_FREQ=-1 LOGGER='["console","file"]' \
        VERL_FILE_LOGGER_PATH="$output/metrics.jsonl" "$@" \
        bash "$RECIPES/$recipe" trainer.val_before_train=False trainer.test_freq=-1 > "$output/run.log" 2>&1 || rc=$?
    python3 -m verl_variance.experiments.gpu_check summary --run "$name" --metrics "$output/metrics.jsonl" \
        | tee -a "$REPORT"
    if [ "$rc" != 0 ]; then
        echo "{\"run\": \"$name\", \"figure\": \"exit_code\", \"value\": $rc, \"note\": \"$output/run.log\"}" \
            | tee -a "$REPORT"
        return 1
    fi
}

run variance_aware_fsdp "$policy" run_gpt2_variance_aware_fsdp.sh MODEL_PATH="$policy" TRAIN_STEPS="$STEPS" \
    || failed=1
if [ "$RUN_MEGATRON" = 1 ]; then
    run variance_aware_megatron "$megatron_policy" run_qwen2_5_0_5b_variance_aware_megatron.sh \
        MODEL_PATH="$megatron_policy" TRAIN_STEPS="$MEGATRON_STEPS" || failed=1
fi
echo "gpu_check: figures in $REPORT"
exit "$failed"
