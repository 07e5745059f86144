# shellcheck shell=bash disable=SC2034  # the arrays below are used by the run script that sources this file
# Shared by the run_*.sh recipes of this folder, sourced after their user-adjustable block (not a recipe):
#   1. DEVICE: gpu = verl's stock ppo_trainer config; cpu = the verl-variance CPU preset
#      (verl_variance/cpu/config/ppo_trainer_cpu.yaml: gloo ranks, the transformers `hf` rollout);
#   2. DRY_RUN=1: print the fully resolved verl config (Hydra's --cfg job --resolve) and exit: no Ray,
#      no GPU, no data, no model download; otherwise every input is checked before Ray starts;
#   3. the parameter arrays every method and backend shares (data, model, actor, rollout, ref, critic,
#      reward, algorithm, trainer). The run script adds its own (the KL penalty; the Megatron engine) and
#      calls verl.trainer.main_ppo with all of them.

BACKEND=${BACKEND:-fsdp}

########################### device, checks, dry run ###########################
CONFIG=()
if [ "$DEVICE" = cpu ]; then
    CONFIG=(--config-path="$(python3 -c 'from verl_variance.cpu.launcher import CONFIG_DIR; print(CONFIG_DIR)')"
            --config-name=ppo_trainer_cpu)
    INFER_BACKEND=${INFER_BACKEND:-hf}
    RM_SERVER=${RM_SERVER:-hf}
    # VLLM_CPU_KVCACHE_SPACE: GiB of KV cache per vLLM engine where vLLM's CPU build runs (INFER_BACKEND/RM_SERVER=vllm)
    export VERL_PLATFORM=cpu TOKENIZERS_PARALLELISM=false VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
fi
INFER_BACKEND=${INFER_BACKEND:-vllm}
RM_SERVER=${RM_SERVER:-vllm}

CHECK=(--device "$DEVICE" --backend "$BACKEND" --infer-backend "$INFER_BACKEND" --rm-server "$RM_SERVER"
       --attention "$ATTENTION")
for name in TRAIN_BATCH_SIZE PPO_MINI_BATCH_SIZE PPO_EPOCHS MICRO_BATCH_SIZE TRAIN_STEPS MAX_PROMPT_LENGTH \
        MAX_RESPONSE_LENGTH ROLLOUT_TP ACTOR_TP ACTOR_PP CRITIC_TP CRITIC_PP NNODES GPUS_PER_NODE HEAD SEED \
        SAVE_FREQ ACTOR_LR CRITIC_LR KL_COEF ROLLOUT_GPU_MEM_UTIL RM_GPU_MEM_UTIL RM_MAX_LENGTH; do
    if [ -n "${!name+set}" ]; then CHECK+=(--number "$name=${!name}"); fi
done
DRY_RUN_ARGS=()
if [ "${DRY_RUN:-0}" = 1 ]; then
    DRY_RUN_ARGS=(--cfg job --resolve)
else
    CHECK+=(--data-dir "$DATA_DIR" --reward-model "$REWARD_MODEL_PATH"
            --model "MODEL_PATH=$MODEL_PATH" --model "CRITIC_MODEL_PATH=$CRITIC_MODEL_PATH")
fi
# prints the attention implementation to use (flash-attn absent: sdpa, said in one line); exits on bad input
ATTN_IMPLEMENTATION=$(python3 -m verl_variance.cli recipe-check "${CHECK[@]}")
if [ "${DRY_RUN:-0}" != 1 ]; then
    mkdir -p "$OUTPUT_DIR"
    export VERL_FILE_LOGGER_PATH=${VERL_FILE_LOGGER_PATH:-$OUTPUT_DIR/metrics.jsonl}
fi

########################### shared parameter arrays ###########################
DATA=(
    data.train_files="$DATA_DIR/train.parquet"
    data.val_files="$DATA_DIR/test.parquet"
    data.train_batch_size="$TRAIN_BATCH_SIZE"
    data.max_prompt_length="$MAX_PROMPT_LENGTH"
    data.max_response_length="$MAX_RESPONSE_LENGTH"
    data.filter_overlong_prompts=True
    data.truncation=error
    data.shuffle=True
    data.seed="$SEED"
)

# The paper's policy continues the review: a chat template that renders the prompt text alone.
MODEL=(
    actor_rollout_ref.model.path="$MODEL_PATH"
    actor_rollout_ref.model.custom_chat_template="'{% for message in messages %}{{ message.content }}{% endfor %}'"
)
if [ "$BACKEND" = fsdp ]; then  # verl's default is flash_attention_2, which fails to load without flash-attn
    MODEL+=(++actor_rollout_ref.model.override_config.attn_implementation="$ATTN_IMPLEMENTATION")
