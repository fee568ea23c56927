"""What the pages share: hardware, the chosen model, the advice, finished runs."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Signal

from qtapp.engine.planning.advisor import RUN_CTX, Advice, ModelShape, advise
from qtapp.engine.planning.hardware import Hardware
from qtapp.gui.results_store import ResultsStore
from qtapp.gui.tasks import Background


class AppState(QObject):
    hardware_changed = Signal(object)
    model_changed = Signal(object)
    advice_changed = Signal(object)
    results_changed = Signal()
    busy_changed = Signal(bool)

    def __init__(self, background: Background, results: ResultsStore,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.background = background
        self.results = results
        self.hardware: Hardware | None = None
        self.model: Any = None  # engine.sources.ModelInfo
        self.shape: ModelShape | None = None
        self.goal = "speed"
        self.target: str | None = None
        self.ctx = RUN_CTX
        self.advice: Advice | None = None
        self.job_running = False

    def set_hardware(self, hw: Hardware) -> None:
        self.hardware = hw
        self.hardware_changed.emit(hw)
        self._readvise()

    def set_model(self, info: Any) -> None:
        self.model = info
        self.shape = None if info is None else ModelShape.from_config(
            info.config, name=info.name, n_params=info.n_params)
        self.model_changed.emit(info)
        self._readvise()

    def set_preferences(self, goal: str, target: str | None, ctx: int) -> None:
        if (goal, target, ctx) != (self.goal, self.target, self.ctx):
            self.goal, self.target, self.ctx = goal, target, ctx
            self._readvise()

    def set_job_running(self, running: bool) -> None:
        self.job_running = running
        self.busy_changed.emit(running)

    def _readvise(self) -> None:
        if self.hardware is None:
            return
        self.advice = advise(self.hardware, self.shape, self.goal, self.target, self.ctx,
                             config=getattr(self.model, "config", None))
        self.advice_changed.emit(self.advice)
