"""Emitting from Python must not eat references to True (PySide6 6.12.0 does without the fix)."""

from __future__ import annotations

import gc
import sys

from PySide6.QtCore import QObject, Signal

import qtapp.gui  # noqa: F401 - installs the fix


class Emitter(QObject):
    plain = Signal()
    value = Signal(object)


def test_emit_and_disconnect_keep_bool_refcounts() -> None:
    e = Emitter()
    got = []
    e.value.connect(got.append)

    def slot() -> None:
        pass

    gc.collect()
    before = sys.getrefcount(True)
    for i in range(3000):  # more than True's whole refcount in a fresh interpreter
        e.plain.emit()
        e.value.emit(i)
        e.plain.connect(slot)
        e.plain.disconnect(slot)
    gc.collect()
    assert sys.getrefcount(True) >= before
    assert len(got) == 3000
