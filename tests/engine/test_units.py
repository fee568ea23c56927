"""The one way sizes and durations are written (qtapp/engine/units.py): binary units, and the
three duration forms; what the window, the command line and the engine's messages print."""

from __future__ import annotations

import pytest

from qtapp.engine.units import (
    format_duration,
    format_params,
    format_size,
    parse_size,
    size_at_least,
)


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (90 * 2**20, "90.0 MiB"),
    (90_000_000, "85.8 MiB"), (2**30 - 2**20, "1023.0 MiB"), (2**30, "1.00 GiB"),
    (24 * 2**30, "24.00 GiB"), (13_476_831_232, "12.55 GiB"), (3 * 2**40, "3.00 TiB"),
])
def test_sizes_are_binary_units(n: int, text: str) -> None:
    assert format_size(n) == text


@pytest.mark.parametrize("n", [1, 1000, 1024, 92_000_123, 3 * 2**30 + 7, 5 * 2**40 + 1])
def test_size_at_least_reads_back_at_least_as_large(n: int) -> None:
    text = size_at_least(n)
    assert parse_size(text) >= n
    assert parse_size(text) - n <= n / 10  # rounded up by at most 0.1 of its unit (≤ n)


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0 s"), (-3, "0 s"), (44.6, "45 s"), (59.6, "1 min 00 s"), (187, "3 min 07 s"),
    (3599, "59 min 59 s"), (3600, "1 h 00 min"), (3900, "1 h 05 min"), (90_000, "25 h 00 min"),
])
def test_durations(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_durations_in_other_words() -> None:
    words = ("{s} 秒", "{m} 分 {s:02d} 秒", "{h} 小时 {m:02d} 分")
    assert format_duration(187, words) == "3 分 07 秒"
    assert format_duration(3900, words) == "1 小时 05 分"


def test_parameter_counts() -> None:
    assert (format_params(134_515_008), format_params(6_738_415_616)) == ("135M", "6.7B")
    assert (format_params(107_200), format_params(1_234_567)) == ("0.1M", "1.2M")
