"""The layers of docs/architecture.md, checked on the code: each folder imports only the layers below it."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "samullm_lc"
LAYERS = {"costmodel": 1, "graph": 2, "planner": 3, "tinymodels": 3, "runtime": 4, "profiling": 5,
          "langchain": 6, "cli": 7}
"""Each folder's rank: it may import folders of a lower rank (and the shared modules), never its own rank or above."""
SHARED = {"errors", "limits", "validated", "user_files", "cache"}
"""Top-level modules every layer may use; they import only each other."""
MAX_MODULE_LINES = 420
"""About 400 lines; a module over it says in its docstring which one concern earns its size."""
EARNED = "size is earned"


def _imported_parts(tree: ast.AST) -> set[str]:
    """The first part below ``samullm_lc`` of every module the tree imports (``from samullm_lc import x``: x)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "samullm_lc":
            parts = node.module.split(".")
            found.update([parts[1]] if len(parts) > 1 else [alias.name for alias in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names
                         if a.name.startswith("samullm_lc.") and len(a.name.split(".")) > 1)
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_import_points_down_the_layers(path):
    relative = path.relative_to(PACKAGE)
    owner = relative.parts[0] if len(relative.parts) > 1 else relative.stem
    imported = _imported_parts(ast.parse(path.read_text())) - {owner}
    if owner in SHARED:
        assert imported <= SHARED, f"{relative} imports {sorted(imported - SHARED)}; shared modules import only each other"
        return
    assert owner in LAYERS, f"{relative}: a new top-level module or folder; give it a layer in this test and the docs"
    upward = {part for part in imported - SHARED if LAYERS.get(part, 99) >= LAYERS[owner]}
    assert not upward, f"{relative} ({owner}) imports {sorted(upward)}, which are not below it"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_long_module_says_why(path):
    text = path.read_text()
    if text.count("\n") > MAX_MODULE_LINES:
        assert EARNED in (ast.get_docstring(ast.parse(text)) or "").replace("\n", " "), (
            f"{path.relative_to(PACKAGE)} has {text.count(chr(10))} lines: split it, or say in its docstring which "
            f"one concern its {EARNED!r} by")
