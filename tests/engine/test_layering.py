"""The engine must stay free of Qt (an import contract, as napari keeps one)."""
import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "qtapp" / "engine"


def test_engine_never_imports_qt():
    offenders = []
    for path in ENGINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in ("PySide6", "PyQt5", "PyQt6", "pyqtgraph") or
                   n.startswith("qtapp.gui") for n in names):
                offenders.append(str(path.relative_to(ENGINE)))
    assert offenders == []
    assert len(list(ENGINE.rglob("*.py"))) > 5
