"""The shape of the house, checked on every change: layers, import circles, file sizes.

Imports are read from the source (module level only: an import inside a function is a lazy
dependency, not a layer); nothing here imports the project.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("neuro_opt", "sweeps", "hardware")
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _module_level_imports(path: Path, name: str, is_package: bool) -> set[str]:
    """Modules imported at module level (``if TYPE_CHECKING:`` blocks excluded)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                # `from pkg import module` depends on the module; `from module import name` on the module
                found.update(f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for h in getattr(node, "handlers", []):
                    visit(h.body)

    visit(tree.body)
    return found


MODULES = _modules()


def _graph() -> dict[str, set[str]]:
    mods = MODULES
    graph = {}
    for name, path in mods.items():
        imported = _module_level_imports(path, name, path.name == "__init__.py")
        graph[name] = {m for m in imported if m in mods and m != name}
    return graph


def test_no_file_in_the_packages_is_over_500_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _modules().values()}
    assert sizes and not {f: n for f, n in sizes.items() if n > MAX_LINES}


def test_no_import_circle():
    graph = _graph()
    assert "sweeps.runner" in graph and graph["sweeps.runner"]  # the reader found the imports
    state: dict[str, int] = {}
    circles = []

    def walk(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    assert not circles, " ; ".join(" -> ".join(c) for c in circles)


@pytest.mark.parametrize("forbidden", ["ray", "mlflow", "hydra", "optuna"])
def test_the_science_library_imports_no_infrastructure(forbidden):
    mods = _modules()
    offenders = []
    for name, path in mods.items():
        if not name.startswith("neuro_opt"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):  # anywhere, lazy imports included
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == forbidden or n.startswith(forbidden + ".") for n in names):
                offenders.append(name)
    assert len(mods) > 50 and not offenders


def test_one_matern_kernel():
    """The Matérn-5/2 formula is written once (neuro_opt.gp.kernels); every GP calls it."""
    defining = [str(p.relative_to(ROOT)) for p in _modules().values()
                if "(5.0 / 3.0)" in p.read_text() or "5.0 / 3.0 *" in p.read_text()]
    assert defining == ["neuro_opt/gp/kernels.py"]
