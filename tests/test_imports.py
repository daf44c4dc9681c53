"""Dependencies inside `specllm` run one way: no import cycle, function-local imports included.

Every module under `specllm/` is parsed with `ast`; every `import` / `from ... import` anywhere in it (module level,
inside functions, under `if TYPE_CHECKING`) that names a `specllm` module becomes an edge of the module graph.
`from . import x` is an edge to the submodule `x` when there is one, else to the package; `from .io import y` is an
edge to `specllm.io.y` when that is a module, else to `specllm.io`. Importing a submodule's parent package is not an
edge (Python does it implicitly; a package `__init__` that re-exports its submodules is no cycle by itself).

On that graph the layers hold (issue 25): commands import libraries, never the reverse, and no command imports another
command; no module imports the package `specllm` itself (see "layers" below).
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
    assert {"specllm.cli", "specllm.infer", "specllm.labelling", "specllm.predict", "specllm.io"} <= set(modules)
    assert "specllm.predict" in graph["specllm.infer"] and "specllm.predict" in graph["specllm.train"]
    assert "specllm.infer" in graph["specllm.cli"]  # a function-local import in cli.py
    assert "specllm.io" in graph["specllm.labelling"]  # `from .io import expand_inputs, iter_spectra, ...`
    assert "specllm.labelling" in graph["specllm.infer"] and "specllm.labelling" in graph["specllm.api"]


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


# ---------------------------------------------------------------- layers (issue 25 item 2)
#
# entry points (cli.py, __main__, and the `python -m specllm.X` tools no module imports: completions, docs, fitdomain)
#     import commands and libraries;
# commands (the modules cli.py's subcommands import: ingest, crossmatch, serialize, train, infer, benchmark, external,
#     fitdomain, plot; and external.compare, where compare-external's run lives) import libraries, never another
#     command or an entry point (external's other modules, reference, stats, figures, report, are libraries);
# libraries (everything else) import libraries only;
# the package `specllm` (__init__: the Python API's facade) is imported by no module inside it (`__version__` comes
# from `specllm._version`).

# The commands cli.py's subcommands call, as `command_modules()` derives them from cli.py: a new subcommand's module
# must be added here (and so be seen to be a command).
COMMANDS = {
    "specllm.ingest",
    "specllm.crossmatch",
    "specllm.serialize",
    "specllm.train",
    "specllm.infer",
    "specllm.benchmark",
    "specllm.external",
    "specllm.fitdomain",
    "specllm.plot",
}
# A command that is a package: the module holding its run function is the command too (one command with its face).
RUN_MODULES = {"specllm.external.compare": "specllm.external"}
# Libraries a subcommand function in cli.py imports besides its command (error type, stderr helper).
CLI_HELPERS = {"specllm.errors", "specllm.progress"}

# Edges that break the layers today, each with the issue that removes it. An entry that no longer exists fails the
# test too: take it out of this list once the edge is gone. None today: issue 25 item 2 removed the last ones (the
# labelling library left infer.py for specllm.labelling; plot and compare-external read predictions through
# external.reference; train takes __version__ from specllm._version).
ALLOWED: dict[tuple[str, str], str] = {}


def command_modules(modules: dict[str, Path], package: str = "specllm") -> set[str]:
    """The specllm modules imported inside cli.py's `@app.command` functions, less `CLI_HELPERS`."""
    tree = ast.parse(modules[f"{package}.cli"].read_text())
    found = set()
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        decorators = [d.func if isinstance(d, ast.Call) else d for d in node.decorator_list]
        if not any(isinstance(d, ast.Attribute) and d.attr == "command" for d in decorators):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.ImportFrom) and inner.level == 1:
                for alias in inner.names:
                    full = f"{package}.{inner.module}" if inner.module else f"{package}.{alias.name}"
                    found.add(full if full in modules else full.rpartition(".")[0])
    return found - CLI_HELPERS


def entry_points(modules: dict[str, Path], graph: dict[str, dict[str, int]], package: str = "specllm") -> set[str]:
    """cli, __main__, and every module with an `if __name__ == "__main__"` block that no module of the package
    imports (a `python -m` tool)."""
    imported = {t for targets in graph.values() for t in targets}
    tools = {
        name for name, path in modules.items() if '__name__ == "__main__"' in path.read_text() and name not in imported
    }
    return {f"{package}.cli", f"{package}.__main__"} | tools


