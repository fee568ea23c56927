"""GPTQ and AWQ on a GPU: wall time, peak VRAM and host RSS per block, fast and lean VRAM
modes, against llm-compressor.

Random-initialised models made on the device (no download): Llama of 1B, 8B and 70B shape,
Qwen3-30B-A3B (mixture of experts); W4 g128; calibration N × L random token ids (default
128 × 2048), the same ids for every run.

    python benchmarks/gpu_quantize.py --shape 8b --methods gptq,awq --modes fast,lean \
        [--layers 8] [--peer] [--stages] [--json $OUT/8b.json]
    python benchmarks/gpu_quantize.py --shape tiny --device cpu     # the script itself, on a CPU

Ours: the layer-streaming pipeline (`quantize_blocks`) on the GPU, float32 blocks,
checkpoint written per block as in a real job (export and evaluation are not timed), each
row in its own process (so its peak VRAM and peak RSS are its own). Mode fast keeps the
calibration activations on the GPU, lean in page-locked host memory
(`quant/streaming.BlockInputs`); fast also keeps the attention output across GPTQ's
true-sequential passes (`quant/attention_reuse.AttentionReuse`), mode fast-recompute does not (the
time before that change, on the same card). `--stages` times each stage of every block with
the GPU synchronised around it (seconds summed over blocks, then per block; each Hessian pass
on its own row; the checkpoint's hand-off in the loop and, apart, its write on the writer
thread, which overlaps the next block). The other rows' layer errors are compared with the
first fast row's (largest relative difference over all linears; fast-recompute must give 0).
Peer (`--peer`, needs llmcompressor importable): `benchmarks/gpu_peer_llmcompressor.py`
in its own process, its default sequential pipeline, model loaded in bf16 on the CPU as its
examples do. Peak VRAM is `torch.cuda.max_memory_allocated` of each process. The
planner's predicted peak VRAM (`planner.working_bytes`, fast or lean) is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {
    # Llama-3.2-1B, Llama-3.1-8B, Llama-3.1-70B, Qwen3-30B-A3B
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
           "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": True},
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False},
    "70b": {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
            "num_attention_heads": 64, "num_key_value_heads": 8, "tie_word_embeddings": False},
    "qwen3-30b-a3b": {"model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": 48,
                      "intermediate_size": 6144, "moe_intermediate_size": 768,
                      "num_experts": 128, "num_experts_per_tok": 8, "head_dim": 128,
                      "num_attention_heads": 32, "num_key_value_heads": 4,
                      "norm_topk_prob": True, "tie_word_embeddings": False,
                      "vocab_size": 151936},
    # the script itself on a CPU
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3,
             "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False,
             "vocab_size": 512},
    "tiny-moe": {"model_type": "qwen3_moe", "hidden_size": 128, "num_hidden_layers": 2,
                 "intermediate_size": 256, "moe_intermediate_size": 64, "num_experts": 8,
                 "num_experts_per_tok": 2, "head_dim": 32, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "tie_word_embeddings": False, "vocab_size": 512},
}
VOCAB = 128256
DEVICE = "cuda"


def build_random_llama(folder: Path, shape: str, layers: int | None = None) -> Path:
    """Write a random model of the given shape (bf16 safetensors shards, made on the GPU
    when there is one); Llama unless the shape names another model_type."""
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models
    from transformers import AutoConfig, AutoModelForCausalLM

    if (folder / "config.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"vocab_size": VOCAB, "max_position_embeddings": 8192,
                "rope_theta": 500000.0, **SHAPES[shape]}
    model_type = settings.pop("model_type", "llama")
    if layers:
        settings["num_hidden_layers"] = layers
    config = AutoConfig.for_model(model_type, **settings)
    config.torch_dtype = "bfloat16"
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
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


STAGES = {  # attribute of quant/pipeline or quant/streaming → stage name
    "collect_hessians": "Hessian passes (partial forwards + XᵀX)",
    "gptq_quantize": "GPTQ solve + column sweeps",
    "output_error_terms": "layer errors",
    "forward_block": "block forward (output for the next block)",
    "awq_search_block": "AWQ search (capture forward + grid + clip)",
    "awq_apply_block": "AWQ apply",
    "measure_output_errors": "RTN error chart",
}


class StageTimer:
    """Seconds per pipeline stage: wraps the pipeline's stage functions with the device
    synchronised before and after each call (nested calls count in the outer stage only)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self.depth = 0
        self.reuse: dict[bool, int] = {}  # blocks whose attention output was kept, or not

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def install(self) -> None:
        from qtapp.engine.quant import pipeline, streaming
        from qtapp.engine.quant.qstore import QuantStore

        for attr, stage in STAGES.items():  # each module's own name: a call goes through one
            for module in (pipeline, streaming):
                if hasattr(module, attr):
                    setattr(module, attr, self.wrap(getattr(module, attr), stage))
        # each true-sequential Hessian pass on its own row, named by its first linear
        pipeline.collect_hessians = self.wrap(
            pipeline.collect_hessians.__wrapped__,
            lambda args: f"Hessian pass {args[1][0].rsplit('.', 1)[-1]}… (partial forward "
                         "+ XᵀX)")
        pipeline.LayerStreamer.materialize = self.wrap(pipeline.LayerStreamer.materialize,
                                                       "load block (disk → GPU)")
        pipeline.LayerStreamer.release = self.wrap(pipeline.LayerStreamer.release,
                                                   "free block")
        # the checkpoint: the loop's share (host copies started, the previous block's write
        # waited for) synchronised like the other stages; the write itself runs on the
        # writer thread beside the next block, its wall time counted without a sync
        pipeline.CheckpointWriter.save = self.wrap(
            pipeline.CheckpointWriter.save, "checkpoint: hand-off (waits for the previous write)")
        write = pipeline.CheckpointWriter._write

        def written(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return write(*args, **kwargs)
            finally:
                stage = "(overlapped) checkpoint write on its thread"
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0
        pipeline.CheckpointWriter._write = written
        reuse = pipeline.AttentionReuse.start

        def started(obj, *args, **kwargs):
            reuse(obj, *args, **kwargs)
            self.reuse[obj.state != "off"] = self.reuse.get(obj.state != "off", 0) + 1
        pipeline.AttentionReuse.start = started
        assert QuantStore is not None

    def wrap(self, fn, stage):
        def timed(*args, **kwargs):
            if self.depth:
                return fn(*args, **kwargs)
            self.depth += 1
            self.sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                name = stage(args) if callable(stage) else stage
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
                self.depth -= 1
        timed.__wrapped__ = fn
        return timed


def run_ours(folder: Path, method: str, tokens: torch.Tensor, group: int, batch: int,
             mode: str = "fast", device: str = DEVICE, stages: bool = False) -> dict:
    from qtapp.engine import events as ev
    from qtapp.engine.config import AWQOptions, CalibrationSpec, JobSpec, QuantScheme
    from qtapp.engine.model.sources import resolve_model
    from qtapp.engine.quant.pipeline import quantize_blocks
    from qtapp.engine.quant.qstore import QuantStore

    dev = torch.device(device)
    timer = StageTimer(dev)
    if stages:
        timer.install()
    from qtapp.engine.quant import pipeline  # after install: its names may be wrapped

    info = resolve_model(str(folder))
    job = JobSpec(model=str(folder), method=method, out="unused",
                  scheme=QuantScheme(4, group, method != "awq"), evaluate=False, resume=False,
                  calibration=CalibrationSpec(samples=tokens.shape[0], seq_len=tokens.shape[1]),
                  awq=AWQOptions())
    kind, job, resident = lean_budget(mode, job, folder)
    blocks: list[float] = []
    errors: dict[str, float] = {}
    last = [time.perf_counter()]

    def emit(e: ev.Event) -> None:
        if isinstance(e, ev.Progress) and e.stage == "quantize":
            now = time.perf_counter()
            blocks.append(now - last[0])
            last[0] = now
        elif isinstance(e, ev.Progress) and e.stage == "calibration":
            last[0] = time.perf_counter()
        elif isinstance(e, ev.Layer):
            errors[e.module] = e.rel_error

    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        pipeline.quantize_blocks(job, info, tokens, QuantStore(Path(tmp) / "store"), emit,
                                 lambda: False, dev, batch=batch, lean=kind == "lean",
                                 reuse_attention=mode != "fast-recompute", resident=resident)
        timer.sync()
        seconds = time.perf_counter() - t0
    assert quantize_blocks is not None
    n = len(blocks)
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else 0
    return {"who": "quantdesk", "method": method, "mode": mode,
            "resident_samples": resident if kind == "lean" else None,
            "attention_kept_blocks": timer.reuse.get(True, 0) if stages else None,
            "blocks": n, "seconds": round(seconds, 1),
            "block_s_median": round(sorted(blocks)[n // 2], 2) if n else None,
            "block_s_mean_after_first": round(sum(blocks[1:]) / max(n - 1, 1), 2),
            "first_block_s": round(blocks[0], 2) if n else None,
            "peak_vram_gib": round(peak / 2**30, 2),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "mean_rel_error": round(sum(errors.values()) / max(len(errors), 1), 5),
            "errors": errors,
            "stages_s_per_block": {k: round(v / max(n, 1), 3) for k, v in
                                   sorted(timer.seconds.items(), key=lambda kv: -kv[1])}}


def run_row(args: argparse.Namespace, folder: Path, tokens_file: Path, method: str,
            mode: str) -> dict:
    """One of our rows in its own process (its own peak VRAM and RSS)."""
    cmd = [sys.executable, __file__, "--row", f"{method}:{mode}", "--folder", str(folder),
           "--tokens", str(tokens_file), "--group", str(args.group), "--batch",
           str(args.batch), "--device", args.device] + (["--stages"] if args.stages else [])
    r = subprocess.run(cmd, capture_output=True, text=True, check=False,
                       env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if r.returncode:
        return {"who": "quantdesk", "method": method, "mode": mode,
                "error": (r.stderr or r.stdout)[-1500:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_peer(folder: Path, method: str, tokens_file: Path, group: int) -> dict:
    script = ROOT / "benchmarks" / "gpu_peer_llmcompressor.py"
    r = subprocess.run([sys.executable, str(script), str(folder), str(tokens_file), method,
                        str(group)], capture_output=True, text=True, check=False,
                       env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if r.returncode:
        return {"who": "llm-compressor", "method": method, "error": r.stderr[-1500:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def lean_budget(mode: str, job, folder: Path) -> tuple[str, object, int]:
    """Mode "lean@8GiB": lean mode under --max-vram 8GiB, with as many samples kept on the
    GPU as the planner gives that budget on this card (planner.resident_samples); plain
    "lean" keeps none. (mode without the budget, the job with its max_vram, resident)"""
    from dataclasses import replace

    from qtapp.engine.planning import hardware
    from qtapp.engine.planning.planner import resident_samples
    from qtapp.engine.planning.shape import ModelShape
    from qtapp.engine.units import parse_size

    mode, _, budget = mode.partition("@")
    if not budget:
        return mode, job, 0
    job = replace(job, max_vram=parse_size(budget))
    shape = ModelShape.from_config(json.loads((folder / "config.json").read_text()))
    return mode, job, resident_samples(job, shape, hardware.detect().best_gpu)


def predicted_gib(folder: Path, method: str, tokens: torch.Tensor, mode: str,
                  batch: int, resident: int = 0) -> float:
    from qtapp.engine.planning.planner import working_bytes
    from qtapp.engine.planning.shape import ModelShape

    config = json.loads((folder / "config.json").read_text())
    shape = ModelShape.from_config(config)
    return round(working_bytes(shape, method, tokens.shape[0], tokens.shape[1],
                               lean=mode.startswith("lean"), batch=batch,
                               reuse=mode == "fast", resident=resident) / 2**30, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--layers", type=int, default=None, help="fewer blocks than the shape has")
    ap.add_argument("--methods", default="gptq,awq")
    ap.add_argument("--modes", default="fast",
                    help="any of fast, fast-recompute (fast without the kept attention "
                         "output: the time before it), lean (every sample in host memory), "
                         "lean@8GiB (lean under --max-vram 8GiB, the planner's resident "
                         "samples on the GPU); comma-separated")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--peer", action="store_true")
    ap.add_argument("--peer-methods", default=None, help="default: --methods")
    ap.add_argument("--stages", action="store_true", help="seconds per stage of each block")
    ap.add_argument("--device", default=DEVICE)
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "gpu-bench")
    ap.add_argument("--row", help=argparse.SUPPRESS)  # method:mode, in a child process
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.row:
        method, mode = args.row.split(":")
        tokens = torch.load(args.tokens)
        row = run_ours(args.folder, method, tokens, args.group, args.batch, mode,
                       args.device, args.stages)
        print(json.dumps(row), flush=True)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (or --device cpu with --shape tiny)")
    t0 = time.perf_counter()
    folder = build_random_llama(args.workdir / f"{args.shape}-{args.layers or 'all'}",
                                args.shape, args.layers)
    print(f"model written in {time.perf_counter() - t0:.0f} s: {folder}", flush=True)
    config = json.loads((folder / "config.json").read_text())
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, config["vocab_size"], (args.samples, args.seq), generator=g)
    tokens_file = args.workdir / f"tokens-{args.samples}x{args.seq}.pt"
    torch.save(tokens, tokens_file)
    rows = []
    for method in args.methods.split(","):
        fast_errors = None
        for mode in args.modes.split(","):
            row = run_row(args, folder, tokens_file, method, mode)
            row["predicted_vram_gib"] = predicted_gib(folder, method, tokens, mode, args.batch,
                                                      row.get("resident_samples") or 0)
            errors = row.pop("errors", None)
            if errors and fast_errors is None and mode == "fast":
                fast_errors = errors  # the first fast row: later rows (lean, or a second
                # fast row, which shows the run-to-run difference) are compared with it
            elif errors and fast_errors:
                row["max_rel_diff_vs_fast"] = max(
                    abs(errors[k] - v) / v for k, v in fast_errors.items() if v > 0)
            rows.append(row)
            print(json.dumps(row), flush=True)
    for method in (args.peer_methods or args.methods).split(",") if args.peer else ():
        rows.append(run_peer(folder, method, tokens_file, args.group))
        print(json.dumps(rows[-1]), flush=True)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    layers = config["num_hidden_layers"]
    full = SHAPES[args.shape]["num_hidden_layers"]
    print(f"\nrandom {args.shape} shape ({layers} of {full} blocks), W4 g{args.group}, "
          f"{args.samples} × {args.seq} tokens, batch {args.batch}, {name}\n")
    print("| who | method | mode | total s | s / block (median) | whole model s "
          f"({full} blocks) | peak VRAM GiB | planner GiB | peak RSS GiB | vs fast |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['who']} | {r['method']} | {r.get('mode', '')} | failed: "
                  f"{r['error'][-300:]!r} | | | | | | |")
            continue
        med = r.get("block_s_median")
        whole = round(med * full) if med else ""
        diff = r.get("max_rel_diff_vs_fast")
        print(f"| {r['who']} | {r['method']} | {r.get('mode', '')} | {r['seconds']} | "
              f"{med or ''} | {whole} | {r['peak_vram_gib']} | "
              f"{r.get('predicted_vram_gib', '')} | {r.get('peak_rss_gib', '')} | "
              f"{'' if diff is None else f'{diff:.1e}'} |")
    for r in rows:
        if r.get("stages_s_per_block"):
            print(f"\nstages, s per block: {r['method']} {r['mode']} "
                  f"(block {r['block_s_mean_after_first']} s after the first; attention "
                  f"output kept in {r.get('attention_kept_blocks')} of {r['blocks']} blocks)")
            print("| stage | s / block |\n|---|---|")
            for k, v in r["stages_s_per_block"].items():
                print(f"| {k} | {v} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"shape": args.shape, "layers": layers,
                                         "device": name, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
