"""Peak RSS while quantizing a random-initialised Llama of 1B shape, against its size.

The layer-streaming pipeline holds one decoder block (float32) plus the calibration
activations, so the process's peak RSS should stay well under the model's own size.

    python benchmarks/peak_rss_1b.py [--methods rtn,gptq] [--samples 8] [--layers 16]

Shape (Llama-3.2-1B): hidden 2048, 16 layers, 32 heads / 8 KV heads, FFN 8192; the
vocabulary is the demo tokenizer's (49 152) so the built-in calibration text tokenizes.
Weights are written once in bf16 under the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qtapp.engine.config import CalibrationSpec, JobSpec, QuantScheme


def build(folder: Path, layers: int) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from qtapp.engine.model.sources import demo_model_dir

    if (folder / "config.json").exists():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(demo_model_dir())
    config = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=8,
                         vocab_size=len(tok), tie_word_embeddings=True,
                         max_position_embeddings=4096, torch_dtype="bfloat16")
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="rtn,gptq")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--layers", type=int, default=16)
    args = ap.parse_args()
    from qtapp.engine.model.sources import cache_root, resolve_model

    folder = build(cache_root() / "bench" / f"llama-1b-shape-{args.layers}l", args.layers)
    info = resolve_model(str(folder))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            job = JobSpec(model=str(folder), method=method, out=f"{tmp}/{method}",
                          scheme=QuantScheme(4, 128, True), evaluate=False, resume=False,
                          calibration=CalibrationSpec(samples=args.samples, seq_len=512))
            spec = Path(tmp) / f"{method}.json"
            spec.write_text(job.to_json())
            r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_one.py"),
                                str(spec)], check=False, capture_output=True, text=True,
                               env=dict(os.environ))
            if r.returncode:
                raise SystemExit(r.stderr[-3000:])
            d = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append((method, d["result"]["quantize_seconds"], d["seconds"],
                         d["peak_rss_mb"], d["result"]["sizes"]["bytes"] / 2**20))
    size = info.size_bytes / 2**20
    print(f"\nrandom Llama, 1B shape ({info.n_params / 1e9:.2f} B parameters, {args.layers} "
          f"layers), bf16 on disk {size:.0f} MiB (float32 in memory {2 * size:.0f} MiB); "
          f"W4 g128, {args.samples} × 512 calibration tokens\n")
    print("| method | quantize s | job s | peak RSS MiB | RSS / bf16 size | output MiB |")
    print("|---|---|---|---|---|---|")
    for m, q, j, rss, out in rows:
        print(f"| {m} | {q:.0f} | {j:.0f} | {rss} | {rss / size:.2f} | {out:.0f} |")


if __name__ == "__main__":
    main()
