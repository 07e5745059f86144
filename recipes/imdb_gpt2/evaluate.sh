#!/usr/bin/env bash
# IMDB study evaluation | the gold judge on every policy's held-out generations | one GPU for an 8B judge
# (any device for a small one; JUDGE=tfidf needs none)
#
# Banerjee & Gopalan, Section 5: each policy of run_study.sh generated responses to the held-out IMDB
# test prompts after training (and, before training, as the reference policy: verl's validation dumps in
# STUDY_DIR/policies/*/*/validation); the judge scores every (prompt, response). Then the report:
# STUDY_DIR/report.json, report.md, fig7_judge_reward.png (Figures 7/12: judge reward per policy, per
# method, against the reference), fig10_kl.png (Figure 10: KL over steps), fig11_proxy_reward.png
# (Figure 11), and the table (mean, variance across policies, gain, P(worse than the reference), final KL).
# Judge scores are cached per run (judge_<name>.json): re-running is cheap, another judge adds its own.
#
#   STUDY_DIR=<run_study.sh's> bash recipes/imdb_gpt2/evaluate.sh
#   JUDGE=tfidf STUDY_DIR=... bash recipes/imdb_gpt2/evaluate.sh       # offline: the demo's TF-IDF judge

set -xeuo pipefail

# ---- user-adjustable ----
STUDY_DIR=${STUDY_DIR:-$HOME/verl_variance/imdb_gpt2_study}
JUDGE=${JUDGE:-sfairXC/FsfairX-LLaMA3-RM-v0.1}
JUDGE_FORMAT=${JUDGE_FORMAT:-chat}
JUDGE_BATCH_SIZE=${JUDGE_BATCH_SIZE:-8}
KL_TOLERANCE=${KL_TOLERANCE:-1.25}
# ---- end user-adjustable ----
# JUDGE: a Hugging Face sequence classifier (hub name or folder; the paper's FsfairX-LLaMA3-RM-v0.1 by
# default) or tfidf. JUDGE_FORMAT: chat (prompt and response as user and assistant turns of the judge's
# chat template) or text (one plain text). KL_TOLERANCE: the final-KL ratio the report calls matched.

python3 -m verl_variance.cli study evaluate \
    --study-dir "$STUDY_DIR" \
    --judge "$JUDGE" \
    --judge-format "$JUDGE_FORMAT" \
    --batch-size "$JUDGE_BATCH_SIZE" \
    --kl-tolerance "$KL_TOLERANCE" \
    "$@"
