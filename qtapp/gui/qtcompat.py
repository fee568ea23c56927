"""Work around PySide6 6.12.0 dropping a reference to the bool that `SignalInstance.emit()`
and `.disconnect()` return to Python (verified here: 6.11.3 does not; after a few hundred
emits CPython 3.11 aborts with "bool_dealloc: deallocating True or False").

`install()` measures the bug once and, only where it is present, wraps those two methods so
each call gives back the reference it took. Other PySide6 versions are left untouched.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import sys
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal, SignalInstance

_installed = False


class _Probe(QObject):
    fired = Signal()


def _drops_a_bool(call: Callable[[], Any]) -> bool:
    gc.collect()
    before = sys.getrefcount(True)
    for _ in range(4):
        call()
    gc.collect()
    return sys.getrefcount(True) <= before - 4


def _keep_bool(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: SignalInstance, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        if result is True or result is False:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(result))
        return result

    return wrapper


def install() -> list[str]:
    """Patch what this PySide6 gets wrong; returns the names of the patched methods."""
    global _installed
    if _installed:
        return []
    _installed = True
    probe = _Probe()

    def slot() -> None:
        pass

    def connect_disconnect() -> None:
        probe.fired.connect(slot)
        probe.fired.disconnect(slot)

    patched = []
    if _drops_a_bool(probe.fired.emit):
        SignalInstance.emit = _keep_bool(SignalInstance.emit)
        patched.append("emit")
    if _drops_a_bool(connect_disconnect):
        SignalInstance.disconnect = _keep_bool(SignalInstance.disconnect)
        patched.append("disconnect")
    return patched
