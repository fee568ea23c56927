"""AWQ on one real decoder block: block-output MSE against RTN, and search time.

    python benchmarks/awq_block.py [--layer 2] [--samples 24] [--seq-len 128] [--calib 16]
                                   [--group-sizes 64,128] [--device cpu|cuda] [--threads 2]
                                   [--save FILE.pt | --load FILE.pt] [--time-at 128x512]

The block of the demo model (SmolLM2-135M) and its inputs for the built-in calibration text
come from a forward with a hook (`--save` writes them to a file, `--load` reads such a file on a
machine without the demo model). MSE is measured on the samples after the first `--calib`
(held out from the search); W4 asymmetric, AWQ scales + clipping, then RTN. `--time-at NxL`
also times one search on N samples × L tokens made by tiling the captured inputs.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qtapp.engine.config import AWQOptions, QuantScheme
from qtapp.engine.model.arch import arch_for
from qtapp.engine.quant.methods.awq import awq_apply_block, awq_search_block
from qtapp.engine.quant.primitives import fake_quantize


class _Stop(Exception):
    pass


def capture(layer: int, samples: int, seq_len: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qtapp.engine.model.sources import demo_model_dir
    from qtapp.engine.quant.calibration import calibration_batches

    folder = demo_model_dir()
    tokens = calibration_batches(AutoTokenizer.from_pretrained(folder), n_samples=samples,
                                 seq_len=seq_len, seed=0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    got = {}

    def hook(_module, args, kwargs):
        got["x"] = args[0] if args else kwargs["hidden_states"]
        raise _Stop

    handle = model.model.layers[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model.model(input_ids=tokens, use_cache=False)
    except _Stop:
        pass
    handle.remove()
    return {"config": model.config.to_dict(), "layer": layer, "x": got["x"],
            "state": model.model.layers[layer].state_dict()}


def build(data: dict, device: torch.device):
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = AutoConfig.for_model(**data["config"])
    config._attn_implementation = "sdpa"  # causal without a mask, as inside the model
    block = LlamaDecoderLayer(config, data["layer"]).eval()
    block.load_state_dict(data["state"])
    return block.to(device), LlamaRotaryEmbedding(config).to(device)


def block_kwargs(rotary, x: torch.Tensor) -> dict:
    pos = torch.arange(x.shape[1], device=x.device)[None]
    return {"position_embeddings": rotary(x, pos), "attention_mask": None,
            "position_ids": pos, "use_cache": False}


def run(block, x, kwargs) -> torch.Tensor:
    with torch.no_grad():
        out = block(x, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def rtn(block, scheme: QuantScheme) -> None:
    for module in block.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight.data = fake_quantize(module.weight.data, scheme.bits,
                                               scheme.group_size, scheme.sym)


def timed_search(block, x, kwargs, groups, scheme, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = awq_search_block(block, x, kwargs, groups, lambda n: scheme, AWQOptions())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layer", type=int, default=2)
    p.add_argument("--samples", type=int, default=24)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--calib", type=int, default=16)
    p.add_argument("--group-sizes", default="64,128")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--save", type=Path)
    p.add_argument("--load", type=Path)
    p.add_argument("--time-at", default="")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    data = torch.load(a.load) if a.load else capture(a.layer, a.samples, a.seq_len)
    if a.save:
        torch.save(data, a.save)
    block, rotary = build(data, device)
    groups = arch_for(data["config"]).awq_groups
    x = data["x"].to(device)
    kwargs = block_kwargs(rotary, x)
    calib, held = x[:a.calib], x[a.calib:]
    ref = run(block, held, kwargs)
    print(f"block {data['layer']}, {calib.shape[0]}×{calib.shape[1]} calibration tokens, "
          f"{held.shape[0]} held-out samples, {device}, {torch.get_num_threads()} threads")
    print("| scheme | RTN MSE | AWQ MSE | AWQ/RTN | search s |")
    print("| --- | --- | --- | --- | --- |")
    for gs in (int(g) for g in a.group_sizes.split(",")):
        scheme = QuantScheme(4, gs, False)
        plain = copy.deepcopy(block)
        rtn(plain, scheme)
        mse_rtn = float((run(plain, held, kwargs) - ref).pow(2).mean())
        result, seconds = timed_search(block, calib, kwargs, groups, scheme, device)
        awq = copy.deepcopy(block)
        awq_apply_block(awq, result, groups)
        rtn(awq, scheme)
        mse = float((run(awq, held, kwargs) - ref).pow(2).mean())
        print(f"| {scheme.label} | {mse_rtn:.4e} | {mse:.4e} | {mse / mse_rtn:.3f} "
              f"| {seconds:.2f} |")
    if a.time_at:
        n, seq = (int(v) for v in a.time_at.split("x"))
        reps = (-(-n // x.shape[0]), -(-seq // x.shape[1]), 1)
        big = x.repeat(*reps)[:n, :seq].contiguous()
        _, seconds = timed_search(block, big, block_kwargs(rotary, big), groups,
                                  QuantScheme(4, 128, False), device)
        print(f"search on {n}×{seq} tiled tokens (W4 g128 asym): {seconds:.2f} s")


if __name__ == "__main__":
    main()
