"""Names of the ``hf`` rollout backend, importable without importing verl or Ray."""

ROLLOUT_NAME = "hf"
ADAPTER_FQN = "verl_variance.integration.hf_rollout.HFServerAdapter"
