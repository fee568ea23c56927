"""What a person would see cut off on a page: labels and buttons whose text does not fit,
table headers cut, and pages wider than the window (horizontal scrolling). `problems`
returns one line per defect; the layout test walks every page with it."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import Qt as GuiQt
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractScrollArea,
    QComboBox,
    QHeaderView,
    QLabel,
    QWidget,
)

SLACK_PX = 1  # rounding of fractional font metrics


def _name(w: QWidget) -> str:
    text = w.text() if hasattr(w, "text") else ""
    return f"{type(w).__name__} {text[:50]!r}"


def _shown(w: QWidget, root: QWidget) -> bool:
    return w.isVisibleTo(root) and w.width() > 0 and w.height() > 0


def label_problem(w: QLabel) -> str | None:
    text = w.text()
    if not text or w.pixmap() is not None and not w.pixmap().isNull():
        return None
    rect = w.contentsRect()
    if w.wordWrap():
        need = w.heightForWidth(w.width())
        if need > w.height() + SLACK_PX:
            return f"{_name(w)} needs {need} px of height, has {w.height()}"
        return None
    if w.textFormat() == Qt.TextFormat.PlainText or not GuiQt.mightBeRichText(text):
        fm = w.fontMetrics()
        need = max(fm.horizontalAdvance(line) for line in text.splitlines() or [""])
        need += 2 * w.margin()
    else:
        need = w.sizeHint().width()
    if need > rect.width() + SLACK_PX:
        return f"{_name(w)} needs {need} px, has {rect.width()}"
    return None


def button_problem(w: QAbstractButton) -> str | None:
    if not w.text():
        return None
    need = w.sizeHint().width()
    if need > w.width() + SLACK_PX:
        return f"{_name(w)} needs {need} px, has {w.width()}"
    return None


def combo_problem(w: QComboBox) -> str | None:
    need = w.minimumSizeHint().width()
    if need > w.width() + SLACK_PX:
        return f"QComboBox {w.currentText()[:50]!r} needs {need} px, has {w.width()}"
    return None


def header_problems(h: QHeaderView) -> list[str]:
    if h.orientation() != Qt.Orientation.Horizontal or not h.isVisible():
        return []
    model = h.model()
    out = []
    for section in range(h.count()):
        if h.isSectionHidden(section):
            continue
        text = str(model.headerData(section, Qt.Orientation.Horizontal) or "")
        need = h.sectionSizeFromContents(section).width()
        if text and need > h.sectionSize(section) + SLACK_PX:
            out.append(f"table header {text!r} needs {need} px, has {h.sectionSize(section)}")
    return out


def problems(page: QWidget, window: QWidget) -> list[str]:
    """Every clipped text, cut header or horizontal scrolling on the shown `page`."""
    out: list[str] = []
    if page.minimumSizeHint().width() > page.width() + SLACK_PX:
        out.append(f"the page needs {page.minimumSizeHint().width()} px of width, has "
                   f"{page.width()}")
    for w in page.findChildren(QWidget):
        if not _shown(w, window):
            continue
        found: list[str | None] = []
        if isinstance(w, QLabel):
            found.append(label_problem(w))
        elif isinstance(w, QAbstractButton) and w.parent() is not None and not isinstance(
                w.parent(), QHeaderView):
            found.append(button_problem(w))
        elif isinstance(w, QComboBox):
            found.append(combo_problem(w))
        elif isinstance(w, QHeaderView):
            found.extend(header_problems(w))
        if isinstance(w, QAbstractScrollArea) and w.horizontalScrollBar().isVisible():
            found.append(f"{type(w).__name__} {w.objectName()!r} scrolls horizontally")
        out.extend(x for x in found if x)
    return out
