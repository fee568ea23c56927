"""Step 6: try the result. The quantized model beside the original, the same prompt sent to
both, answers streamed token by token; loading and generating run off the UI thread."""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QMenu,
    QPlainTextEdit,
    QSpinBox,
    QSplitter,
    QTextBrowser,
    QWidget,
)

from qtapp.engine.quality import chat as chat_engine
from qtapp.engine.quality.chat import GenerationSettings, Message
from qtapp.gui import theme
from qtapp.gui.i18n import tr
from qtapp.gui.results_store import RunRecord
from qtapp.gui.state import AppState
from qtapp.gui.tasks import Task
from qtapp.gui.widgets.common import Card, PageHeader, button, label, page_layout, set_role

RENDER_MS = 60


class ChatPane(Card):
    """One model's side of the conversation."""

    state_changed = Signal()

    def __init__(self, role: str, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(role, parent)
        self.role = role
        self.state = state
        self.backend: Any = None
        self.model_spec = ""
        self.messages: list[Message] = []
        self.partial: str | None = None
        self.task: Task | None = None
        self.loading = False
        self.name = label(tr("Not loaded"), "BigValue")
        self.note = label("", "Muted", wrap=True)
        self.view = QTextBrowser()
        self.view.setOpenExternalLinks(False)
        self.status = label("", "Muted", wrap=True)
        self.body.addWidget(self.name)
        self.body.addWidget(self.note)
        self.body.addWidget(self.view, 1)
        self.body.addWidget(self.status)
        self._render_timer = QTimer(self)
        self._render_timer.setSingleShot(True)
        self._render_timer.setInterval(RENDER_MS)
        self._render_timer.timeout.connect(self.render)

    @property
    def busy(self) -> bool:
        return self.loading or self.task is not None

    def load(self, spec: str, title: str) -> None:
        if self.backend is not None and spec == self.model_spec:
            return
        self.close_backend()
        self.loading = True
        self.model_spec = spec
        self.name.setText(title)
        self.note.setText(spec)
        self._status(tr("Loading…"), "Muted")
        self.state_changed.emit()

        def done(backend: Any) -> None:
            self.loading = False
            self.backend = backend
            self.note.setText(tr("{kind} · template: {template}").format(
                kind=backend.kind, template=backend.template_note))
            self._status(tr("Ready"), "OkText")
            self.state_changed.emit()

        def failed(error: BaseException) -> None:
            self.loading = False
            self._status(tr("Could not load: {error}").format(error=error), "ErrorText")
            self.state_changed.emit()

        self.state.background.run(lambda ctx: chat_engine.open_chat(spec), done, failed)

    def send(self, text: str, settings: GenerationSettings) -> None:
        if self.backend is None or self.task is not None:
            return
        self.messages.append({"role": "user", "content": text})
        self.partial = ""
        self.render()
        backend, history = self.backend, list(self.messages)

        def work(ctx: Any) -> str:
            pieces = []
            for piece in backend.stream(history, settings, ctx.cancelled):
                pieces.append(piece)
                ctx.report(piece)
            return "".join(pieces)

        self._status(tr("Generating…"), "Muted")
        self.task = self.state.background.run(work, self._answered, self._failed,
                                              self._piece)
        self.state_changed.emit()

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def reset(self) -> None:
        self.stop()
        self.messages.clear()
        self.partial = None
        self.render()

    def close_backend(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def _piece(self, piece: str) -> None:
        if self.partial is not None:
            self.partial += piece
            if not self._render_timer.isActive():
                self._render_timer.start()

    def _answered(self, text: str) -> None:
        stopped = self.task is not None and self.task.ctx.cancelled.is_set()
        self.task = None
        self.messages.append({"role": "assistant", "content": text})
        self.partial = None
        self.render()
        self._status(tr("Stopped") if stopped else tr("Ready"), "OkText")
        self.state_changed.emit()

    def _failed(self, error: BaseException) -> None:
        self.task = None
        self.partial = None
        self.messages.pop()  # the user turn that got no answer
        self.render()
        self._status(tr("Generation failed: {error}").format(error=error), "ErrorText")
        self.state_changed.emit()

    def _status(self, text: str, role: str) -> None:
        set_role(self.status, role)
        self.status.setText(text)

    def transcript(self) -> str:
        """The answer text of the last assistant turn, including one still streaming."""
        if self.partial is not None:
            return self.partial
        answers = [m["content"] for m in self.messages if m["role"] == "assistant"]
        return answers[-1] if answers else ""

    def render(self) -> None:
        parts = []
        turns = list(self.messages)
        if self.partial is not None:
            turns.append({"role": "assistant", "content": self.partial + " ▍"})
        for m in turns:
            user = m["role"] == "user"
            who = tr("You") if user else tr("Model")
            bg = "#262a36" if user else theme.CARD
            text = html.escape(m["content"]).replace("\n", "<br>")
            parts.append(
                f"<table width='100%' cellspacing='0' cellpadding='10' "
                f"style='background:{bg}; margin-bottom:8px'><tr><td>"
                f"<span style='color:{theme.MUTED}; font-size:9pt'>{who}</span><br>"
                f"{text}</td></tr></table>")
        self.view.setHtml("".join(parts))
        bar = self.view.verticalScrollBar()
        bar.setValue(bar.maximum())


class PromptEdit(QPlainTextEdit):
    """Enter sends, Shift+Enter starts a new line."""

    submitted = Signal()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and not (
                event.modifiers() & Qt.KeyboardModifier.ShiftModifier):
            self.submitted.emit()
            return
        super().keyPressEvent(event)


class ChatPage(QWidget):
    fills_height = True  # the two chat panes share the window's height (no page scroll)

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        layout = page_layout(self)
        layout.addWidget(PageHeader(tr("Chat"), tr(
            "Ask the quantized model and the original the same question and compare.")))

        top = QHBoxLayout()
        top.addWidget(label(tr("Quantized model"), "Muted"))
        self.choice = QComboBox()
        # as wide as the row allows, not as wide as the longest run's name
        self.choice.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.choice.setMinimumContentsLength(24)
        self.choice.setPlaceholderText(tr("Finish a run, or open a .gguf file or a model "
                                          "folder"))
        top.addWidget(self.choice, 1)
        browse = button(tr("Open file or folder…"))
        menu = QMenu(browse)
        menu.addAction(tr("A GGUF file…"), self._browse_file)
        menu.addAction(tr("A model folder…"), self._browse_folder)
        browse.setMenu(menu)
        top.addWidget(browse)
        layout.addLayout(top)
        actions = QHBoxLayout()  # a second line: one is wider than a 1000 px window
        self.compare = QCheckBox(tr("Compare with the original"))
        self.compare.setChecked(True)
        actions.addWidget(self.compare)
        actions.addStretch(1)
        self.load_button = button(tr("Load"), "primary")
        self.load_button.clicked.connect(self.load_selected)
        actions.addWidget(self.load_button)
        layout.addLayout(actions)

        split = QSplitter(Qt.Orientation.Horizontal)
        self.original = ChatPane(tr("Original"), state)
        self.quantized = ChatPane(tr("Quantized"), state)
        split.addWidget(self.original)
        split.addWidget(self.quantized)
        layout.addWidget(split, 1)

        self.prompt = PromptEdit()
        self.prompt.setPlaceholderText(tr("Type a message; Enter sends, Shift+Enter adds a "
                                          "line"))
        self.prompt.setFixedHeight(70)
        self.prompt.submitted.connect(self.send)
        layout.addWidget(self.prompt)  # the whole width; its controls on the line below
        side_layout = QHBoxLayout()
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(8, 4096)
        self.max_tokens.setValue(200)
        self.max_tokens.setPrefix(tr("max "))
        self.max_tokens.setSuffix(tr(" tokens"))
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.1)
        self.temperature.setValue(0.0)
        self.temperature.setPrefix(tr("temperature "))
        self.temperature.setToolTip(tr("0 = greedy: the same answer every time, best for "
                                       "comparing the two models"))
        self.send_button = button(tr("Send"), "primary")
        self.send_button.clicked.connect(self.send)
        self.stop_button = button(tr("Stop"), "danger")
        self.stop_button.clicked.connect(self.stop)
        self.new_button = button(tr("New chat"))
        self.new_button.clicked.connect(self.reset)
        for w in (self.max_tokens, self.temperature):
            side_layout.addWidget(w)
        side_layout.addStretch(1)
        for w in (self.new_button, self.stop_button, self.send_button):
            side_layout.addWidget(w)
        layout.addLayout(side_layout)

        for pane in (self.original, self.quantized):
            pane.state_changed.connect(self._update_buttons)
        self.compare.toggled.connect(self.original.setVisible)
        state.results_changed.connect(self.refresh_choices)
        self.refresh_choices()
        self._update_buttons()

    def refresh_choices(self) -> None:
        current = self.choice.currentData()
        self.choice.clear()
        for r in reversed(self.state.results.records):
            self.choice.addItem(f"{r.model} · {r.method.upper()} {r.settings}", r)
        if current is not None:
            self._select(current)
        elif self.choice.count():
            self.choice.setCurrentIndex(0)  # the newest run
        self._update_buttons()

    def _select(self, target: Any) -> None:
        for i in range(self.choice.count()):
            data = self.choice.itemData(i)
            if data is target or (isinstance(data, RunRecord) and isinstance(target, RunRecord)
                                  and data.id == target.id):
                self.choice.setCurrentIndex(i)
                return

    def open_record(self, record: RunRecord) -> None:
        self.refresh_choices()
        self._select(record)
        self.load_selected()

    def _browse_file(self) -> None:
        file, _ = QFileDialog.getOpenFileName(self, tr("Open a GGUF file"), "",
                                              tr("GGUF (*.gguf);;All files (*)"))
        self._add_choice(file)

    def _browse_folder(self) -> None:
        self._add_choice(QFileDialog.getExistingDirectory(self, tr("Choose a model folder")))

    def _add_choice(self, path: str) -> None:
        if path:
            self.choice.addItem(path, path)
            self.choice.setCurrentIndex(self.choice.count() - 1)
            self._update_buttons()

    def load_selected(self) -> None:
        data = self.choice.currentData()
        if data is None:
            return
        if isinstance(data, RunRecord):
            self.quantized.load(data.out, f"{data.method.upper()} {data.settings}")
            if self.compare.isChecked():
                self.original.load(data.source, data.model)
        else:
            self.quantized.load(str(data), str(data).rsplit("/", 1)[-1])

    def panes(self) -> list[ChatPane]:
        panes = [self.quantized]
        if self.compare.isChecked():
            panes.insert(0, self.original)
        return [p for p in panes if p.backend is not None]

    def settings(self) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=self.max_tokens.value(),
                                  temperature=self.temperature.value(),
                                  repetition_penalty=1.1)

    def send(self) -> None:
        text = self.prompt.toPlainText().strip()
        panes = self.panes()
        if not text or not panes or any(p.busy for p in panes):
            return
        self.prompt.clear()
        for pane in panes:
            pane.send(text, self.settings())

    def stop(self) -> None:
        for pane in (self.original, self.quantized):
            pane.stop()

    def reset(self) -> None:
        for pane in (self.original, self.quantized):
            pane.reset()

    def _update_buttons(self) -> None:
        panes = (self.original, self.quantized)
        generating = any(p.task is not None for p in panes)
        ready = any(p.backend is not None for p in panes)
        self.send_button.setEnabled(ready and not any(p.busy for p in panes))
        self.stop_button.setEnabled(generating)
        self.load_button.setEnabled(self.choice.count() > 0
                                    and not any(p.loading for p in panes))

    def shutdown(self) -> None:
        self.stop()
