"""verl-variance: uncertainty-aware RLHF for verl.

This package never imports verl at top level: verl loads ``verl_variance.integration.plugin`` as a
plugin during its own import, and a nested import of a half-initialised verl fails silently.
"""

__version__ = "0.1.0"
