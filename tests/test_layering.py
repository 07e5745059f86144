"""The math and the reward-model package never import verl (only ``integration`` knows verl's internals)."""

import json
import subprocess
import sys

PROBE = """
import importlib, json, pkgutil, sys
import verl_variance.core, verl_variance.reward_model
for package in (verl_variance.core, verl_variance.reward_model):
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
loaded = [name for name in sys.modules if name.startswith("verl_variance.")]
print(json.dumps({"verl": sorted(n for n in sys.modules if n == "verl" or n.startswith("verl.")), "loaded": loaded}))
"""


def test_core_and_reward_model_import_no_verl_in_a_fresh_process():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["verl"] == []
    assert {"verl_variance.core.kl", "verl_variance.reward_model.scoring"} <= set(result["loaded"])  # the probe ran
    assert not any(name.startswith("verl_variance.integration") for name in result["loaded"])
