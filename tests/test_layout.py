"""The package map of ARCHITECTURE.md ("Layout"), enforced.

``sam_hf`` is laid out by pipeline stage and a module imports only from the stages above it
(or its own), so a reader can learn the code top-down and a change low in the stack cannot
reach up into the training loop. These tests read the source with ``ast`` (nothing is
imported) and fail with the offending module and line, so the map cannot drift silently.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sam_hf"

# Top to bottom: a stage may import the stages before it and itself, never one after it.
STAGES = [
    "config",
    "data",
    "convert",
    "losses",
    "metrics",
    "models",
    "features",
    "hub",
    "training",
    "tasks",
    "eval",
    "recipe",
]
# Imports inside a function are for dependencies a user may not have installed.
OPTIONAL_DEPENDENCIES = {
    "wandb",
    "tensorboard",
    "torch.utils.tensorboard",
    "trackio",
    "bitsandbytes",
    "sam2",
    "sam3",
    "training",
    "skimage",
    "pytest",
}
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 500


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "sam_hf"


def imported_modules(node: ast.AST, current: str, known: dict[str, Path]) -> list[str]:
    """The sam_hf modules an import statement names (``from a import b`` may name module b)."""
    names = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            pkg = current.split(".")
            if not known[current].name == "__init__.py":
                pkg = pkg[:-1]
            pkg = pkg[: len(pkg) - (node.level - 1)]
            base = ".".join(pkg + ([base] if base else []))
        names = [base] + [f"{base}.{a.name}" for a in node.names]
    return [n for n in names if n in known]


def top_level_imports(tree: ast.Module) -> list[ast.stmt]:
    """Imports executed at import time (module body, incl. if/try blocks, not TYPE_CHECKING)."""
    out = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, (ast.If, ast.Try)):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            out.extend(n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return out


def parsed() -> dict[str, ast.Module]:
    return {m: ast.parse(p.read_text(), str(p)) for m, p in modules().items()}


def test_stages_cover_every_module():
    unknown = sorted({stage(m) for m in modules()} - set(STAGES) - {"sam_hf"})
    assert not unknown, f"add these packages to STAGES (and to ARCHITECTURE's map): {unknown}"


def test_imports_point_one_way():
    known, trees = modules(), parsed()
    wrong = []
    for mod, tree in trees.items():
        if mod == "sam_hf":
            continue
        here = STAGES.index(stage(mod))
        for node in ast.walk(tree):
            for target in imported_modules(node, mod, known):
                there = stage(target)
                if there != "sam_hf" and STAGES.index(there) > here:
                    wrong.append(f"{mod}:{node.lineno} imports {target} (stage {there} is below)")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    known, trees = modules(), parsed()
    graph = {
        m: {t for n in top_level_imports(tree) for t in imported_modules(n, m, known) if t != m}
        for m, tree in trees.items()
    }
    # A package's __init__ importing its children is not a cycle of meaning.
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t) :] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_imports_inside_functions_are_optional_dependencies():
    wrong = []
    for mod, tree in parsed().items():
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    names = [node.module or ""]
                else:
                    continue
                for name in names:
                    if not any(
                        name == d or name.startswith(d + ".") for d in OPTIONAL_DEPENDENCIES
                    ):
                        wrong.append(f"{mod}:{node.lineno} {fn.name}() imports {name}")
    assert not wrong, "move these imports to the module top:\n" + "\n".join(wrong)


@pytest.mark.parametrize("limit", [MAX_FUNCTION_LINES])
def test_functions_fit_on_a_screen(limit):
    long = []
    for mod, tree in parsed().items():
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = fn.end_lineno - fn.lineno + 1
                if n > limit:
                    long.append(f"{mod}:{fn.lineno} {fn.name}() is {n} lines")
    assert not long, "\n".join(long)


def test_files_stay_small():
    big = []
    for path in modules().values():
        n = len(path.read_text().splitlines())
        if n > MAX_FILE_LINES:
            big.append(f"{path.relative_to(PACKAGE.parent)} is {n} lines")
    assert not big, "\n".join(big)
