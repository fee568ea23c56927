"""Where the GPU memory of a layer-streaming job goes: peak VRAM per stage, per setting.

    python benchmarks/gpu_memory_stages.py [--shape 1b] [--layers 2] [--samples 128] [--seq 2048]

Prints, for the attention implementations transformers offers and two forward batch sizes,
the peak allocated VRAM of: capturing block 0's inputs, one block forward over the whole
calibration set, and one block quantized with GPTQ / AWQ.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_quantize import VOCAB, build_random_llama


def gib() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def trace_awq_stages() -> None:
    """Print the peak VRAM after each internal step of the AWQ search."""
    from qtapp.engine.quant.methods import awq

    def traced(name: str, fn):
        def wrapper(*a, **k):
            out = fn(*a, **k)
            print(f"|  |  | awq: after {name} | {gib()} |", flush=True)
            return out
        return wrapper

    for name in ("_capture", "_search_group", "_clip_search"):
        setattr(awq, name, traced(name, getattr(awq, name)))


def main() -> None:
    from qtapp.engine.config import AWQOptions, CalibrationSpec, JobSpec, QuantScheme
    from qtapp.engine.model.sources import resolve_model
    from qtapp.engine.quant.pipeline import BlockQuantizer
    from qtapp.engine.quant.streaming import LayerStreamer, forward_block

    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="1b")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--trace-awq", action="store_true")
    args = ap.parse_args()
    if args.trace_awq:
        trace_awq_stages()
    work = Path(tempfile.gettempdir()) / "gpu-bench"
    folder = build_random_llama(work / f"llama-{args.shape}-{args.layers}", args.shape,
                                args.layers)
    info = resolve_model(str(folder))
    tokens = torch.randint(0, VOCAB, (args.samples, args.seq),
                           generator=torch.Generator().manual_seed(1))
    dev = torch.device("cuda")
    print("| attention | batch | stage | peak VRAM GiB |\n|---|---|---|---|")
    for batch in (8, 2):
        for method in ("gptq", "awq"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            streamer = LayerStreamer(info, dev)
            attn = streamer.model.config._attn_implementation
            inputs = streamer.capture_inputs(tokens, batch)
            print(f"| {attn} | {batch} | capture inputs ({method} run) | {gib()} |", flush=True)
            block = streamer.materialize(streamer.blocks[0], streamer.block_prefix(0))
            torch.cuda.reset_peak_memory_stats()
            forward_block(block, inputs, out=inputs.x)
            print(f"| {attn} | {batch} | block forward | {gib()} |", flush=True)
            job = JobSpec(model=str(folder), method=method, out="unused",
                          scheme=QuantScheme(4, 128, method != "awq"), evaluate=False,
                          calibration=CalibrationSpec(samples=args.samples, seq_len=args.seq),
                          awq=AWQOptions())
            q = BlockQuantizer(job, info, lambda e: None, lambda: False)
            torch.cuda.reset_peak_memory_stats()
            q.quantize(0, block, streamer.block_prefix(0), inputs)
            print(f"| {attn} | {batch} | {method} block 0 | {gib()} |", flush=True)
            streamer.release(block)
            streamer.close()
            del inputs, streamer, block


if __name__ == "__main__":
    main()
