"""The layout holds: layers import only downward, no import cycle, small modules, and one home for each default."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ml.training.config import TrainConfig
from ml.training.presets import PRESETS

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ml", "mae", "dataset_loader", "bench")
# what each part may import of the project (besides itself); ml.SiamMAE, ml.utils and the command lines are faces
# over the layers and may import any of them
ALLOWED = {
    "mae": set(),
    "ml.files": set(),
    "dataset_loader": {"mae", "ml.files"},
    "ml.model": {"mae", "dataset_loader"},
    "ml.training": {"mae", "dataset_loader", "ml.files", "ml.model"},
    "ml.eval": {"mae", "dataset_loader", "ml.files", "ml.model", "ml.training"},
    "ml.notebook": {"mae", "dataset_loader", "ml.files", "ml.model", "ml.training", "ml.eval"},
}
MAX_LINES = 450
MAX_FILES_IN_ML = 11  # __init__, files, two faces, a file per command (train evaluate demo submit report export)
MAX_IMPORTS_IN_FUNCTIONS = 10


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool, str]]:
    """(imported project module, line, inside a function, the line's text) for every import of the project."""
    tree = ast.parse(path.read_text())
    lines = path.read_text().splitlines()
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                names = [f"{child.module}.{a.name}" for a in child.names] + [child.module]
            for name in names:
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name:
                    found.append((name, child.lineno, inside, lines[child.lineno - 1]))
            visit(child, inside)

    visit(tree, False)
    return found


def layer_of(module: str) -> str | None:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def test_layers_import_only_downward() -> None:
    modules = project_modules()
    wrong = []
    for name, path in modules.items():
        layer = layer_of(name)
        if layer is None:  # a face, a command line, bench: may use every layer
            continue
        for target, line, _, _ in imports_of(path, modules):
            target_layer = layer_of(target)
            if target_layer != layer and target_layer not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(REPO)}:{line} ({layer}) imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_project_modules() -> None:
    """Module-level imports form no cycle (strongly connected components of one module each, Tarjan)."""
    modules = project_modules()
    edges = {name: sorted({t for t, _, inside, _ in imports_of(path, modules) if not inside and t != name})
             for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(modules):
        if name not in index:
            connect(name)
    assert not cycles, cycles


def test_modules_are_small_and_ml_has_few_files() -> None:
    files = [p for package in (*PACKAGES, "tests") for p in (REPO / package).rglob("*.py")]
    long = [f"{p.relative_to(REPO)}: {n} lines" for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, "\n".join(long)
    assert len(list((REPO / "ml").glob("*.py"))) <= MAX_FILES_IN_ML


def test_imports_inside_functions_are_few_and_say_why() -> None:
    modules = project_modules()
    inner = [(path, line, text) for path in modules.values() for _, line, inside, text in imports_of(path, modules)
             if inside]
    assert len(inner) <= MAX_IMPORTS_IN_FUNCTIONS, inner
    unexplained = [f"{p.relative_to(REPO)}:{line}" for p, line, text in inner if "#" not in text]
    assert not unexplained, f"an import inside a function needs a one-line reason: {unexplained}"


# parameters whose default is one of the recipe's values: it must be a named constant, never a number restated
RECIPE_PARAMETERS = {"min_gap", "max_gap", "reference_fps", "mask_ratio", "scale", "crop_scale",
                     "decoder_embed_dim", "decoder_depth", "decoder_num_heads", "betas", "weight_decay",
                     "timeout_minutes"}


def literal_defaults(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args
            pairs = list(zip(args[len(args) - len(node.args.defaults):], node.args.defaults))
            pairs += [(a, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None]
            for arg, default in pairs:
                literal = isinstance(default, ast.Constant) and isinstance(default.value, (int, float)) or (
                    isinstance(default, ast.Tuple) and all(isinstance(e, ast.Constant) for e in default.elts))
                if arg.arg in RECIPE_PARAMETERS and literal:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}({arg.arg}=...)")
    return found


@pytest.mark.parametrize("package", ["ml", "dataset_loader"])
def test_recipe_defaults_are_named_constants(package: str) -> None:
    restated = [hit for p in (REPO / package).rglob("*.py") for hit in literal_defaults(p)]
    assert not restated, "\n".join(restated)


def test_presets_list_only_what_differs_from_the_defaults() -> None:
    defaults = TrainConfig().to_dict()
    restated = [f"{name}.{field}" for name, preset in PRESETS.items() for field, value in preset.items()
                if defaults[field] == (tuple(value) if isinstance(value, list) else value)]
    assert not restated, restated
