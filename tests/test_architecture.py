"""The shape of the code, checked: imports go one way and form no cycle, signatures stay short, user input never
escapes as a bare ValueError or SystemExit from library code, and shared mechanisms have one home."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"args_runtime": ROOT / "runtime", "args_export": ROOT / "export", "args_benchmarks": ROOT / "benchmarks"}
MAX_PARAMETERS = 7  # self/cls and a single options object count as one each


def _modules() -> dict[str, Path]:
    """Every module of the two packages, by dotted name."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> set[str]:
    """Modules of ours that `name` imports anywhere (functions included), except under `if TYPE_CHECKING:`."""
    tree = ast.parse(MODULES[name].read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
            for n in ast.walk(node)}
    here = name if _is_package(name) else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here
            for _ in range(max(node.level - 1, 0)):
                base = base.rpartition(".")[0]
            base = f"{base}.{node.module}" if node.level and node.module else (base if node.level else node.module or "")
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def test_every_relative_import_names_a_module_of_ours():
    """A module moved into a sub-package keeps no stale `from .x import` (which only fails when that code runs)."""
    broken = []
    for name, path in MODULES.items():
        here = name if _is_package(name) else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = here
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
                if target not in MODULES:
                    broken.append(f"{name}:{node.lineno} from {'.' * node.level}{node.module or ''}")
    assert not broken, broken


def test_the_runtime_never_imports_the_exporter_or_the_benchmarks():
    offenders = {m: sorted(i for i in deps if i.startswith(("args_export", "args_benchmarks"))) for m, deps in GRAPH.items()
                 if m.startswith("args_runtime")}
    assert not {m: d for m, d in offenders.items() if d}


def test_benchmarks_share_code_never_another_benchmarks_command_line():
    """Only cli.py (args-bench) builds on the benchmarks' parsers; a benchmark reuses another's functions, not its options."""
    command_line = {"add_arguments", "add_bundles_arguments", "parse_args", "build_parser", "main", "run"}
    found = []
    for name, path in MODULES.items():
        if not name.startswith("args_benchmarks") or name in ("args_benchmarks.cli", "args_benchmarks.__main__"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and any(a.name in command_line for a in node.names):
                found.append(f"{name}:{node.lineno} imports {[a.name for a in node.names if a.name in command_line]}")
            if isinstance(node, ast.Attribute) and node.attr in command_line and isinstance(node.value, ast.Name) \
                    and f"args_benchmarks.{node.value.id}" in MODULES and node.value.id != "module":
                found.append(f"{name}:{node.lineno} calls {node.value.id}.{node.attr}")
    assert not found, found


def _sections(text: str) -> dict[str, str]:
    """ARCHITECTURE.md's text under each package's heading (`## runtime/ …`), up to the next package's."""
    folders = {folder.name: package for package, folder in PACKAGES.items()}
    sections, current = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            folder = line[3:].split("/")[0].strip()
            current = folders.get(folder, current if folder not in ("cpp_ext",) else None)
        if current:
            sections[current] = sections.get(current, "") + line + "\n"
    return sections


def test_architecture_md_names_every_module():
    """Each module of the three packages is named in ARCHITECTURE.md, in its package's section, by its path inside the
    package (`serve/app.py`, `batch.py`): a new module without a line there fails here."""
    sections = _sections((ROOT / "ARCHITECTURE.md").read_text())
    missing = []
    for name, path in MODULES.items():
        package = name.split(".")[0]
        relative = path.relative_to(PACKAGES[package]).as_posix()
        if path.name == "__init__.py":
            continue
        if f"`{relative}`" not in sections.get(package, ""):
            missing.append(f"{package}: {relative}")
    assert not missing, "not in ARCHITECTURE.md: " + ", ".join(missing)


def test_the_import_graph_has_no_cycle():
    """A package importing its own submodules (its public face) is not a cycle; anything else that comes back is."""

    def edges(name: str) -> set[str]:
        return {d for d in GRAPH[name] if not (_is_package(name) and d.startswith(name + "."))}

    state: dict[str, int] = {}
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(edges(name)):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep] if dep in path else [name, dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" → ".join(c) for c in cycles)


def _functions():
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield name, node


def test_no_function_takes_more_than_seven_parameters():
    long = []
    for module, fn in _functions():
        a = fn.args
        count = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
        if count > MAX_PARAMETERS:
            long.append(f"{module}.{fn.name}: {count}")
    assert not long, long


@pytest.mark.parametrize("kind", ["ValueError", "SystemExit"])
def test_library_code_raises_typed_errors(kind):
    """User input gets an ArgsError subclass; only a main() exits (argparse's own exits happen there too). The library
    packages only: a benchmark is a command line of its own."""
    found = []
    for module, path in MODULES.items():
        if module.startswith("args_benchmarks"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                raised = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(raised, ast.Name) and raised.id == kind:
                    found.append(f"{module}:{node.lineno}")
    assert not found, found


@pytest.mark.parametrize("pattern, homes", [
    ("tempfile.mkdtemp", {"args_runtime.files"}),  # atomic writes
    ("tempfile.mkstemp", {"args_runtime.files"}),
    # optional-dependency probes, the engine registry, and the GPU box's report of every package's version
    ("importlib.import_module(", {"args_runtime.optional", "args_runtime.engines", "args_benchmarks.gpu.prepare"}),
    ("__version__ = ", {"args_runtime"}),
    ("torch.float16: ", set()),  # dtype names: args_runtime.dtypes (and torch's in args_export.loading), no other table
    ('"tensor(float)"', {"args_runtime.dtypes"}),
])
def test_each_shared_mechanism_has_one_home(pattern, homes):
    found = {name for name, path in MODULES.items() if pattern in path.read_text()}
    assert found == homes, sorted(found)
