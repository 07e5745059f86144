"""Names of the ``hf`` rollout backend and the CPU platform, importable without importing verl or Ray."""

ROLLOUT_NAME = "hf"
ADAPTER_FQN = "verl_variance.integration.hf_rollout.HFServerAdapter"
VALIDATE_PARAM = "verl_variance_validate"
"""Set in a validation request's ``sampling_params`` by the agent loop (``patches.py``, section 7) when the rollout
is ``hf``: verl's rollout servers are not told which requests validate, and the hf server samples them in chunks of
their own size (``engine_kwargs.hf.val_batch_rows``)."""
PLATFORM_NAME = "cpu"
"""verl's device name of the CPU platform (``cpu_platform.PlatformCPU``)."""
