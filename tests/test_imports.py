"""Dependencies inside `specllm` run one way: no import cycle, function-local imports included.

Every module under `specllm/` is parsed with `ast`; every `import` / `from ... import` anywhere in it (module level,
inside functions, under `if TYPE_CHECKING`) that names a `specllm` module becomes an edge of the module graph.
`from . import x` is an edge to the submodule `x` when there is one, else to the package; `from .io import y` is an
edge to `specllm.io.y` when that is a module, else to `specllm.io`. Importing a submodule's parent package is not an
edge (Python does it implicitly; a package `__init__` that re-exports its submodules is no cycle by itself).
"""

from __future__ import annotations

import ast
from pathlib import Path

import specllm

PACKAGE_DIR = Path(specllm.__file__).resolve().parent


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file of the package tree at `root`."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_edges(modules: dict[str, Path], package: str) -> tuple[dict[str, dict[str, int]], list[str]]:
    """module -> {imported intra-package module: first line}, and the intra-package imports of no existing module."""
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    unresolved = []

    def inside(dotted: str) -> bool:
        return dotted == package or dotted.startswith(package + ".")

    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: list[tuple[str, int]] = []  # (module, line)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets += [(alias.name, node.lineno) for alias in node.names if inside(alias.name)]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = here.split(".")
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if not inside(base):
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    # a submodule when there is one (`from . import x`), else the module holding the name
                    targets.append((full if full in modules else base, node.lineno))
        for target, line in targets:
            if target not in modules:
                unresolved.append(f"{path}:{line}: {target}")
            else:
                graph[name].setdefault(target, line)
    return graph, unresolved


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (as a closed path a -> b -> ... -> a) per strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, {}):
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)

    cycles = []
    for component in components:
        members = set(component)
        start = component[0]
        # breadth-first from start inside the component back to start: the shortest cycle through it
        previous: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w == start:
                        found = v
                        break
                    if w in members and w not in previous:
                        previous[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [start]
        v = found
        while v != start:
            path.insert(1, v)
            v = previous[v]
        cycles.append([*path, start])
    return cycles


def describe(cycle: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> str:
    steps = [f"{a} -> {b} ({modules[a].name}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return "import cycle:\n    " + "\n    ".join(steps)


def test_no_import_cycle_inside_specllm():
    modules = module_files(PACKAGE_DIR, "specllm")
    graph, unresolved = import_edges(modules, "specllm")
    assert not unresolved, "imports of specllm modules that do not exist:\n" + "\n".join(unresolved)
    cycles = find_cycles(graph)
    report = "\n".join(describe(c, graph, modules) for c in cycles)
    print(report)
    assert not cycles, report


def test_graph_sees_every_module_and_known_edges():
    """The walker sees what it must: every module, local imports, `from . import x`, `from .io import name`."""
    modules = module_files(PACKAGE_DIR, "specllm")
    graph, _ = import_edges(modules, "specllm")
    assert {"specllm.cli", "specllm.infer", "specllm.predict", "specllm.io", "specllm.device"} <= set(modules)
    assert "specllm.predict" in graph["specllm.infer"] and "specllm.predict" in graph["specllm.train"]
    assert "specllm.infer" in graph["specllm.cli"]  # a function-local import in cli.py
    assert "specllm.io" in graph["specllm.infer"]  # `from .io import expand_inputs, iter_spectra`


def write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_synthetic_cycle_through_local_import_is_found(tmp_path):
    root = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from .b import f\n",
            "b.py": "def f():\n    from .sub import g\n",
            "sub/__init__.py": "from . import leaf\n",
            "sub/leaf.py": "def h():\n    import pkg.a\n",
            "c.py": "from .sub import leaf\nfrom . import a\n",
        },
    )
    modules = module_files(root, "pkg")
    graph, unresolved = import_edges(modules, "pkg")
    assert not unresolved
    assert graph["pkg.sub"] == {"pkg.sub.leaf": 1}  # `from . import leaf` in a package __init__
    assert set(graph["pkg.c"]) == {"pkg.sub.leaf", "pkg.a"}
    assert graph["pkg.b"] == {"pkg.sub": 2}  # function-local, `g` is a name in the package
    cycles = find_cycles(graph)
    assert cycles == [["pkg.a", "pkg.b", "pkg.sub", "pkg.sub.leaf", "pkg.a"]]
    text = describe(cycles[0], graph, modules)
    assert "pkg.sub.leaf -> pkg.a (leaf.py:2)" in text


def test_synthetic_acyclic_and_unresolved(tmp_path):
    root = write_package(
        tmp_path,
        {
            "__init__.py": "from .a import x\n",
            "a.py": "import os\nfrom .. import elsewhere\nx = 1\n",
            "b.py": "from . import a, name\nfrom .a import x\nfrom pkg import a as a2\nimport pkg.gone\nfrom .nope import y\n",
        },
    )
    modules = module_files(root, "pkg")
    graph, unresolved = import_edges(modules, "pkg")
    assert find_cycles(graph) == []
    assert graph["pkg.b"] == {"pkg.a": 1, "pkg": 1}  # `name` is no module: the name lies in the package
    assert graph["pkg"] == {"pkg.a": 1}
    assert graph["pkg.a"] == {}  # beyond the top package: not an edge inside it
    assert [u.rsplit(": ", 1)[1] for u in unresolved] == ["pkg.gone", "pkg.nope"]
