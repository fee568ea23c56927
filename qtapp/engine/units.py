"""How sizes and durations are written for people, in the window and on the command line."""

from __future__ import annotations

GB = 10**9


def format_size(n: float) -> str:
    """Bytes in decimal units, as docs/formats.md#advisor-tables and model hubs print them."""
    for unit, scale in (("TB", 10**12), ("GB", GB), ("MB", 10**6), ("KB", 10**3)):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"
    return f"{int(n)} B"
