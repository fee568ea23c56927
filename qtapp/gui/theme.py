"""Colours, fonts and the stylesheet: a calm dark theme with one accent colour."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QColor, QFont, QPalette
from PySide6.QtWidgets import QApplication

ICONS = (Path(__file__).resolve().parent.parent / "resources" / "icons").as_posix()

BG = "#16171b"
SIDEBAR = "#101114"
CARD = "#1e2026"
CARD_BORDER = "#2c2f38"
INPUT = "#24262e"
TEXT = "#e7e8eb"
MUTED = "#9aa0ad"
ACCENT = "#7c93ff"
ACCENT_DARK = "#5b74e8"
GOOD = "#3fb97a"
WARN = "#e0a43a"
BAD = "#f0605a"
INFO = "#5aa9f5"

FIT_COLORS = {"gpu": GOOD, "ram": INFO, "none": BAD}
VERDICT_COLORS = {"good": GOOD, "degraded": WARN, "broken": BAD}

STYLESHEET = f"""
QWidget {{ color: {TEXT}; }}
QMainWindow, QDialog, QStackedWidget > QWidget {{ background: {BG}; }}
QToolTip {{ background: {CARD}; color: {TEXT}; border: 1px solid {CARD_BORDER}; padding: 6px; }}
#Sidebar {{ background: {SIDEBAR}; border-right: 1px solid {CARD_BORDER}; }}
#AppName {{ font-size: 17pt; font-weight: 600; color: {TEXT}; }}
#AppTagline {{ color: {MUTED}; }}
#NavList {{ background: transparent; border: none; outline: none; }}
#NavList::item {{ padding-left: 12px; border-radius: 8px; color: {MUTED}; }}
#NavList::item:hover {{ background: #1c1e24; color: {TEXT}; }}
#NavList::item:selected {{ background: #262a36; color: {TEXT}; }}
#SidebarFooter {{ color: {MUTED}; font-size: 9pt; }}
#PageTitle {{ font-size: 18pt; font-weight: 600; }}
#PageSubtitle {{ color: {MUTED}; }}
#Card {{ background: {CARD}; border: 1px solid {CARD_BORDER}; border-radius: 10px; }}
#CardTitle {{ color: {MUTED}; font-size: 9pt; font-weight: 600; letter-spacing: 1px; }}
#BigValue {{ font-size: 15pt; font-weight: 600; }}
#CardTitleLarge {{ font-size: 11pt; font-weight: 600; }}
#Muted {{ color: {MUTED}; }}
#Banner {{ background: #1f2540; border: 1px solid #34407a; border-radius: 10px; }}
#BannerTitle {{ font-size: 14pt; font-weight: 600; }}
#ErrorBanner {{ background: #3a1f22; border: 1px solid #7a3436; border-radius: 10px; }}
#WarnText {{ color: {WARN}; }}
#ErrorText {{ color: {BAD}; }}
#OkText {{ color: {GOOD}; }}
QLabel {{ background: transparent; }}
QPushButton {{ background: {INPUT}; border: 1px solid {CARD_BORDER}; border-radius: 7px;
               padding: 7px 14px; }}
