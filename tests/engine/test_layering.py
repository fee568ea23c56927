"""The import contracts of pyproject.toml ([tool.importlinter]) hold: the engine imports no Qt
and nothing of the GUI or the command line, the command line does not import the GUI, and
sibling modules import each other without cycles. `make lint` runs the same check."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept():
    run = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
         "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout
