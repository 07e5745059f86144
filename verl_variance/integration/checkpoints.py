"""verl's checkpoint folders, where the methods keep their trainer state beside verl's (R²VPO's λ, the hacking
monitor's history): ``<trainer.default_local_dir>/global_step_<n>``."""

from __future__ import annotations

import os
from typing import Any


def step_folder(config: Any, global_steps: int, resuming: bool) -> str:
    """The checkpoint folder of ``global_steps`` as verl writes it, or the one it resumed from."""
    trainer = config.trainer
    if resuming and trainer.get("resume_mode") == "resume_path" and trainer.get("resume_from_path"):
        return os.path.abspath(trainer.resume_from_path)
    return os.path.join(os.path.abspath(trainer.default_local_dir), f"global_step_{global_steps}")