fi

# The paper's PPO ran on TRL: its IMDB example's mini-batch (= the batch) and 4 PPO epochs per batch.
ACTOR=(
    actor_rollout_ref.actor.optim.lr="$ACTOR_LR"
    actor_rollout_ref.actor.ppo_mini_batch_size="$PPO_MINI_BATCH_SIZE"
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu="$MICRO_BATCH_SIZE"
    actor_rollout_ref.actor.ppo_epochs="$PPO_EPOCHS"
    actor_rollout_ref.actor.data_loader_seed="$SEED"
)

ROLLOUT=(
    actor_rollout_ref.rollout.name="$INFER_BACKEND"
    actor_rollout_ref.rollout.tensor_model_parallel_size="$ROLLOUT_TP"
    actor_rollout_ref.rollout.gpu_memory_utilization="$ROLLOUT_GPU_MEM_UTIL"
    actor_rollout_ref.rollout.n=1
    actor_rollout_ref.rollout.seed="$SEED"
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu="$MICRO_BATCH_SIZE"
    actor_rollout_ref.rollout.val_kwargs.do_sample=True
    actor_rollout_ref.rollout.val_kwargs.temperature=1.0
)

if [ "$DEVICE" = cpu ] && [ "$INFER_BACKEND" = vllm ]; then  # vLLM's CPU build has no batch-invariant kernels
    ROLLOUT+=(actor_rollout_ref.rollout.full_determinism=False)
fi

REF=(
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu="$MICRO_BATCH_SIZE"
)

CRITIC=(
    critic.model.path="$CRITIC_MODEL_PATH"
    critic.optim.lr="$CRITIC_LR"
    critic.ppo_micro_batch_size_per_gpu="$MICRO_BATCH_SIZE"
    critic.cliprange_value=0.2
)
if [ "$BACKEND" = fsdp ]; then
    CRITIC+=(++critic.model.override_config.attn_implementation="$ATTN_IMPLEMENTATION")
fi

# Policy i trains on head i of the K-head ensemble; sigma^2 across the heads goes to the KL penalty.
# verl serves the reward model (RM_SERVER: vLLM on GPUs, hf on CPUs; the plugin reads all K logits of its
# /classify), or RM_SERVER=none scores it in verl's reward-loop worker: both read the same last RM_MAX_LENGTH tokens.
REWARD=(
    reward.custom_reward_function.path=null
    reward.reward_manager.name=ensemble
    ++ensemble_reward.model_path="$REWARD_MODEL_PATH"
    ++ensemble_reward.aggregator=member
    ++ensemble_reward.aggregator_params.index="$HEAD"
    ++ensemble_reward.prompt_format="$RM_PROMPT_FORMAT"
    ++ensemble_reward.max_length="$RM_MAX_LENGTH"
)
if [ "$RM_SERVER" != none ]; then
    REWARD+=(
        reward.reward_model.enable=True
        reward.reward_model.model_path="$REWARD_MODEL_PATH"
        reward.reward_model.rollout.name="$RM_SERVER"
        reward.reward_model.rollout.tensor_model_parallel_size=1
        reward.reward_model.rollout.gpu_memory_utilization="$RM_GPU_MEM_UTIL"
    )
fi

# GAE with TRL's gamma/lambda (the paper's PPO runs used TRL's defaults), a fixed beta (no adaptive KL).
ALGORITHM=(
    algorithm.adv_estimator=gae
    algorithm.gamma=1.0
    algorithm.lam=0.95
    algorithm.use_kl_in_reward=True
    algorithm.kl_ctrl.type=fixed
    algorithm.kl_ctrl.kl_coef="$KL_COEF"
)

# Validation before training (the reference policy) and at the last step (the trained one), dumped for
# the judge (evaluate.sh); checkpoints every SAVE_FREQ steps, resumed automatically.
TRAINER=(
    trainer.total_training_steps="$TRAIN_STEPS"
    trainer.critic_warmup=0
    trainer.logger="$LOGGER"
    trainer.project_name="$PROJECT_NAME"
    trainer.experiment_name="$EXPERIMENT_NAME"
    trainer.nnodes="$NNODES"
    trainer.n_gpus_per_node="$GPUS_PER_NODE"
    trainer.val_before_train=True
    trainer.test_freq="$TRAIN_STEPS"
    trainer.validation_data_dir="$OUTPUT_DIR/validation"
    trainer.default_local_dir="$OUTPUT_DIR/checkpoints"
    trainer.save_freq="$SAVE_FREQ"
    trainer.resume_mode=auto
    trainer.max_actor_ckpt_to_keep=1
    trainer.max_critic_ckpt_to_keep=1
)
