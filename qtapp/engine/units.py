"""How sizes, durations and parameter counts are written for people, and how sizes are read:
the one place for these conventions, in the engine's messages, on the command line and in
the window.

Sizes are shown in binary (IEC) units, powers of 1024: KiB, MiB, GiB, TiB. That is what
memory is made in (a "24 GB" graphics card holds 24 GiB), what Linux and Windows file
managers and `du -h` show for files, and what the plan, the size budget and the model card
always used. Above 1 GiB two decimals ("3.52 GiB"), below one ("88.4 MiB"), under 1 KiB whole
bytes ("512 B"). Model hubs and docs/formats.md#advisor-tables quote decimal GB (10^9
bytes); those are reference figures, never how QuantDesk prints a size.

Reading a size (`parse_size`, for --target-size) accepts both: the binary units above, and
decimal B, KB, MB, GB, TB (powers of 1000), as the user typed them.

Durations: "45 s", "3 min 07 s", "1 h 05 min" (`format_duration`; the window passes its
translated words). Parameter counts: "6.7B", "135M".
"""

from __future__ import annotations

import math
import re

from qtapp.engine.errors import UserError

KiB, MiB, GiB, TiB = 2**10, 2**20, 2**30, 2**40
_SHOWN = (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB))
SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
              "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB}
DURATION_WORDS = ("{s} s", "{m} min {s:02d} s", "{h} h {m:02d} min")


def size_unit(n_bytes: float) -> tuple[str, int]:
    """("MiB", 2**20): the unit `format_size` writes `n_bytes` in (also an axis's unit)."""
    for unit, scale in _SHOWN:
        if abs(n_bytes) >= scale:
            return unit, scale
    return "B", 1


def format_size(n_bytes: float) -> str:
    """'88.4 MiB', '3.52 GiB': bytes in binary units (see the module docstring)."""
    unit, scale = size_unit(n_bytes)
    if scale == 1:
        return f"{int(n_bytes)} B"
    return f"{n_bytes / scale:.{2 if scale >= GiB else 1}f} {unit}"


def size_at_least(n_bytes: int) -> str:
    """A size string `parse_size` reads back as at least `n_bytes` (rounded up): '88.5MiB'."""
    for unit, scale in _SHOWN:
        if n_bytes >= scale:
            return f"{math.ceil(n_bytes / scale * 10) / 10:g}{unit}"
    return f"{n_bytes}B"


def parse_size(text: str) -> int:
    """Bytes of a size such as '90MiB', '1.5 GB', '4096' (B, KB/MB/GB/TB, KiB/MiB/GiB/TiB)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if m is None or (unit and unit not in SIZE_UNITS):
        raise UserError(f"{text!r} is not a size; write a number and a unit such as 90MiB, "
                        "4.5GB or 700KB (units B, KB, MB, GB, KiB, MiB, GiB)")
    value = float(m.group(1)) * SIZE_UNITS[unit or "b"]
    if value < 1:
        raise UserError(f"{text!r} is not a size a model can have; give a positive size")
    return int(value)


def format_duration(seconds: float, words: tuple[str, str, str] = DURATION_WORDS) -> str:
    """'45 s', '3 min 07 s', '1 h 05 min' (whole seconds, negative as 0). `words` are the
    three templates in that order, with fields {s}, {m}, {h}: the window passes them
    translated."""
    s = max(0, round(seconds))
    if s < 60:
        return words[0].format(s=s)
    if s < 3600:
        return words[1].format(m=s // 60, s=s % 60)
    return words[2].format(h=s // 3600, m=s % 3600 // 60)


def format_params(n: int) -> str:
    """'6.7B' from 10^9 parameters up, '135M' from 10^7, '1.2M' below (a test model of
    107 200 parameters is '0.1M', not '0M')."""
    if n >= 10**9:
        return f"{n / 10**9:.1f}B"
    if n >= 10**7:
        return f"{n / 10**6:.0f}M"
    return f"{n / 10**6:.1f}M"
