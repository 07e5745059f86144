"""Every documented install resolves: verl-variance's requirements admit what verl 0.9.1's own extras pin
(``pip install 'verl-variance[vllm]'``, ``[fsdp]``, ``[megatron]`` on GPU machines), read offline from the installed
distributions' ``Requires-Dist`` metadata."""

from __future__ import annotations

import importlib.metadata
import re

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

GPU_EXTRAS = ("vllm", "fsdp", "megatron")


def extra_requirements(distribution: str, extra: str) -> list[Requirement]:
    """The requirements ``distribution[extra]`` adds, following the distribution's own ``distribution[x]`` entries."""
    found, todo, seen = [], [extra], set()
    requirements = [Requirement(text) for text in importlib.metadata.requires(distribution) or []]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for requirement in requirements:
            if requirement.marker is None or not requirement.marker.evaluate({"extra": current}):
                continue
            if canonicalize_name(requirement.name) == canonicalize_name(distribution):
                todo.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


def ours() -> dict[str, list[Requirement]]:
    """verl-variance's requirements by package name: its base and every extra (what any install line may combine)."""
    by_name: dict[str, list[Requirement]] = {}
    for text in importlib.metadata.requires("verl-variance") or []:
        requirement = Requirement(text)
        by_name.setdefault(canonicalize_name(requirement.name), []).append(requirement)
    return by_name


def pinned(requirement: Requirement) -> str | None:
    match = [spec.version for spec in requirement.specifier if spec.operator in ("==", "===")]
    return match[0] if match else None


@pytest.mark.parametrize("extra", GPU_EXTRAS)
def test_our_requirements_admit_every_version_verls_gpu_extras_pin(extra):
    verls = extra_requirements("verl", extra)
    assert verls, f"verl has no [{extra}] extra"
    mine, checked = ours(), 0
    for requirement in verls:
        version = pinned(requirement)
        for own in mine.get(canonicalize_name(requirement.name), []):
            if version is not None:
                checked += 1
                assert own.specifier.contains(version, prereleases=True), (
                    f"verl[{extra}] pins {requirement}, but verl-variance requires {own}: "
                    f"pip install 'verl-variance[{extra}]' cannot resolve"
                )
    if extra in ("fsdp", "megatron"):
        assert checked >= 1  # trl: verl pins 0.27.0, train-rm needs TRL


def test_the_gpu_extras_are_verls_and_trl_admits_verls_pin():
    extras = {extra: [Requirement(t) for t in importlib.metadata.requires("verl-variance")
                      if f'extra == "{extra}"' in t] for extra in GPU_EXTRAS}  # fmt: skip
    for extra, requirements in extras.items():
        assert [(r.name, r.extras) for r in requirements] == [("verl", {extra})]
    trls = ours()["trl"]  # train-rm's and the demo's
    assert len(trls) == 2 and all(trl.specifier.contains("0.27.0") for trl in trls)
    assert all(trl.specifier.contains(importlib.metadata.version("trl")) for trl in trls)
    assert pinned(next(r for r in extra_requirements("verl", "fsdp") if r.name == "trl")) == "0.27.0"


def test_the_readme_names_the_install_lines_that_resolve():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    lines = set(re.findall(r"pip install '(verl-variance\[[a-z,]+\])'", readme))
    assert {"verl-variance[vllm]", "verl-variance[vllm,fsdp]", "verl-variance[megatron]"} <= lines
    for line in lines:
        for extra in re.search(r"\[(.*)\]", line).group(1).split(","):
            assert extra in (*GPU_EXTRAS, "train-rm", "demo")
    assert "flash-attn==2.8.3 --no-build-isolation" in readme
