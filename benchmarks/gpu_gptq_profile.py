"""Where one GPTQ block's time goes on a GPU: Hessian passes, column sweeps, block forward.

    python benchmarks/gpu_gptq_profile.py [--shape 1b] [--samples 128] [--seq-len 2048]

On block 0 of a random Llama of the given shape (see gpu_quantize.py), W4 g128 sym, with
CUDA synchronised around each step, it prints seconds for:
- the true-sequential Hessian passes (q/k/v, o, gate/up, down), one accumulator per input
  (shared) against one per linear (separate, as before the sharing);
- the GPTQ sweeps of each group, stacked (one sweep over q/k/v's rows) against one sweep
  per linear, with the range search (mse) on and off;
- one full block forward over the calibration set;
- the range search of one group, batched against the reference's loop over shrink factors.
Runs on the CPU too (small sizes only make sense there).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_quantize import build_random_llama

from qtapp.engine.config import GPTQOptions, QuantScheme
from qtapp.engine.model.sources import resolve_model
from qtapp.engine.quant.methods.gptq import HessianAccumulator, gptq_quantize
from qtapp.engine.quant.pipeline import _gpu_precision, collect_hessians
from qtapp.engine.quant.primitives import qparams_from_range, qparams_mse
from qtapp.engine.quant.streaming import LayerStreamer, forward_block

GROUPS = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
          ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]


def timed(fn, device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    r = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, r


def separate_hessians(block, names, inputs):
    acc = {n: HessianAccumulator(block.get_submodule(n).in_features, inputs.x.device)
           for n in names}
    hooks = [block.get_submodule(n).register_forward_hook(
        lambda _m, a, _o, n=n: acc[n].add_batch(a[0])) for n in names]
    with torch.no_grad():
        for xb, kw in inputs.batches():
            block(xb, **kw)
    for h in hooks:
        h.remove()
    return acc


def mse_loop(wg, bits, sym, grid=100, max_shrink=0.8, norm=2.4):
    wmin, wmax = wg.amin(dim=0), wg.amax(dim=0)
    best_s, best_z = qparams_from_range(wmin, wmax, bits, sym)
    best_err = torch.full_like(best_s, float("inf"))
    for i in range(int(max_shrink * grid)):
        p = 1 - i / grid
        s, z = qparams_from_range(p * wmin, p * wmax, bits, sym)
        q = torch.clamp(torch.round(wg / s) + z, 0, 2**bits - 1)
        err = (s * (q - z) - wg).abs().pow(norm).sum(dim=0)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better, s, best_s)
        best_z = torch.where(better, z, best_z)
    return best_s, best_z


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1b")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--folder", default=None)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    folder = Path(args.folder or tempfile.mkdtemp(prefix="gptq-profile-")) / args.shape
    build_random_llama(folder, args.shape, layers=2)
    info = resolve_model(str(folder))
    tokens = torch.randint(0, info.config["vocab_size"], (args.samples, args.seq_len),
                           generator=torch.Generator().manual_seed(0))
    scheme = QuantScheme(4, 128, True)
    rows = []
    with _gpu_precision(device):
        streamer = LayerStreamer(info, device)
        inputs = streamer.capture_inputs(tokens, args.batch)
        block = streamer.materialize(streamer.blocks[0], streamer.block_prefix(0))
        timed(lambda: forward_block(block, inputs), device)  # warm-up
        for names in GROUPS:
            t_sh, shared = timed(lambda n=names: collect_hessians(block, n, inputs), device)
            t_sep, _ = timed(lambda n=names: separate_hessians(block, n, inputs), device)
            H = shared[names[0]].H
            Ws = [block.get_submodule(n).weight.data.float() for n in names]
            for mse in (True, False):
                opts = GPTQOptions(mse=mse)
                t_stack, _ = timed(lambda Ws=Ws, H=H, o=opts: gptq_quantize(torch.cat(Ws), H, scheme,
                                                                            o), device)
                t_each, _ = timed(lambda Ws=Ws, H=H, o=opts: [gptq_quantize(W, H, scheme, o)
                                                              for W in Ws], device)
                rows.append((" + ".join(n.split(".")[-1] for n in names), mse, t_sh, t_sep,
                             t_stack, t_each))
        t_fwd, _ = timed(lambda: forward_block(block, inputs, out=None), device)
        wg = block.get_submodule("mlp.gate_proj").weight.data.float().T[:128].contiguous()
        t_vec, a = timed(lambda: qparams_mse(wg, 4, True), device)
        t_loop, b = timed(lambda: mse_loop(wg, 4, True), device)
        streamer.close()
    dev = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"\n{args.shape} shape, block 0, {args.samples} × {args.seq_len} tokens, W4 g128 sym,"
          f" {dev}\n")
    print("| linears | mse | Hessians shared s | separate s | sweep stacked s | one each s |")
    print("|---|---|---|---|---|---|")
    for name, mse, t_sh, t_sep, t_stack, t_each in rows:
        print(f"| {name} | {'on' if mse else 'off'} | {t_sh:.3f} | {t_sep:.3f} | "
              f"{t_stack:.3f} | {t_each:.3f} |")
    print(f"\nfull block forward: {t_fwd:.3f} s")
    print(f"range search of one 128 × {wg.shape[1]} group: batched {t_vec * 1e3:.1f} ms, "
          f"loop {t_loop * 1e3:.1f} ms, same scales: "
          f"{bool(torch.allclose(a[0], b[0]))}, same zeros: {bool(torch.equal(a[1], b[1]))}")


if __name__ == "__main__":
    main()
