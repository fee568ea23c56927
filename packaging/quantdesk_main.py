"""Entry point of the frozen app: the same as `quantdesk` (no arguments opens the window)."""

import multiprocessing
import os
import sys


def _restore_library_path() -> None:
    """On Linux the bootloader puts the app's own folder first on LD_LIBRARY_PATH (the old
    value is kept in LD_LIBRARY_PATH_ORIG). Programs the app starts, such as the file manager
    behind "Open folder", must not load the bundled Qt and C++ libraries: give them the
    user's value back. The worker is this executable again, whose bootloader sets it anew."""
    bundle = getattr(sys, "_MEIPASS", None)
    paths = os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)
    if not bundle or paths[0] != bundle:
        return
    original = os.environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is None:
        del os.environ["LD_LIBRARY_PATH"]
    else:
        os.environ["LD_LIBRARY_PATH"] = original


if __name__ == "__main__":
    multiprocessing.freeze_support()
    if sys.platform.startswith("linux"):
        _restore_library_path()
    from qtapp.cli import main

    sys.exit(main())
