"""The window (PySide6). Importing it first repairs what the installed PySide6 gets wrong."""

from qtapp.gui.qtcompat import install as _install_qt_fixes

_install_qt_fixes()
