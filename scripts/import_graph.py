"""The package's import graph, read from the source: how many modules, import edges between them, edges
that climb the layer order (tests/test_layers.py fails on any), and imports written inside functions (which
hide an edge from a module's header).

    python scripts/import_graph.py [PACKAGE_DIR]     (default: internal_rl)

Prints the figures, each upward edge, and for every layer the layers it imports.
"""

import ast
import sys
from pathlib import Path

# Lowest first, as in tests/test_layers.py; cli.py sits on top.
LAYERS = ("common", "envs", "data", "models", "metacontroller", "rl", "analysis", "pipeline", "distributed", "cli")


def module_name(package: Path, path: Path) -> str:
    """The dotted name of the module at `path` inside `package`."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str | None:
    """The layer of a dotted module name of the package (None for the package itself and other modules)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def package_imports(tree: ast.AST, package: str) -> list[tuple[str, bool]]:
    """(imported module, whether the import sits inside a function) for every import of `package` in `tree`."""
    local = {id(inner) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
             for inner in ast.walk(node) if isinstance(inner, (ast.Import, ast.ImportFrom))}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(name, id(node) in local) for name in names if name.split(".")[0] == package]
    return found


def main(package: Path) -> None:
    modules = {module_name(package, path): path for path in sorted(package.rglob("*.py"))}
    edges, upward, local = set(), set(), 0
    for module, path in modules.items():
        for target, is_local in package_imports(ast.parse(path.read_text()), package.name):
            local += is_local
            edges.add((module, target))
            a, b = layer(module), layer(target)
            if a and b and LAYERS.index(b) > LAYERS.index(a):
                upward.add((module, target))
    layer_edges = {(layer(a), layer(b)) for a, b in edges if layer(a) and layer(b) and layer(a) != layer(b)}
    print(f"modules: {len(modules)}")
    print(f"module edges: {len(edges)}")
    print(f"layer edges: {len(layer_edges)}")
    print(f"upward edges: {len(upward)}")
    for a, b in sorted(upward):
        print(f"  {a} -> {b}")
    print(f"function-local imports of the package: {local}")
    print("layer -> layers it imports:")
    for name in LAYERS:
        below = sorted({b for a, b in layer_edges if a == name}, key=LAYERS.index)
        print(f"  {name}: {', '.join(below) or '-'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "internal_rl"))
