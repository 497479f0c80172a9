"""The architecture, checked on the source: layers import one way, no import cycles, no path tricks, Hub files
self-contained, and one implementation of each shared primitive."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Source folder -> import name, lowest layer first. A module may import its own layer and the layers before it.
LAYERS: dict[str, str] = {
    "kernels": "astromer_kernels",
    "modeling_astromer": "modeling_astromer",
    "hub_datasets": "hub_datasets",
    "train": "astromer_train",
    "astromer_app": "astromer_app",
}
RANK = {package: rank for rank, package in enumerate(LAYERS.values())}
#: Shipped as Hub remote code: they may import only each other, the standard library and these packages.
HUB_FILES = ("configuration_astromer", "modeling_astromer", "feature_extraction_astromer", "pipeline_astromer", "errors")
HUB_THIRD_PARTY = {"torch", "numpy", "transformers", "huggingface_hub"}
#: Optional dependencies: the only packages a function may import locally.
OPTIONAL_DEPENDENCIES = {"triton", "tensorboard", "light_curve", "onnx", "onnxruntime", "onnxscript", "torch"}


@dataclass(frozen=True)
class Import:
    target: str  # absolute module name
    line: int
    module_level: bool


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module
    is_package: bool

    @property
    def package(self) -> str:
        return self.name.split(".")[0]

    @property
    def is_script(self) -> bool:
        """Benchmarks are scripts at the top of the stack: they may import any layer, and nothing imports them."""
        return ".benchmarks" in self.name


def _modules() -> dict[str, Module]:
    modules = {}
    for folder, package in LAYERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            name = ".".join([package, *parts])
            modules[name] = Module(name, path, ast.parse(path.read_text(), str(path)), is_package)
    return modules


MODULES = _modules()


def _function_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes that sit inside a function body."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside.update(id(child) for child in ast.walk(node) if child is not node)
    return inside


def _imports(module: Module) -> Iterator[Import]:
    in_function = _function_nodes(module.tree)
    base = module.name if module.is_package else module.name.rpartition(".")[0]
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno, id(node) not in in_function)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                source = ".".join(anchor + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                target = candidate if candidate in MODULES else source
                yield Import(target, node.lineno, id(node) not in in_function)


def _project_imports(module: Module) -> Iterator[Import]:
    return (i for i in _imports(module) if i.target.split(".")[0] in RANK)


def _loaded_with(target: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a``, ``a.b`` and ``a.b.c``."""
    parts = target.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in MODULES]


def test_every_package_is_seen():
    assert {m.package for m in MODULES.values()} == set(LAYERS.values())
    assert "modeling_astromer.modeling_astromer" in MODULES and "astromer_train.data" in MODULES


def test_layers_import_one_way():
    upward = []
    for module in MODULES.values():
        if module.is_script:
            continue
        for imported in _project_imports(module):
            if RANK[imported.target.split(".")[0]] > RANK[module.package]:
                upward.append(f"{module.path.relative_to(REPO)}:{imported.line} imports {imported.target}")
    assert not upward, "a lower layer imports a higher one:\n" + "\n".join(upward)


def test_nothing_imports_benchmark_scripts():
    offenders = [
        f"{module.name} imports {imported.target}"
        for module in MODULES.values()
        for imported in _project_imports(module)
        if ".benchmarks" in imported.target
    ]
    assert not offenders


def test_no_module_level_import_cycles():
    graph = {
        name: {loaded for i in _project_imports(module) if i.module_level for loaded in _loaded_with(i.target)} - {name}
        for name, module in MODULES.items()
    }
    for name, module in MODULES.items():  # a submodule's import first runs its package's __init__
        parent = name.rpartition(".")[0]
        if parent in MODULES and not module.is_package:
            graph[name].add(parent)
    # a package importing its own submodule is how packages work; only the reverse direction closes a cycle
    for name in graph:
        graph[name] = {t for t in graph[name] if not (MODULES[name].is_package and t.startswith(name + "."))}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "module-level import cycles:\n" + "\n".join(cycles)


def test_no_path_edits_or_dynamic_imports_of_project_code():
    offenders = []
    for module in MODULES.values():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                offenders.append(f"{module.path.relative_to(REPO)}:{node.lineno} touches sys.path")
            if isinstance(node, ast.Attribute) and node.attr == "import_module":
                offenders.append(f"{module.path.relative_to(REPO)}:{node.lineno} calls importlib.import_module")
            if isinstance(node, ast.Name) and node.id == "__import__":
                offenders.append(f"{module.path.relative_to(REPO)}:{node.lineno} calls __import__")
    assert not offenders, "\n".join(offenders)
    assert not list((REPO / "train").glob("_bootstrap*.py"))


@pytest.mark.parametrize("name", HUB_FILES)
def test_hub_files_are_self_contained(name):
    module = MODULES[f"modeling_astromer.{name}"]
    for node in ast.walk(module.tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            assert node.level == 1 and (node.module or "") in HUB_FILES, f"{name}: from {'.' * node.level}{node.module}"
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for imported in names:
                top = imported.split(".")[0]
                assert top not in RANK, f"{name}.py imports {imported}: Hub code cannot import this package"
                assert top in HUB_THIRD_PARTY or top in _stdlib(), f"{name}.py imports {imported}"


def _stdlib() -> frozenset[str]:
    import sys

    return frozenset(sys.stdlib_module_names) | {"__future__"}


def test_function_local_imports_are_optional_dependencies():
    offenders = [
        f"{module.path.relative_to(REPO)}:{imported.line} imports {imported.target} inside a function"
        for module in MODULES.values()
        for imported in _imports(module)
        if not imported.module_level and imported.target.split(".")[0] not in OPTIONAL_DEPENDENCIES
    ]
    assert not offenders, "\n".join(offenders)


def _modules_where(predicate) -> list[str]:
    return sorted(
        str(m.path.relative_to(REPO)) for m in MODULES.values() if any(predicate(node) for node in ast.walk(m.tree))
    )


def _calls(owner: str, attribute: str):
    return lambda node: (
        isinstance(node, ast.Attribute) and node.attr == attribute and getattr(node.value, "id", None) == owner
    )


def _defines(name: str):
    return lambda node: isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name


def test_one_home_for_atomic_writes_and_the_masked_crc():
    wire_format = ["hub_datasets/wire_format.py"]
    assert _modules_where(lambda node: isinstance(node, ast.Constant) and node.value == 0xA282EAD8) == wire_format
    assert _modules_where(_defines("masked_crc32c")) == wire_format
    assert _modules_where(_defines("read_varint")) == wire_format
    for owner, attribute in (("tempfile", "mkstemp"), ("tempfile", "mkdtemp"), ("os", "umask")):
        assert _modules_where(_calls(owner, attribute)) == ["hub_datasets/atomic.py"], f"{owner}.{attribute}"
