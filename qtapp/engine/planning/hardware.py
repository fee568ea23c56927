"""What this machine has: CPU, RAM, GPUs with their memory.

NVIDIA GPUs are read through NVML (the `nvidia-ml-py` package, module `pynvml`) when it is
importable, else through `torch.cuda`; Apple GPUs through `torch.backends.mps`. A machine
with no GPU is the normal case, not an error. Nothing here raises: a probe that fails is
recorded in `Hardware.notes` and the rest of the report stands.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

# pynvml (NVIDIA machines only) and torch are imported inside the functions that probe GPUs: the
# window and the command line import this module at start-up, without torch.


@dataclass(frozen=True)
class GPU:
    """One accelerator. `backend` is "cuda" or "mps"; an MPS GPU shares the system RAM."""

    index: int
    name: str
    backend: str
    vram_total: int
    vram_free: int
    usable_by_torch: bool = True

    @property
    def label(self) -> str:
        return f"{self.name} ({self.backend.upper()} {self.index})"


@dataclass(frozen=True)
class Hardware:
    cpu_name: str
    cpu_cores: int
    cpu_threads: int
    ram_total: int
    ram_available: int
    os_name: str
    gpus: tuple[GPU, ...] = ()
    torch_version: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def cuda_gpus(self) -> tuple[GPU, ...]:
        return tuple(g for g in self.gpus if g.backend == "cuda")

    @property
    def best_gpu(self) -> GPU | None:
        """The CUDA GPU with the most memory that torch can use, or None."""
        usable = [g for g in self.cuda_gpus if g.usable_by_torch]
        return max(usable, key=lambda g: g.vram_total, default=None)

    @property
    def has_mps(self) -> bool:
        return any(g.backend == "mps" for g in self.gpus)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hardware:
        gpus = tuple(GPU(**g) for g in data.get("gpus", ()))
        rest = {k: v for k, v in data.items() if k not in ("gpus", "notes")}
        return cls(**rest, gpus=gpus, notes=tuple(data.get("notes", ())))


def detect(use_torch: bool = True) -> Hardware:
    """Probe this machine. `use_torch=False` skips importing torch (faster, no MPS check)."""
    notes: list[str] = []
    vm = psutil.virtual_memory()
    gpus = _nvml_gpus(notes)
    torch_version = ""
    if use_torch:
        torch_version, torch_gpus, cuda_ok = _torch_gpus(need_cuda_list=not gpus, notes=notes)
        if gpus and not cuda_ok:
            gpus = [_replace_usable(g, False) for g in gpus]
            notes.append("An NVIDIA GPU is present but this build of torch cannot use it "
                         "(CPU-only torch); jobs will run on the CPU.")
        gpus.extend(torch_gpus)
    return Hardware(
        cpu_name=_cpu_name(),
        cpu_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        cpu_threads=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        ram_total=int(vm.total),
        ram_available=int(vm.available),
        os_name=f"{platform.system()} {platform.release()}".strip(),
        gpus=tuple(gpus),
        torch_version=torch_version,
        notes=tuple(notes),
    )


def _replace_usable(gpu: GPU, usable: bool) -> GPU:
    return GPU(gpu.index, gpu.name, gpu.backend, gpu.vram_total, gpu.vram_free, usable)


def _nvml_gpus(notes: list[str]) -> list[GPU]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []  # no NVIDIA driver: the usual case on laptops and Macs
    gpus = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(GPU(i, str(name), "cuda", int(mem.total), int(mem.free)))
    except pynvml.NVMLError as e:
        notes.append(f"NVML could not read the GPUs ({e}); using torch instead.")
        return []
    finally:
        pynvml.nvmlShutdown()
    return gpus


def _torch_gpus(need_cuda_list: bool, notes: list[str]) -> tuple[str, list[GPU], bool]:
    """(torch version, GPUs found through torch, whether torch can use CUDA)."""
    try:
        import torch
    except ImportError:
        notes.append("torch is not installed; GPUs were not checked through torch.")
        return "", [], False
    gpus: list[GPU] = []
    cuda_ok = bool(torch.cuda.is_available())
    if cuda_ok and need_cuda_list:
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            gpus.append(GPU(i, torch.cuda.get_device_name(i), "cuda", int(total), int(free)))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        vm = psutil.virtual_memory()
        gpus.append(GPU(0, "Apple GPU", "mps", int(vm.total), int(vm.available)))
    return torch.__version__, gpus, cuda_ok


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
