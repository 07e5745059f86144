"""Names and settings of the CPU plugin, the ``hf`` rollout backend and the CPU platform, importable without importing
verl, Ray or torch (the driver's early config checks read them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

CPU_PLUGIN = "verl_variance_cpu"
"""The CPU backend's entry point in ``verl.plugins`` (``VERL_USE_EXTERNAL_PLUGINS=verl_variance`` leaves it out)."""
ROLLOUT_NAME = "hf"
ADAPTER_FQN = "verl_variance.cpu.hf_rollout.HFServerAdapter"
VALIDATE_PARAM = "verl_variance_validate"
"""Set in a validation request's ``sampling_params`` by the agent loop (``cpu/patches.py``, section 5) when the rollout
is ``hf``: verl's rollout servers are not told which requests validate, and the hf server samples them in chunks of
their own size (``engine_kwargs.hf.val_batch_rows``)."""
PLATFORM_NAME = "cpu"
"""verl's device name of the CPU platform (``cpu/platform.py``)."""

ENGINE_KEY = "hf"
"""``rollout.engine_kwargs.hf``: ``HFEngineSettings``' fields."""


@dataclass(frozen=True)
class HFEngineSettings:
    """``rollout.engine_kwargs.hf``: where sampling runs and the fixed number of rows per chunk, for training
    requests (``batch_rows``) and validation requests (``val_batch_rows``; None: ``batch_rows``)."""

    separate_server: bool = False
    batch_rows: int = 8
    val_batch_rows: int | None = None
    server_in_agent_loop: bool = False

    @classmethod
    def from_config(cls, config) -> HFEngineSettings:
        """The settings of a rollout config (a mapping or an object with ``engine_kwargs``); ``ValueError`` naming
        the key for an unknown key or a row count that is not an integer >= 1 (``checks.check_hf_engine``: before
        Ray)."""
        kwargs = config.get("engine_kwargs") if isinstance(config, Mapping) else getattr(config, "engine_kwargs", None)
        values = dict((kwargs or {}).get(ENGINE_KEY) or {})
        unknown = sorted(set(values) - {field.name for field in fields(cls)})
        if unknown:
            raise ValueError(
                f"rollout.engine_kwargs.hf: unknown keys {unknown}; valid: separate_server (bool), batch_rows (int), "
                "val_batch_rows (int or null), server_in_agent_loop (bool)"
            )
        settings = cls(**values)
        for key in ("batch_rows", "val_batch_rows"):
            value = getattr(settings, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"rollout.engine_kwargs.hf.{key}={value!r}: expected an integer >= 1")
        return settings

    def rows(self, validate: bool) -> int:
        """Rows per sampling chunk of training (``validate`` False) or validation requests."""
        return self.val_batch_rows if validate and self.val_batch_rows is not None else self.batch_rows
