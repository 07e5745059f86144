"""The math and the reward-model package never import verl (only ``integration`` knows verl's internals)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

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


PACKAGE = Path(__file__).resolve().parents[1] / "verl_variance"


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, at top level or inside functions (read with ``ast``)."""
    names = {".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): path
             for path in PACKAGE.rglob("*.py")}  # fmt: skip
    graph = {}
    for name, path in names.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
        graph[name] = {target for target in targets if target in names and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: each strongly connected group of more than one module (Tarjan)."""
    index, low, stack, found = {}, {}, [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while (member := stack.pop()) != node:
                group.append(member)
            if group:
                found.append(sorted([node, *group]))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert "verl_variance.reward_model.checkpoint" in graph["verl_variance.reward_model.analysis"]  # the graph is read
    assert cycles(graph) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # and circles are found


METHODS = ("verl_variance.core", "verl_variance.reward_model", "verl_variance.integration")
"""The methods plugin's packages: what a GPU user loads."""


def test_the_methods_never_import_the_cpu_backend():
    """One-way arrows: the CPU plugin (``verl_variance.cpu``) imports the methods, never the reverse."""
    graph = import_graph()
    methods = {name for name in graph if name.startswith(METHODS)}
    assert "verl_variance.integration.variance_kl" in methods  # the graph is read
    crossing = {name: sorted(t for t in graph[name] if t.startswith("verl_variance.cpu")) for name in methods}
    assert {name: targets for name, targets in crossing.items() if targets} == {}
    cpu = {name for name in graph if name.startswith("verl_variance.cpu")}
    assert any(target.startswith(METHODS) for name in cpu for target in graph[name])  # the other way: allowed, used
