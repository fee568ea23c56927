"""Small building blocks every page uses: page header, card, key-value grid, buttons."""

from __future__ import annotations

from PySide6.QtCore import QEvent, Qt
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QScrollArea,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from qtapp.gui.i18n import tr


def label(text: str = "", name: str = "", wrap: bool = False) -> QLabel:
    w = QLabel(text)
    if name:
        w.setObjectName(name)
    w.setWordWrap(wrap)
    w.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return w


def button(text: str, kind: str = "", tooltip: str = "") -> QPushButton:
    b = QPushButton(text)
    if kind:
        b.setProperty("kind", kind)
    if tooltip:
        b.setToolTip(tooltip)
    b.setCursor(Qt.CursorShape.PointingHandCursor)
    return b


class Card(QFrame):
    """A rounded panel with an optional small caps title."""

    def __init__(self, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("Card")
        self.body = QVBoxLayout(self)
        self.body.setContentsMargins(16, 14, 16, 14)
        self.body.setSpacing(8)
        if title:
            self.body.addWidget(label(title.upper(), "CardTitle"))


class PageHeader(QWidget):
    def __init__(self, title: str, subtitle: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 4)
        layout.setSpacing(2)
        self.title = label(title, "PageTitle")
        self.subtitle = label(subtitle, "PageSubtitle", wrap=True)
        layout.addWidget(self.title)
        if subtitle:
            layout.addWidget(self.subtitle)


class KeyValues(QWidget):
    """A two-column grid of muted keys and values, updated by key. The keys are the
    untranslated source strings (marked with QT_TR_NOOP): the grid shows tr(key) and follows a
    language change, while callers keep addressing the rows by the stable source key."""

    def __init__(self, keys: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setHorizontalSpacing(18)
        grid.setVerticalSpacing(6)
        self.keys: dict[str, QLabel] = {}
        self.values: dict[str, QLabel] = {}
        for row, key in enumerate(keys):
            self.keys[key] = label(tr(key), "Muted")
            grid.addWidget(self.keys[key], row, 0, Qt.AlignmentFlag.AlignTop)
            value = label("—", wrap=True)
            grid.addWidget(value, row, 1)
            self.values[key] = value
        grid.setColumnStretch(1, 1)

    def set(self, key: str, value: str) -> None:
        self.values[key].setText(value)

    def text(self, key: str) -> str:
        return self.values[key].text()

    def key_label(self, key: str) -> QLabel:
        return self.keys[key]

    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.LanguageChange:
            for key, shown in self.keys.items():
                shown.setText(tr(key))
        super().changeEvent(event)


def page_layout(page: QWidget) -> QVBoxLayout:
    layout = QVBoxLayout(page)
    layout.setContentsMargins(28, 22, 28, 22)
    layout.setSpacing(14)
    return layout


def fit_columns(table: QTableView, stretch: int) -> None:
    """Every column as wide as its header and cells, and column `stretch` takes the rest, so
    no header is cut."""
    header = table.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    header.setSectionResizeMode(stretch, QHeaderView.ResizeMode.Stretch)
    header.setStretchLastSection(False)


def vertical_scroll(widget: QWidget) -> QScrollArea:
    """`widget` in a scroll area that scrolls up and down only: on a short window the page
    keeps the height its texts need and scrolls, and it is never wider than the window."""
    scroll = QScrollArea()
    scroll.setObjectName("PageScroll")
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setWidget(widget)
    return scroll


def row(*widgets: QWidget, stretch_last: bool = False, spacing: int = 10) -> QHBoxLayout:
    h = QHBoxLayout()
    h.setSpacing(spacing)
    for w in widgets:
        h.addWidget(w)
    if not stretch_last:
        h.addStretch(1)
    return h


def set_role(widget: QWidget, name: str) -> None:
    """Switch a widget's stylesheet role (its object name) and re-apply the style."""
    widget.setObjectName(name)
    widget.style().unpolish(widget)
    widget.style().polish(widget)
