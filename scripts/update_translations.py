"""Refresh the translation files after user-visible strings change.

    python scripts/update_translations.py

pyside6-lupdate collects every tr(...) / QT_TR_NOOP(...) string of qtapp/gui into
qtapp/resources/translations/quantdesk_<locale>.ts (keeping existing translations; edit new
ones with pyside6-linguist), then pyside6-lrelease compiles the .qm files the app loads.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "qtapp" / "resources" / "translations"
LOCALES = ("zh_CN",)


def tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def main() -> int:
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "qtapp" / "gui").rglob("*.py"))
    for locale in LOCALES:
        ts = FOLDER / f"quantdesk_{locale}.ts"
        subprocess.run([tool("pyside6-lupdate"), *sources, "-ts", str(ts), "-no-obsolete"],
                       check=True, cwd=ROOT)
        subprocess.run([tool("pyside6-lrelease"), str(ts), "-qm", str(ts.with_suffix(".qm"))],
                       check=True, cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
