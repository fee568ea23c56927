"""Where the app keeps its data (platformdirs conventions; QUANTDESK_DATA_DIR overrides)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def data_dir() -> Path:
    env = os.environ.get("QUANTDESK_DATA_DIR")
    if env:
        return Path(env)
    return Path(platformdirs.user_data_dir("QuantDesk", appauthor=False))


def outputs_dir() -> Path:
    return data_dir() / "outputs"


def results_file() -> Path:
    return data_dir() / "results.json"
