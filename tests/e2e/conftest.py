"""End-to-end tests drive the real window headless (offscreen Qt), with app data in tmp."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


from qt_isolation import isolated_user_data  # noqa: F401 (an autouse fixture)


