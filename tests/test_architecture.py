"""The shape of the three packages, read from their source with :mod:`ast` (nothing is imported).

* No import cycle among the project's modules, counting imports inside functions (lazy imports) and
  under ``if TYPE_CHECKING:``: dependencies point one way.
* No module over :data:`MAX_MODULE_LINES` lines.
* No function over :data:`MAX_FUNCTION_LINES` lines (``end_lineno - lineno + 1``, decorators not counted),
  but for the few in :data:`LONG_FUNCTIONS`.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("saliency", "focused_attacks", "evaluation")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
#: Functions allowed over MAX_FUNCTION_LINES: ``module:qualified name`` -> their length when listed.
#: Shorten one and remove it from here; the list may only shrink.
LONG_FUNCTIONS = {
    # The bisection over eps: one loop whose branches share its state.
    "focused_attacks.search:minimal_eps": 63,
}


@cache
def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, whether it is a package's ``__init__``)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


@cache
def tree(module: str) -> ast.Module:
    path, _ = modules()[module]
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names an import statement of ``module`` loads (``from a import b``: ``a.b`` when that is
    a module, else ``a``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules() else base for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its body (functions included)."""
    graph: dict[str, set[str]] = {}
    for module, (_, is_package) in modules().items():
        deps = set()
        for node in ast.walk(tree(module)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(module, is_package, node):
                    while target and target not in modules():  # a name inside a module: the module
                        target = target.rpartition(".")[0]
                    if target and target != module:
                        deps.add(target)
        graph[module] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per back edge of a depth-first search (empty when the graph is acyclic)."""
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def functions(node: ast.AST, prefix: str = ""):
    """``(qualified name, def node)`` of every function and method, nested ones included."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + child.name, child
            yield from functions(child, f"{prefix}{child.name}.")
        elif isinstance(child, ast.ClassDef):
            yield from functions(child, f"{prefix}{child.name}.")
        else:
            yield from functions(child, prefix)


def function_lengths() -> dict[str, int]:
    return {
        f"{module}:{name}": node.end_lineno - node.lineno + 1
        for module in modules()
        for name, node in functions(tree(module))
    }


def test_the_packages_are_found():
    assert {"saliency", "focused_attacks", "evaluation", "evaluation.cli", "focused_attacks.pgd"} <= set(
        modules()
    )
    assert "evaluation.records" in import_graph()["evaluation.experiment"]


def test_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_lazy_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_over_the_line_limit():
    lengths = {m: len(path.read_text(encoding="utf-8").splitlines()) for m, (path, _) in modules().items()}
    long = {m: n for m, n in lengths.items() if n > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_over_the_line_limit():
    lengths = function_lengths()
    long = {f: n for f, n in lengths.items() if n > MAX_FUNCTION_LINES and f not in LONG_FUNCTIONS}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them): {long}"
    grown = {f: lengths.get(f) for f, n in LONG_FUNCTIONS.items() if lengths.get(f, 0) > n}
    assert not grown, f"allowed long functions that grew (shorten them): {grown}"
    stale = [f for f in LONG_FUNCTIONS if lengths.get(f, 0) <= MAX_FUNCTION_LINES]
    assert not stale, f"no longer over {MAX_FUNCTION_LINES} lines: remove from LONG_FUNCTIONS: {stale}"
