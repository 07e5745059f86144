# shellcheck shell=bash
# Sourced by the scripts of this folder after their user-adjustable block (not a recipe): DEVICE=gpu runs on
# the visible GPUs, DEVICE=cpu hides them (the same scripts on CPUs); anything else stops here, exit code 2.
if [ "$DEVICE" = cpu ]; then
    export CUDA_VISIBLE_DEVICES=""
elif [ "$DEVICE" != gpu ]; then
    echo "$(basename "$0"): DEVICE=$DEVICE: use gpu or cpu" >&2
    exit 2
fi
