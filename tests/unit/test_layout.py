"""The project's structure as docs/ARCHITECTURE.md draws it, read from the code's own imports
(every import statement, those inside functions too): the model imports no objective, task,
trainer or evaluation; the data pipeline imports nothing of training; no two folders import each
other, directly or around a cycle; no two modules share a name; and every command is the module
of its console script, named after it, at the root of its package."""
from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("data_pipeline", "training", "launch")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project's modules NAME imports (relative imports resolved; `from X import m` names
    the module X.m where m is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target:
                found.add(target)
    return found - {name}


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _place(name: str) -> str:
    """A module's place: the folder of its package it lies in (its sub-folders included); a
    module at the root of a package is a place of its own."""
    return ".".join(name.split(".")[:2])


def test_the_model_imports_no_objective_task_trainer_or_evaluation():
    for name, imported in IMPORTS.items():
        if name.startswith("training.model"):
            outside = sorted(i for i in imported if i.startswith("training.") and not i.startswith("training.model"))
            assert not outside, f"{name} imports {outside}"


def test_the_data_pipeline_imports_nothing_of_training_or_launch():
    for name, imported in IMPORTS.items():
        if name.startswith("data_pipeline"):
            outside = sorted(i for i in imported if i.split(".")[0] in ("training", "launch"))
            assert not outside, f"{name} imports {outside}"


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one place (Tarjan)."""
    index, low, stack, on_stack, components, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in edges.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


def test_no_cycle_between_folders():
    edges: dict[str, set[str]] = defaultdict(set)
    witness = {}
    for name, imported in IMPORTS.items():
        for target in imported:
            a, b = _place(name), _place(target)
            if a != b:
                edges[a].add(b)
                witness.setdefault((a, b), f"{name} -> {target}")
    cycles = _cycles(edges)
    described = [[witness[a, b] for a in cycle for b in cycle if (a, b) in witness] for cycle in cycles]
    assert not cycles, described


def test_no_two_modules_share_a_name():
    by_name = defaultdict(list)
    for name, path in MODULES.items():
        if path.name != "__init__.py":
            by_name[path.stem].append(name)
    shared = {stem: names for stem, names in by_name.items() if len(names) > 1}
    assert not shared, shared


def test_every_command_is_the_module_of_its_console_script_named_after_it():
    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    scripts = dict(re.findall(r'"(x2vlm-[a-z-]+)=([a-z_.]+):main"', setup))
    assert len(scripts) >= 10
    for command, module in scripts.items():
        package, _, stem = module.partition(".")
        assert package in PACKAGES and stem == command.removeprefix("x2vlm-").replace("-", "_"), (command, module)
        assert module in MODULES and MODULES[module].parent == ROOT / package, (command, module)
    with_main = {name for name, path in MODULES.items()
                 if any(isinstance(node, ast.FunctionDef) and node.name == "main"
                        for node in ast.parse(path.read_text(encoding="utf-8")).body)}
    assert with_main == set(scripts.values()), with_main ^ set(scripts.values())
