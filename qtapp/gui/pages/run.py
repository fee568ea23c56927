"""Step 4: the running job: progress with ETA, current layer, live error chart, log, Cancel."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from PySide6.QtCore import QT_TR_NOOP, Qt, QTimer, Signal
from PySide6.QtGui import QShowEvent, QTextCursor
from PySide6.QtWidgets import (
    QHBoxLayout,
    QPlainTextEdit,
    QProgressBar,
    QSplitter,
    QWidget,
)

from qtapp.engine import events as ev
from qtapp.engine.config import JobSpec
from qtapp.gui import theme
from qtapp.gui.engine_process import EngineProcess, Outcome
from qtapp.gui.format import format_duration, format_size, job_title
from qtapp.gui.i18n import tr
from qtapp.gui.state import AppState
from qtapp.gui.widgets.common import Card, button, label, page_layout, set_role

if TYPE_CHECKING:
    from qtapp.gui.widgets.layer_chart import LayerErrorChart

LOG_LINES = 3000
STAGE_WORDS = {"calibration": QT_TR_NOOP("Preparing calibration data"),
               "quantize": QT_TR_NOOP("Quantizing"), "export": QT_TR_NOOP("Writing the output"),
               "evaluate": QT_TR_NOOP("Measuring perplexity")}
STATUS_ROLES = {"running": "Muted", "result": "OkText", "failed": "ErrorText",
                "crashed": "ErrorText", "cancelled": "WarnText"}


class RunPage(QWidget):
    finished = Signal(object, object)  # Outcome, JobSpec
    results_requested = Signal()
    settings_requested = Signal()
    fills_height = True  # the chart and the log share the window's height (no page scroll)

    def __init__(self, state: AppState, engine: EngineProcess,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.engine = engine
        self.job: JobSpec | None = None
        self.outcome: Outcome | None = None
        self.t0 = 0.0
        self.total = 0
        self.last_eta: float | None = None
        self.eta_at = 0.0
        self.stage_name = ""  # the stage of the last progress event, and when it began
        self.stage_t0 = 0.0

        layout = page_layout(self)
        head = QHBoxLayout()
        titles = QWidget()
        tl = QHBoxLayout(titles)
        tl.setContentsMargins(0, 0, 0, 0)
        self.title = label(tr("No job yet"), "PageTitle")
        self.status_chip = label("", "Muted")
        tl.addWidget(self.title)
        tl.addSpacing(12)
        tl.addWidget(self.status_chip, 0, Qt.AlignmentFlag.AlignBottom)
        tl.addStretch(1)
        head.addWidget(titles, 1)
        self.cancel_button = button(tr("Cancel"), "danger")
        self.cancel_button.clicked.connect(self.cancel)
        self.results_button = button(tr("See results →"), "primary")
        self.results_button.clicked.connect(self.results_requested)
        self.settings_button = button(tr("Back to settings"))
        self.settings_button.clicked.connect(self.settings_requested)
        for b in (self.settings_button, self.cancel_button, self.results_button):
            head.addWidget(b, 0, Qt.AlignmentFlag.AlignTop)
        layout.addLayout(head)
        self.subtitle = label(tr("Choose a model and a method, then press Start quantizing."),
                              "PageSubtitle", wrap=True)
        layout.addWidget(self.subtitle)

        progress = Card()
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        line = QHBoxLayout()
        self.stage = label(tr("Waiting"), wrap=True)
        self.eta = label("", "Muted")
        line.addWidget(self.stage, 1)
        line.addWidget(self.eta)
        self.current = label("", "Muted")
        # MoE: which experts were calibrated on their own routed tokens and which took the
        # fallback (too few tokens: rounded to nearest), from the layer events' method
        self.experts = label("", "Muted", wrap=True)
        self.experts.setVisible(False)
        self.expert_methods: dict[str, str] = {}  # expert linear → method it was quantized by
        progress.body.addLayout(line)
        progress.body.addWidget(self.progress)
        progress.body.addWidget(self.current)
        progress.body.addWidget(self.experts)
        layout.addWidget(progress)

        self.error = Card()
        self.error.setObjectName("ErrorBanner")
        self.error_title = label("", "BannerTitle")
        self.error_text = label("", wrap=True)
        self.details_button = button(tr("Show details"))
        self.details_button.setCheckable(True)
        self.details = QPlainTextEdit()
        self.details.setReadOnly(True)
        self.details.setFont(theme.mono_font())
        self.details.setMaximumHeight(180)
        self.details.setVisible(False)
        self.details_button.toggled.connect(self.details.setVisible)
        self.error.body.addWidget(self.error_title)
        self.error.body.addWidget(self.error_text)
        self.error.body.addWidget(self.details_button, 0, Qt.AlignmentFlag.AlignLeft)
        self.error.body.addWidget(self.details)
        self.error.setVisible(False)
        layout.addWidget(self.error)

        split = QSplitter(Qt.Orientation.Vertical)
        self.chart_card = Card(tr("Relative output error per layer"))
        self._chart: LayerErrorChart | None = None
        log_card = Card(tr("Log"))
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setFont(theme.mono_font())
        self.log_view.setMaximumBlockCount(LOG_LINES)
        log_card.body.addWidget(self.log_view)
        split.addWidget(self.chart_card)
        split.addWidget(log_card)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        split.setSizes([420, 160])
        layout.addWidget(split, 1)

        self.clock = QTimer(self)
        self.clock.setInterval(1000)
        self.clock.timeout.connect(self._tick)

        engine.started.connect(self._on_started)
        engine.progress.connect(self._on_progress)
        engine.layer.connect(self._on_layer)
        engine.log.connect(self._on_log)
        engine.artifact.connect(self._on_artifact)
        engine.finished.connect(self._on_finished)
        self._set_buttons(running=False)

    @property
    def chart(self) -> LayerErrorChart:
        """Built on first use: pyqtgraph takes a while to import, the window opens faster."""
        if self._chart is None:
            from qtapp.gui.widgets.layer_chart import LayerErrorChart

            self._chart = LayerErrorChart()
            self.chart_card.body.addWidget(self._chart)
        return self._chart

    def showEvent(self, event: QShowEvent) -> None:
        self.chart  # noqa: B018 - build the chart when the page is first shown
        super().showEvent(event)

    # -- control -----------------------------------------------------------------------

    def start(self, job: JobSpec) -> None:
        self.job = job
        self.outcome = None
        self.chart.clear()
        self.log_view.clear()
        self.error.setVisible(False)
        self.details_button.setChecked(False)
        self.title.setText(job_title(job))
        self.subtitle.setText(tr("{model} → {out}").format(model=job.model, out=job.out))
        self._set_status("running", tr("running"))
        self.stage.setText(tr("Starting the worker…"))
        self.eta.setText("")
        self.current.setText("")
        self.expert_methods.clear()
        self.experts.setVisible(False)
        self.progress.setRange(0, 0)
        self.t0 = self.stage_t0 = time.monotonic()
        self.last_eta = None
        self.stage_name = ""
        self.clock.start()
        self.state.set_job_running(True)
        self._set_buttons(running=True)
        self.engine.start(job)

    def cancel(self) -> None:
        if self.engine.is_running():
            self.cancel_button.setEnabled(False)
            self.stage.setText(tr("Cancelling… (the worker stops after the current module)"))
            self.engine.cancel()

    # -- events ------------------------------------------------------------------------

    def _on_started(self, e: ev.Started) -> None:
        self.total = max(e.total_steps, 1)
        self.progress.setRange(0, self.total)
        self.progress.setValue(0)
        self.stage.setText(tr("Loading {model}").format(model=e.model))

    def _on_progress(self, e: ev.Progress) -> None:
        """Each stage has its own bar and time left: a new stage starts both afresh (the
        quality check after quantizing counts its windows, not the blocks before it)."""
        now = time.monotonic()
        if e.stage != self.stage_name:
            self.stage_name, self.stage_t0, self.last_eta = e.stage, now, None
        self.progress.setRange(0, max(e.total, 1))
        self.progress.setValue(min(e.step, e.total))
        words = tr(STAGE_WORDS.get(e.stage, e.stage.capitalize()))
        self.stage.setText(f"{words}: {e.message}" if e.message else words)
        if e.eta_s is not None:
            self.last_eta = float(e.eta_s)
        elif e.step > 0 and e.total > e.step:
            self.last_eta = (now - self.stage_t0) / e.step * (e.total - e.step)
        elif e.step >= e.total:
            self.last_eta = None
        self.eta_at = now
        self._tick()

    def _on_layer(self, e: ev.Layer) -> None:
        self.chart.add_layer(e)
        self.current.setText(tr("{module} · {bits}-bit · relative error {err:.2e} · "
                                "{secs:.2f} s").format(module=e.module, bits=e.bits,
                                                       err=e.rel_error, secs=e.seconds))
        if ".experts." in e.module and self.job is not None and self.job.method != "rtn":
            self.expert_methods[e.module] = e.method
            self._show_experts()

    def _show_experts(self) -> None:
        """"Experts: N calibrated · M fallback", the fallback experts in the tooltip."""
        assert self.job is not None
        fallback = [m for m, how in self.expert_methods.items() if how != self.job.method]
        self.experts.setText(tr("Experts: {ok} linears calibrated on their own tokens · "
                                "{few} fallback (too few tokens: rounded to nearest)").format(
            ok=len(self.expert_methods) - len(fallback), few=len(fallback)))
        self.experts.setToolTip(tr("Fallback (too few calibration tokens routed to them):")
                                + "\n" + "\n".join(fallback) if fallback else "")
        self.experts.setVisible(True)

    def _on_log(self, e: ev.Log) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(e.t))
        level = "" if e.level in ("info", "notice") else f"{e.level.upper()}: "
        self.log_view.appendPlainText(f"{stamp}  {level}{e.message}")
        self.log_view.moveCursor(QTextCursor.MoveOperation.End)

    def _on_artifact(self, e: ev.Artifact) -> None:
        self._on_log(ev.Log(level="info", message=tr("wrote {path} ({size})").format(
            path=e.path, size=format_size(e.bytes)), t=e.t))

    def _on_finished(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.clock.stop()
        self.chart.flush()
        self.state.set_job_running(False)
        self._set_buttons(running=False)
        elapsed = format_duration(time.monotonic() - self.t0)
        if outcome.ok:
            self._set_status("result", tr("done in {t}").format(t=elapsed))
            self.progress.setRange(0, 1)
            self.progress.setValue(1)
            r = outcome.result
            ppl = r.quality.ppl if r is not None and r.quality is not None else None
            size = r.sizes.bytes if r is not None and r.sizes is not None else 0
            self.stage.setText(tr("Finished: {size}{ppl}").format(
                size=format_size(size),
                ppl=tr(", perplexity {p:.2f}").format(p=ppl) if ppl is not None else ""))
            self.eta.setText("")
        else:
            role = "cancelled" if outcome.status == "cancelled" else outcome.status
            words = {"cancelled": tr("cancelled"), "failed": tr("failed"),
                     "crashed": tr("worker crashed")}[role]
            self._set_status(role, words)
            self.eta.setText("")
            if outcome.status == "cancelled":
                self.stage.setText(outcome.message)
            else:  # the error banner below says what went wrong, once and in full
                self.stage.setText(tr("Stopped while: {stage}").format(
                    stage=self.stage.text()) if self.stage_name else tr("Stopped"))
                self._show_error(outcome)
        if self.job is not None:
            self.finished.emit(outcome, self.job)

    def _show_error(self, outcome: Outcome) -> None:
        self.error_title.setText(tr("The job failed") if outcome.status == "failed"
                                 else tr("The engine worker crashed"))
        self.error_text.setText(outcome.message)
        details = "\n\n".join(p for p in (outcome.detail, outcome.stderr_tail and
                                          tr("Last lines the worker wrote to stderr:\n")
                                          + outcome.stderr_tail) if p)
        self.details.setPlainText(details or tr("(the worker wrote nothing to stderr)"))
        self.error.setVisible(True)

    def _tick(self) -> None:
        elapsed = time.monotonic() - self.t0
        text = tr("elapsed {t}").format(t=format_duration(elapsed))
        if self.last_eta is not None and self.engine.is_running():
            left = self.last_eta - (time.monotonic() - self.eta_at)
            text += (tr(" · about {t} left").format(t=format_duration(left)) if left >= 1
                     else tr(" · almost done"))
        self.eta.setText(text)

    def _set_status(self, role: str, text: str) -> None:
        set_role(self.status_chip, STATUS_ROLES.get(role, "Muted"))
        self.status_chip.setText(text)

    def _set_buttons(self, running: bool) -> None:
        self.cancel_button.setVisible(running)
        self.cancel_button.setEnabled(running)
        self.results_button.setVisible(not running and self.outcome is not None
                                       and self.outcome.ok)
        self.settings_button.setVisible(not running)
