"""`quantdesk hw [--json]`: what this machine has, and the memory table for 7B/13B/70B."""

from __future__ import annotations

import argparse
import json

from qtapp.commands.report import print_advice
from qtapp.engine.planning.advisor import advise
from qtapp.engine.planning.hardware import Hardware, detect
from qtapp.engine.units import format_size


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("hw", help="show CPU, RAM and GPUs, and what fits here")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def hardware_lines(hw: Hardware) -> list[str]:
    lines = [
        f"CPU   {hw.cpu_name} ({hw.cpu_cores} cores, {hw.cpu_threads} threads)",
        f"RAM   {format_size(hw.ram_total)} total, {format_size(hw.ram_available)} available",
    ]
    if not hw.gpus:
        lines.append("GPU   none found (quantizing runs on the CPU; GGUF runs well there)")
    for g in hw.gpus:
        usable = "" if g.usable_by_torch else "  [not usable by this torch build]"
        lines.append(f"GPU   {g.label}: {format_size(g.vram_total)} total, "
                     f"{format_size(g.vram_free)} free{usable}")
    lines.append(f"OS    {hw.os_name}" + (f", torch {hw.torch_version}" if hw.torch_version
                                           else ""))
    lines.extend(f"note  {n}" for n in hw.notes)
    return lines


def run(args: argparse.Namespace) -> int:
    hw = detect()
    advice = advise(hw)
    if args.json:
        print(json.dumps(advice.to_dict(), indent=2))
        return 0
    print("\n".join(hardware_lines(hw)))
    print()
    print_advice(advice)
    return 0
