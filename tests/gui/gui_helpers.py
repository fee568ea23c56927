"""Helpers shared by the GUI tests (a module with a unique name: every conftest is
"conftest", so tests cannot import from theirs)."""

from __future__ import annotations

import sys
from pathlib import Path

FAKE_WORKER = Path(__file__).with_name("fake_worker.py")


def fake_command(mode: str, *extra: str):
    """A command factory for EngineProcess (and the worker client) that runs the scripted
    fake worker; like worker_command, `plan=True` asks for a plan run."""
    def command(job_path: str, plan: bool = False) -> list[str]:
        return [sys.executable, str(FAKE_WORKER), "--job", job_path, "--mode", mode, *extra,
                *(["--plan"] if plan else [])]

    return command
