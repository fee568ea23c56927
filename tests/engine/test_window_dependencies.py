"""`quantdesk` opens a window: its packages come with the default install, and where they
are missing anyway the command says so in one line instead of a traceback (issue 17,
item 10)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_window_packages_are_default_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower()
             for d in project["dependencies"]}
    assert {"pyside6-essentials", "pyqtgraph"} <= names
    assert "gui" in project["optional-dependencies"]  # `pip install 'quantdesk[gui]'` still works


@pytest.mark.parametrize("hidden,line", [
    (("PySide6", "pyqtgraph"),
     ("quantdesk: the window needs PySide6 and pyqtgraph, which are not installed; install "
      "them with: pip install 'quantdesk[gui]' (the subcommands work without: quantdesk "
      "--help)")),
    (("pyqtgraph",),
     ("quantdesk: the window needs pyqtgraph, which is not installed; install it with: pip "
      "install 'quantdesk[gui]' (the subcommands work without: quantdesk --help)")),
], ids=["both", "pyqtgraph"])
def test_without_the_window_packages_quantdesk_says_how_to_get_them(hidden, line, tmp_path):
    """A real `quantdesk` process in which importing the packages fails as if absent."""
    code = ("import sys\n"
            f"for name in {hidden!r}:\n"
            "    sys.modules[name] = None  # `import name` now raises ModuleNotFoundError\n"
            "from qtapp.cli import main\n"
            "sys.exit(main(['--smoke']))  # --smoke: a window that opens closes again\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       timeout=60, check=False,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), QT_QPA_PLATFORM="offscreen",
                                QUANTDESK_DATA_DIR=str(tmp_path / "data")))
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [line], r.stderr
    assert r.stdout == ""
