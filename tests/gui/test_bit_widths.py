"""The method page offers the bit widths the engine accepts (config.BITS, which
`quantize --bits` takes too): one list, so a width is never accepted on one side only."""

from __future__ import annotations

from qtapp.engine.config import BITS


def test_method_page_offers_every_width_the_command_line_takes(tiny_method_page) -> None:
    method, _info = tiny_method_page
    offered = tuple(method.bits.itemData(i) for i in range(method.bits.count()))
    assert offered == BITS
    method.bits.setCurrentIndex(method.bits.findData(7))
    assert method.build_job().scheme.bits == 7
