"""Speed of `gptq_quantize` on one layer against straightforward GPTQ loops.

    python benchmarks/gptq_layer_speed.py [--device cpu|cuda] [--shapes 576x576,4096x4096]
                                          [--bits 4] [--group-size 128] [--refs blocked,unblocked]

Columns: our time; `blocked`, the loop of IST-DASLab/gptq (W kept (N, K), strided columns,
H⁻¹ via cholesky → cholesky_inverse → cholesky, group parameters read from W as the
reference does); `unblocked`, Algorithm 1 without lazy batches (every column updates all of
W at once). `same` is the share of codes equal to the blocked loop's, `err` the relative
output error tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) of ours and of the blocked loop. Times include the
Hessian inverse; H is a synthetic positive-definite matrix diag(d) + UUᵀ (rank 64).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qtapp.engine.config import GPTQOptions, QuantScheme
from qtapp.engine.quant.methods.gptq import gptq_quantize, relative_output_error
from qtapp.engine.quant.primitives import qparams_from_range

DEFAULT_SHAPES = "576x576,1536x576,576x1536,2048x2048,4096x4096,4096x14336"


def reference_hinv(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    H = H.clone()
    H.diagonal().add_(percdamp * torch.diag(H).mean())
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)


def _grid(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    s, z = qparams_from_range(w.amin(dim=1), w.amax(dim=1), bits, sym)
    return s, z.float()


def gptq_blocked(W: torch.Tensor, H: torch.Tensor, scheme: QuantScheme,
                 blocksize: int = 128, percdamp: float = 0.01) -> torch.Tensor:
    """The IST-DASLab/gptq loop (no act-order, dynamic groups); returns Ŵ (N, K)."""
    bits, G, sym = scheme.bits, scheme.group_size, scheme.sym
    W = W.float().clone()
    K = W.shape[1]
    Hinv = reference_hinv(H, percdamp)
    s, z = _grid(W, bits, sym)
    Q = torch.zeros_like(W)
    for i1 in range(0, K, blocksize):
        i2 = min(i1 + blocksize, K)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            if G > 0 and (i1 + i) % G == 0:
                s, z = _grid(W[:, i1 + i : i1 + i + G], bits, sym)
            q = s * (torch.clamp(torch.round(w / s) + z, 0, 2**bits - 1) - z)
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return Q


def gptq_unblocked(W: torch.Tensor, H: torch.Tensor, scheme: QuantScheme,
                   percdamp: float = 0.01) -> torch.Tensor:
    """Algorithm 1 with every update applied at once; returns Ŵ (N, K)."""
    bits, G, sym = scheme.bits, scheme.group_size, scheme.sym
    W = W.float().clone()
    K = W.shape[1]
    Hinv = reference_hinv(H, percdamp)
    s, z = _grid(W, bits, sym)
    Q = torch.zeros_like(W)
    for i in range(K):
        if G > 0 and i % G == 0:
            s, z = _grid(W[:, i : i + G], bits, sym)
        w = W[:, i]
        Q[:, i] = s * (torch.clamp(torch.round(w / s) + z, 0, 2**bits - 1) - z)
        W[:, i:] -= torch.outer((w - Q[:, i]) / Hinv[i, i], Hinv[i, i:])
    return Q


def synthetic_hessian(K: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    U = torch.randn(K, 64, generator=g, device=device) / 8
    d = torch.rand(K, generator=g, device=device) * 2 + 0.1
    return torch.diag(d) + U @ U.T


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="NxK,... (out x in)")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--asym", action="store_true")
    parser.add_argument("--act-order", action="store_true", help="ours only")
    parser.add_argument("--refs", default="blocked,unblocked",
                        help="reference loops to time: blocked, unblocked, or none")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    scheme = QuantScheme(args.bits, args.group_size, not args.asym)
    refs = [r for r in args.refs.split(",") if r and r != "none"]
    options = GPTQOptions(act_order=args.act_order)
    torch.backends.cuda.matmul.allow_tf32 = False

    warm_W = torch.randn(64, 256, device=device)
    gptq_quantize(warm_W, synthetic_hessian(256, device), scheme, options)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU, {torch.get_num_threads()} threads")
    print(f"# GPTQ {scheme.label}, blocksize {options.blocksize}, act_order {args.act_order}, "
          f"torch {torch.__version__}, {name}")
    head = f"{'N x K':>12} {'ours s':>8}" + "".join(f" {r + ' s':>12}" for r in refs)
    print(head + f" {'speed-up':>9} {'same':>7} {'err ours':>9} {'err ref':>9}", flush=True)
    for shape in args.shapes.split(","):
        N, K = (int(v) for v in shape.lower().split("x"))
        W = torch.randn(N, K, generator=torch.Generator().manual_seed(1)).to(device) * 0.02
        H = synthetic_hessian(K, device)
        qw, t_ours = timed(lambda W=W, H=H: gptq_quantize(W, H, scheme, options), device)
        W_ours = qw.dequantize()
        row = f"{shape:>12} {t_ours:8.2f}"
        first_ref = None
        for ref in refs:
            fn = gptq_blocked if ref == "blocked" else gptq_unblocked
            W_ref, t_ref = timed(lambda fn=fn, W=W, H=H: fn(W, H, scheme), device)
            first_ref = first_ref or (W_ref, t_ref)
            row += f" {t_ref:12.2f}"
        if first_ref is None:
            print(row, flush=True)
            continue
        W_ref, t_ref = first_ref
        same = (W_ours - W_ref).abs().le(1e-6 * W.abs().max()).float().mean().item()
        row += (f" {t_ref / t_ours:8.1f}x {same:7.4f} {relative_output_error(W, W_ours, H):9.2e}"
                f" {relative_output_error(W, W_ref, H):9.2e}")
        print(row, flush=True)


if __name__ == "__main__":
    main()
