"""Names of the ``hf`` rollout backend and the CPU platform, importable without importing verl or Ray."""

ROLLOUT_NAME = "hf"
ADAPTER_FQN = "verl_variance.integration.hf_rollout.HFServerAdapter"
PLATFORM_NAME = "cpu"
"""verl's device name of the CPU platform (``cpu_platform.PlatformCPU``)."""
