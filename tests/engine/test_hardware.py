"""Hardware probe: runs on a machine without a GPU; NVML results are used when present."""

from __future__ import annotations

import sys
import types

from qtapp.engine.planning import hardware
from qtapp.engine.planning.hardware import GPU, Hardware, detect


def test_detect_reports_this_machine() -> None:
    hw = detect(use_torch=False)
    assert hw.ram_total > 0 and 0 < hw.ram_available <= hw.ram_total
    assert hw.cpu_threads >= hw.cpu_cores >= 1
    assert hw.cpu_name


def test_round_trip_through_dict() -> None:
    hw = Hardware("cpu", 2, 4, 10, 5, "os", (GPU(0, "g", "cuda", 8, 4),), "2.0", ("n",))
    assert Hardware.from_dict(hw.to_dict()) == hw


def test_best_gpu_skips_unusable_and_mps() -> None:
    gpus = (GPU(0, "small", "cuda", 8, 8), GPU(1, "big", "cuda", 24, 24, usable_by_torch=False),
            GPU(0, "Apple GPU", "mps", 64, 64))
    hw = Hardware("cpu", 2, 4, 10, 5, "os", gpus)
    assert hw.best_gpu is not None and hw.best_gpu.name == "small"
    assert hw.has_mps


def test_nvml_gpus_are_read(monkeypatch) -> None:
    class NVMLError(Exception):
        pass

    mem = types.SimpleNamespace(total=24 * 2**30, free=20 * 2**30)
    fake = types.SimpleNamespace(
        NVMLError=NVMLError, nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 1, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: b"NVIDIA GeForce RTX 4090",
        nvmlDeviceGetMemoryInfo=lambda h: mem)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    notes: list[str] = []
    (gpu,) = hardware._nvml_gpus(notes)
    assert (gpu.name, gpu.vram_total, gpu.vram_free) == ("NVIDIA GeForce RTX 4090",
                                                         24 * 2**30, 20 * 2**30)


def test_nvml_without_driver_is_no_gpu(monkeypatch) -> None:
    class NVMLError(Exception):
        pass

    def fail() -> None:
        raise NVMLError("Driver Not Loaded")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(NVMLError=NVMLError,
                                                                      nvmlInit=fail))
    assert hardware._nvml_gpus([]) == []
