"""The package's layer order: a module imports only from its own layer or the layers below it, function-local
imports included (read from the source, so an import hidden inside a function counts too)."""

import ast
from pathlib import Path

import internal_rl

# Lowest first. Each package is one layer; cli.py sits on top.
LAYERS = ("common", "envs", "data", "models", "metacontroller", "rl", "analysis", "pipeline", "distributed", "cli")
PACKAGE = Path(internal_rl.__file__).parent


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name inside the package (None outside it, or for the package itself)."""
    parts = module.split(".")
    if parts[0] != "internal_rl" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


def upward_imports(source: str, layer: str) -> list[str]:
    """The modules `source` (a module of `layer`) imports from higher layers."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else (
            [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
        for name in names:
            target = layer_of(name)
            if target is not None and LAYERS.index(target) > LAYERS.index(layer):
                found.append(name)
    return found


def test_no_module_imports_from_a_higher_layer():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = layer_of(".".join(("internal_rl", *path.relative_to(PACKAGE).with_suffix("").parts)))
        if layer is not None:
            violations += [f"{path.relative_to(PACKAGE)} imports {name}" for name in upward_imports(path.read_text(), layer)]
    assert not violations, "\n".join(violations)


def test_the_check_sees_a_planted_upward_import_even_inside_a_function():
    planted = "def f():\n    from internal_rl.pipeline.report import write_report\n    return write_report\n"
    assert upward_imports(planted, "models") == ["internal_rl.pipeline.report"]
    assert upward_imports("import internal_rl.rl.training\n", "envs") == ["internal_rl.rl.training"]
    assert upward_imports("from internal_rl.common.errors import check\n", "rl") == []
