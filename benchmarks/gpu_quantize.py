"""GPTQ and AWQ on a GPU: wall time and peak VRAM per block and in total, against llm-compressor.

Random-initialised Llama models of 1B and 8B shape (no download); W4 g128; calibration
N × L random token ids (default 128 × 2048), the same ids for every run.

    python benchmarks/gpu_quantize.py --shape 1b --methods gptq,awq [--peer] [--samples 128]

Ours: the layer-streaming pipeline (`quantize_blocks`) on the GPU, float32 blocks,
checkpoint written per block as in a real job (export and evaluation are not timed).
Peer (`--peer`, needs llmcompressor importable): `benchmarks/gpu_peer_llmcompressor.py`
in its own process, its default sequential pipeline, model loaded in bf16 on the CPU as its
examples do. Peak VRAM is `torch.cuda.max_memory_allocated` of each process.
The planner's predicted peak VRAM (`planner.working_bytes`, the quantize stage's working
memory on the GPU) is printed beside ours.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {
    # Llama-3.2-1B and Llama-3.1-8B
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
               "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": True},
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
               "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False},
}
VOCAB = 128256
DEVICE = "cuda"


def build_random_llama(folder: Path, shape: str, layers: int | None = None) -> Path:
    """Write a random Llama of the given shape (bf16 safetensors shards, made on the GPU)."""
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    settings = dict(SHAPES[shape])
    if layers:
        settings["num_hidden_layers"] = layers
    config = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=8192, rope_theta=500000.0,
                         torch_dtype="bfloat16", **settings)
    with init_empty_weights():
        skeleton = LlamaForCausalLM(config)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(dev).manual_seed(0)
    shard: dict[str, torch.Tensor] = {}
    weight_map: dict[str, str] = {}
    n_shard = 0

    def flush() -> None:
        nonlocal n_shard, shard
        if shard:
            name = f"model-{n_shard:05d}.safetensors"
            save_file(shard, folder / name, metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
            n_shard += 1
            shard = {}

    for name, p in skeleton.state_dict().items():
        if name.endswith("norm.weight"):
            t = torch.ones(p.shape, dtype=torch.bfloat16)
        else:
            t = (torch.randn(p.shape, generator=g, device=dev) * 0.02).to(torch.bfloat16).cpu()
        shard[name] = t
        if sum(v.numel() for v in shard.values()) * 2 > 2 * 2**30:
            flush()
    flush()
    total = sum((folder / f).stat().st_size for f in set(weight_map.values()))
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))
    config.save_pretrained(folder)
    Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")).save(
        str(folder / "tokenizer.json"))
    return folder


def run_ours(folder: Path, method: str, tokens: torch.Tensor, group: int, batch: int) -> dict:
    from qtapp.engine import events as ev
    from qtapp.engine.config import AWQOptions, CalibrationSpec, JobSpec, QuantScheme
    from qtapp.engine.model.sources import resolve_model
    from qtapp.engine.quant.pipeline import quantize_blocks
    from qtapp.engine.quant.qstore import QuantStore

    info = resolve_model(str(folder))
    job = JobSpec(model=str(folder), method=method, out="unused",
                  scheme=QuantScheme(4, group, method != "awq"), evaluate=False, resume=False,
                  calibration=CalibrationSpec(samples=tokens.shape[0], seq_len=tokens.shape[1]),
                  awq=AWQOptions())
    blocks: list[float] = []
    errors: list[float] = []
    last = [time.perf_counter()]

    def emit(e: ev.Event) -> None:
        if isinstance(e, ev.Progress) and e.stage == "quantize":
            now = time.perf_counter()
            blocks.append(now - last[0])
            last[0] = now
        elif isinstance(e, ev.Progress) and e.stage == "calibration":
            last[0] = time.perf_counter()
        elif isinstance(e, ev.Layer):
            errors.append(e.rel_error)

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        quantize_blocks(job, info, tokens, QuantStore(Path(tmp) / "store"), emit, lambda: False,
                        torch.device(DEVICE), batch=batch)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    first_block = blocks[0] if blocks else float("nan")
    return {"who": "quantdesk", "method": method, "seconds": round(seconds, 1),
            "block_s_median": round(sorted(blocks)[len(blocks) // 2], 2),
            "first_block_s": round(first_block, 2),
            "peak_vram_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "mean_rel_error": round(sum(errors) / max(len(errors), 1), 4)}


def run_peer(folder: Path, method: str, tokens_file: Path, group: int) -> dict:
    script = ROOT / "benchmarks" / "gpu_peer_llmcompressor.py"
    r = subprocess.run([sys.executable, str(script), str(folder), str(tokens_file), method,
                        str(group)], capture_output=True, text=True, check=False,
                       env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if r.returncode:
        return {"who": "llm-compressor", "method": method, "error": r.stderr[-1500:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def predicted_gib(folder: Path, method: str, tokens: torch.Tensor) -> float:
    from qtapp.engine.planning.planner import working_bytes
    from qtapp.engine.planning.shape import ModelShape

    config = json.loads((folder / "config.json").read_text())
    shape = ModelShape.from_config(config)
    return round(working_bytes(shape, method, tokens.shape[0], tokens.shape[1]) / 2**30, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--layers", type=int, default=None, help="fewer blocks than the shape has")
    ap.add_argument("--methods", default="gptq,awq")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--peer", action="store_true")
    ap.add_argument("--fp32", action="store_true",
                    help="also run with TF32 off (pipeline.GPU_TF32 = False), a row of its own")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "gpu-bench")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    t0 = time.perf_counter()
    folder = build_random_llama(args.workdir / f"llama-{args.shape}-{args.layers or 'all'}",
                                args.shape, args.layers)
    print(f"model written in {time.perf_counter() - t0:.0f} s: {folder}", flush=True)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (args.samples, args.seq), generator=g)
    tokens_file = args.workdir / "tokens.pt"
    torch.save(tokens, tokens_file)
    rows = []
    for method in args.methods.split(","):
        from qtapp.engine.quant import pipeline

        for tf32 in (True, False) if args.fp32 else (True,):
            pipeline.GPU_TF32 = tf32
            row = run_ours(folder, method, tokens, args.group, args.batch)
            row["predicted_vram_gib"] = predicted_gib(folder, method, tokens)
            row["who"] += "" if tf32 else " (TF32 off)"
            rows.append(row)
            print(json.dumps(row), flush=True)
        pipeline.GPU_TF32 = True
        if args.peer:
            rows.append(run_peer(folder, method, tokens_file, args.group))
            print(json.dumps(rows[-1]), flush=True)
    name = torch.cuda.get_device_name()
    layers = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    print(f"\nrandom Llama {args.shape} shape ({layers} blocks), W4 g{args.group}, "
          f"{args.samples} × {args.seq} tokens, {name}\n")
    print("| who | method | total s | s / block (median) | peak VRAM GiB | planner GiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['who']} | {r['method']} | failed: {r['error'][-200:]!r} | | | |")
            continue
        print(f"| {r['who']} | {r['method']} | {r['seconds']} | {r.get('block_s_median', '')} "
              f"| {r['peak_vram_gib']} | {r.get('predicted_vram_gib', '')} |")


if __name__ == "__main__":
    main()
