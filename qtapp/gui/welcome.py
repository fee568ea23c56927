"""The first-run welcome: what the app does, in five steps, and where it keeps things."""

from __future__ import annotations

from PySide6.QtCore import QT_TR_NOOP, QSettings, Qt
from PySide6.QtWidgets import QCheckBox, QDialog, QHBoxLayout, QVBoxLayout, QWidget

from qtapp.gui.i18n import tr
from qtapp.gui.paths import data_dir
from qtapp.gui.widgets.common import Card, button, label

STEPS = (
    (QT_TR_NOOP("Hardware"), QT_TR_NOOP(
        "QuantDesk looks at your CPU, memory and GPU, and recommends a method: AWQ or GPTQ "
        "for NVIDIA GPUs, GGUF for CPUs, Macs and small devices.")),
    (QT_TR_NOOP("Model"), QT_TR_NOOP(
        "Pick the small built-in demo model, a model folder, or a Hugging Face id.")),
    (QT_TR_NOOP("Method"), QT_TR_NOOP(
        "Check the settings: bits, group size, calibration data, mixed precision. Start is "
        "enabled once they make sense.")),
    (QT_TR_NOOP("Run"), QT_TR_NOOP(
        "Quantizing runs in the background, one block at a time; a chart shows the error of "
        "every layer as it goes. You can cancel at any time.")),
    (QT_TR_NOOP("Results and chat"), QT_TR_NOOP(
        "Compare size and perplexity with the original, open the output folder, and chat with "
        "both models side by side.")),
)
SETTING = "welcome/show"


def should_show() -> bool:
    return QSettings().value(SETTING, True, type=bool)


class WelcomeDialog(QDialog):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(tr("Welcome to QuantDesk"))
        self.setMinimumWidth(620)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(28, 24, 28, 20)
        layout.setSpacing(12)
        layout.addWidget(label(tr("Welcome to QuantDesk"), "PageTitle"))
        layout.addWidget(label(tr(
            "Make large language models smaller so they run on your own computer. Everything "
            "happens on this machine; nothing is uploaded."), "PageSubtitle", wrap=True))
        steps = Card()
        for i, (title, text) in enumerate(STEPS, 1):
            row = QHBoxLayout()
            number = label(str(i), "BigValue")
            number.setFixedWidth(26)
            number.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignHCenter)
            col = QVBoxLayout()
            col.setSpacing(1)
            col.addWidget(label(tr(title), "CardTitleLarge"))
            col.addWidget(label(tr(text), "Muted", wrap=True))
            row.addWidget(number)
            row.addLayout(col, 1)
            steps.body.addLayout(row)
            steps.body.addSpacing(4)
        layout.addWidget(steps)
        layout.addWidget(label(tr("Your results and quantized models are kept in {path}").format(
            path=data_dir()), "Muted", wrap=True))
        layout.addStretch(1)
        bottom = QHBoxLayout()
        self.show_again = QCheckBox(tr("Show this at startup"))
        self.show_again.setChecked(QSettings().contains(SETTING) and should_show())
        start = button(tr("Get started"), "primary")
        start.clicked.connect(self.accept)
        bottom.addWidget(self.show_again)
        bottom.addStretch(1)
        bottom.addWidget(start)
        layout.addLayout(bottom)

    def done(self, result: int) -> None:
        QSettings().setValue(SETTING, self.show_again.isChecked())
        super().done(result)