QPushButton:hover {{ background: #2d303a; }}
QPushButton:disabled {{ color: #5c6270; background: #1c1e24; }}
QPushButton[kind="primary"] {{ background: {ACCENT_DARK}; border: 1px solid {ACCENT};
                               color: white; font-weight: 600; }}
QPushButton[kind="primary"]:hover {{ background: {ACCENT}; }}
QPushButton[kind="primary"]:disabled {{ background: #2a2f45; border-color: #2f3550;
                                        color: #7a819a; }}
QPushButton[kind="danger"] {{ background: #4a2024; border: 1px solid #8a3a3c; }}
QPushButton[kind="danger"]:hover {{ background: #5c272b; }}
QPushButton:checked {{ background: #2c3350; border: 1px solid {ACCENT}; }}
QLineEdit, QSpinBox, QDoubleSpinBox, QComboBox, QPlainTextEdit, QTextBrowser {{
    background: {INPUT}; border: 1px solid {CARD_BORDER}; border-radius: 7px; padding: 5px 8px;
    selection-background-color: {ACCENT_DARK}; }}
QLineEdit:focus, QSpinBox:focus, QComboBox:focus, QPlainTextEdit:focus {{
    border: 1px solid {ACCENT}; }}
QComboBox QAbstractItemView {{ background: {CARD}; border: 1px solid {CARD_BORDER};
                               selection-background-color: #2c3350; }}
QRadioButton, QCheckBox {{ spacing: 8px; background: transparent; }}
QRadioButton::indicator {{ width: 12px; height: 12px; border-radius: 8px;
                           border: 2px solid #5c6270; background: {INPUT}; }}
QRadioButton::indicator:hover, QCheckBox::indicator:hover {{ border-color: {ACCENT}; }}
QRadioButton::indicator:checked {{ border: 2px solid {ACCENT};
    background: qradialgradient(cx:0.5, cy:0.5, radius:0.5, fx:0.5, fy:0.5,
                                stop:0 {ACCENT}, stop:0.5 {ACCENT}, stop:0.6 {INPUT},
                                stop:1 {INPUT}); }}
QCheckBox::indicator {{ width: 14px; height: 14px; border-radius: 4px;
                        border: 2px solid #5c6270; background: {INPUT}; }}
QCheckBox::indicator:checked {{ background: {ACCENT_DARK}; border-color: {ACCENT};
                                image: url({ICONS}/check.svg); }}
QCheckBox::indicator:disabled, QRadioButton::indicator:disabled {{ border-color: #3a3e48; }}
QComboBox::drop-down {{ border: none; width: 26px; }}
QComboBox::down-arrow {{ image: url({ICONS}/down.svg); width: 12px; height: 12px; }}
QSpinBox::up-button, QSpinBox::down-button, QDoubleSpinBox::up-button,
QDoubleSpinBox::down-button {{ border: none; background: transparent; width: 20px; }}
QSpinBox::up-arrow, QDoubleSpinBox::up-arrow {{ image: url({ICONS}/up.svg); width: 10px;
                                                height: 10px; }}
QSpinBox::down-arrow, QDoubleSpinBox::down-arrow {{ image: url({ICONS}/down.svg);
                                                    width: 10px; height: 10px; }}
QHeaderView {{ qproperty-defaultAlignment: AlignLeft; }}
QTableWidget, QTableView {{ background: {CARD}; border: 1px solid {CARD_BORDER};
    border-radius: 10px; gridline-color: transparent; alternate-background-color: #22242b;
    selection-background-color: #2c3350; }}
QTableWidget::item {{ padding: 0px 8px; }}
QHeaderView::section {{ background: {CARD}; color: {MUTED}; border: none;
    border-bottom: 1px solid {CARD_BORDER}; padding: 7px 8px; font-weight: 600; }}
QTableCornerButton::section {{ background: {CARD}; border: none; }}
QProgressBar {{ background: {INPUT}; border: none; border-radius: 6px; height: 12px;
                text-align: center; color: transparent; }}
QProgressBar::chunk {{ background: {ACCENT}; border-radius: 6px; }}
QScrollArea {{ border: none; background: transparent; }}
QScrollBar:vertical {{ background: transparent; width: 10px; }}
QScrollBar::handle:vertical {{ background: #353945; border-radius: 5px; min-height: 30px; }}
QScrollBar::add-line, QScrollBar::sub-line {{ height: 0; }}
QSplitter::handle {{ background: {BG}; }}
QMenuBar {{ background: {SIDEBAR}; }}
QMenuBar::item:selected, QMenu::item:selected {{ background: #2c3350; }}
QMenu {{ background: {CARD}; border: 1px solid {CARD_BORDER}; }}
"""


def apply(app: QApplication) -> None:
    app.setStyle("Fusion")
    palette = QPalette()
    for role, color in (
        (QPalette.ColorRole.Window, BG), (QPalette.ColorRole.Base, INPUT),
        (QPalette.ColorRole.AlternateBase, CARD), (QPalette.ColorRole.Text, TEXT),
        (QPalette.ColorRole.WindowText, TEXT), (QPalette.ColorRole.Button, INPUT),
        (QPalette.ColorRole.ButtonText, TEXT), (QPalette.ColorRole.Highlight, ACCENT_DARK),
        (QPalette.ColorRole.HighlightedText, "#ffffff"), (QPalette.ColorRole.ToolTipBase, CARD),
        (QPalette.ColorRole.ToolTipText, TEXT), (QPalette.ColorRole.PlaceholderText, MUTED),
        (QPalette.ColorRole.Link, ACCENT),
    ):
        palette.setColor(role, QColor(color))
    app.setPalette(palette)
    font = QFont(app.font())
    font.setPointSizeF(10.0)
    app.setFont(font)
    app.setStyleSheet(STYLESHEET)


def mono_font() -> QFont:
    font = QFont("DejaVu Sans Mono")
    font.setStyleHint(QFont.StyleHint.Monospace)
    font.setPointSizeF(9.0)
    return font