def layer_of(name: str, commands: set[str], entries: set[str]) -> str:
    if name in entries:
        return "entry"
    if "." not in name:  # the package itself
        return "package"
    return "command" if name in commands else "library"


def layer_violations(
    graph: dict[str, dict[str, int]],
    modules: dict[str, Path],
    commands: set[str],
    entries: set[str],
    run_modules: dict[str, str] | None = None,
) -> dict[tuple[str, str], str]:
    """(importer, imported) -> what is wrong, for every edge that breaks the layers. `run_modules`: a command
    package's run module -> the package (both are that one command)."""
    run_modules = run_modules or {}
    commands = commands | set(run_modules)
    bad = {}
    for src, targets in graph.items():
        src_layer = layer_of(src, commands, entries)
        for dst, line in targets.items():
            dst_layer = layer_of(dst, commands, entries)
            where = f"{modules[src].relative_to(modules[src].parents[len(src.split('.')) - 1])}:{line}"
            if dst_layer == "package":
                bad[(src, dst)] = f"{where}: imports the package specllm (take __version__ from specllm._version)"
            elif src_layer == "entry":
                continue
            elif dst_layer == "entry":
                bad[(src, dst)] = f"{where}: a {src_layer} imports the entry point {dst}"
            elif src_layer == "library" and dst_layer == "command":
                bad[(src, dst)] = f"{where}: the library {src} imports the command {dst}"
            elif src_layer == "command" and dst_layer == "command":
                if run_modules.get(src, src) != run_modules.get(dst, dst):
                    bad[(src, dst)] = f"{where}: the command {src} imports another command, {dst}"
    return bad


def test_commands_are_what_cli_calls():
    modules = module_files(PACKAGE_DIR, "specllm")
    assert command_modules(modules) == COMMANDS


def test_layers_commands_import_libraries_never_the_reverse():
    modules = module_files(PACKAGE_DIR, "specllm")
    graph, _ = import_edges(modules, "specllm")
    entries = entry_points(modules, graph)
    assert {"specllm.cli", "specllm.completions"} <= entries and not entries & COMMANDS
    bad = layer_violations(graph, modules, COMMANDS, entries, RUN_MODULES)
    unexpected = [why for edge, why in sorted(bad.items()) if edge not in ALLOWED]
    assert not unexpected, "imports against the layers (commands import libraries, never the reverse):\n" + "\n".join(
        unexpected
    )
    stale = [f"{a} -> {b}" for a, b in sorted(ALLOWED) if (a, b) not in bad]
    assert not stale, "allowed layer breaks that no longer exist (take them out of ALLOWED):\n" + "\n".join(stale)


def test_layer_rule_on_a_synthetic_package(tmp_path):
    root = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "cli.py": "def run():\n    from . import cmd_a\n",
            "cmd_a.py": "from . import lib, cmd_b\n",
            "cmd_b.py": "from .lib import f\nfrom . import __version__\n",
            "lib.py": "def f():\n    from . import cmd_a\n",
            "sub/__init__.py": "from ..cli import run\n",
            "tool.py": 'from . import cmd_a\nif __name__ == "__main__":\n    pass\n',
            # a command package: its face, its run module, a library part; a command using the run module
            "ext/__init__.py": "from .run import go\n",
            "ext/run.py": "from .part import helper\n",
            "ext/part.py": "",
            "cmd_c.py": "from .ext.part import helper\nfrom .ext.run import go\n",
        },
    )
    modules = module_files(root, "pkg")
    graph, _ = import_edges(modules, "pkg")
    entries = entry_points(modules, graph, "pkg")
    assert entries == {"pkg.cli", "pkg.__main__", "pkg.tool"}
    commands = {"pkg.cmd_a", "pkg.cmd_b", "pkg.cmd_c", "pkg.ext"}
    bad = layer_violations(graph, modules, commands, entries, {"pkg.ext.run": "pkg.ext"})
    assert set(bad) == {
        ("pkg.cmd_a", "pkg.cmd_b"),  # a command imports another command
        ("pkg.cmd_c", "pkg.ext.run"),  # ... or another command's run module (its library part is fine)
        ("pkg.cmd_b", "pkg"),  # the package facade
        ("pkg.lib", "pkg.cmd_a"),  # a library imports a command
        ("pkg.sub", "pkg.cli"),  # a library imports the entry point
    }
    assert "cmd_b.py:2" in bad[("pkg.cmd_b", "pkg")]
