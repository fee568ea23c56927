"""Draw the QuantDesk icon (a staircase of quantization levels) as quantdesk.png and .ico.

    QT_QPA_PLATFORM=offscreen python packaging/icons/make_icons.py

The macOS .icns is made from quantdesk.png by packaging/macos/build_macos.sh (iconutil).
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QGuiApplication, QImage, QPainter

from qtapp.gui.theme import ACCENT, BG, CARD_BORDER

HERE = Path(__file__).resolve().parent
LEVELS = (0.25, 0.5, 0.5, 0.75, 1.0)


def draw(size: int) -> QImage:
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    p = QPainter(image)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    s = size / 256
    p.setPen(QColor(CARD_BORDER))
    p.setBrush(QColor(BG))
    p.drawRoundedRect(QRectF(8 * s, 8 * s, 240 * s, 240 * s), 52 * s, 52 * s)
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(QColor(ACCENT))
    width, gap, left, bottom, height = 28 * s, 10 * s, 48 * s, 200 * s, 144 * s
    for i, level in enumerate(LEVELS):
        x = left + i * (width + gap)
        p.drawRoundedRect(QRectF(x, bottom - level * height, width, level * height), 6 * s, 6 * s)
    p.end()
    return image


def main() -> int:
    QGuiApplication(sys.argv)
    if not draw(256).save(str(HERE / "quantdesk.png")):
        raise SystemExit("could not write quantdesk.png")
    if not draw(256).save(str(HERE / "quantdesk.ico"), "ICO"):
        raise SystemExit("could not write quantdesk.ico (Qt's ico image plugin is missing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
