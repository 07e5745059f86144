"""The optional extras: each command that needs one says which, in one line, before its own imports."""

import importlib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from verl_variance import cli, extras


def _without(monkeypatch, *absent: str) -> None:
    real = importlib.import_module

    def import_module(name, package=None):
        if name in absent:
            raise ImportError(f"No module named {name!r}")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", import_module)


def test_a_missing_module_names_its_extra_and_the_install_command(monkeypatch):
    _without(monkeypatch, "trl", "matplotlib")
    with pytest.raises(extras.MissingExtra, match=r"^train-rm needs trl, matplotlib, which are not installed: run  "
                                                  r"pip install 'verl-variance\[train-rm\]'$"):  # fmt: skip
        extras.require_extra("train-rm", "train-rm")
    extras.require_extra("train-rm", "train-rm", "accelerate")  # only the modules asked for


@pytest.mark.parametrize(
    ("argv", "absent", "message"),
    [
        (["train-rm", "--config", "x.yaml"], "trl", "verl-variance train-rm: train-rm needs trl, which is not "
         "installed: run  pip install 'verl-variance[train-rm]'"),
        (["demo", "--workdir", "w"], "scipy", "verl-variance demo: demo needs scipy, which is not installed: run  "
         "pip install 'verl-variance[demo]'"),
        (["analyze", "ensemble", "data.jsonl"], "matplotlib",
         "verl-variance analyze: analyze needs matplotlib, which is not installed: run  "
         "pip install 'verl-variance[train-rm]'"),
        (["study", "evaluate", "--study-dir", "s"], "scipy", "verl-variance study: study needs scipy, which is not "
         "installed: run  pip install 'verl-variance[demo]'"),
    ],
)  # fmt: skip
def test_a_command_without_its_extra_stops_with_one_line(monkeypatch, capsys, argv, absent, message):
    _without(monkeypatch, absent)
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip() == message


def test_the_extras_module_and_the_package_metadata_agree():
    """Each module a command checks is installed by the extra it names (the installed ``Requires-Dist``)."""
    from importlib.metadata import requires

    by_extra: dict[str, set[str]] = {}
    for text in requires("verl-variance") or []:
        requirement = Requirement(text)
        for extra in extras.EXTRAS:
            if requirement.marker is not None and requirement.marker.evaluate({"extra": extra}):
                by_extra.setdefault(extra, set()).add(canonicalize_name(requirement.name))
    for extra, modules in extras.EXTRAS.items():
        assert {canonicalize_name(name) for name in modules.values()} <= by_extra[extra], extra
    base = {canonicalize_name(Requirement(t).name) for t in requires("verl-variance") or [] if "extra" not in t}
    assert not base & {"trl", "accelerate", "matplotlib", "scipy", "scikit-learn"}  # the methods need none of them
