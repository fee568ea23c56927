"""QuantDesk vs llm-compressor 0.14 on this machine: same model, settings and calibration.

Both get the same N × 512 calibration rows (consecutive 512-token rows of the same text,
as the peer script in shared/peers makes them); both outputs are scored by the same
evaluator on the built-in evaluation text (the quality gate's perplexity protocol,
qtapp.engine.quality.gate.model_perplexity). Wall time is the quantization itself (the
peer's `oneshot`, our layer-streaming pass); peak RSS is each process's own. CPU time is
each whole process's user + system time (model loading and saving included): on a machine
that is busy with other work it is a fairer comparison than wall time.

    python benchmarks/peer_llmcompressor.py [--methods gptq,awq] [--samples 64] [--model DIR]

Needs the peer venv (kept out of the project's dependencies):
    python3 -m venv .peer-venv && .peer-venv/bin/pip install torch==2.13.0 llmcompressor==0.14.0.1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PEER_SCRIPT = ROOT.parent / "shared" / "peers" / "llm_compressor_cpu.py"
PEER_PY = ROOT / ".peer-venv" / "bin" / "python"

from qtapp.engine.config import CalibrationSpec, JobSpec, QuantScheme


def calibration_rows(model_dir: Path, text: str, n: int, seq_len: int = 512) -> torch.Tensor:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return torch.tensor([ids[i * seq_len:(i + 1) * seq_len] for i in range(n)])


def _child_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_ours(method: str, sym: bool, model_dir: Path, tokens_file: Path, out: Path) -> dict:
    job = JobSpec(model=str(model_dir), method=method, out=str(out), evaluate=False,
                  resume=False, scheme=QuantScheme(4, 64, sym),
                  calibration=CalibrationSpec(samples=int(torch.load(tokens_file).shape[0])))
    job_file = out.parent / f"{out.name}.json"
    job_file.write_text(job.to_json())
    cpu0 = _child_cpu_seconds()
    r = subprocess.run(check=False, args=[sys.executable, str(ROOT / "benchmarks" / "run_one.py"), str(job_file),
                        str(tokens_file)], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    d = json.loads(r.stdout.strip().splitlines()[-1])
    return {"seconds": d["result"]["quantize_seconds"], "job_seconds": d["seconds"],
            "peak_rss_mb": d["peak_rss_mb"], "out": out, "cpu_s": _child_cpu_seconds() - cpu0}


def run_peer(method: str, sym: bool, model_dir: Path, calib: Path, out: Path, n: int) -> dict:
    env = dict(os.environ, ASYM="0" if sym else "1", HF_HUB_OFFLINE="1")
    cpu0 = _child_cpu_seconds()
    r = subprocess.run(check=False, args=[str(PEER_PY), str(PEER_SCRIPT), str(model_dir), str(calib), str(out),
                        method, str(n)], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"llm-compressor {method} failed:\n{r.stderr[-3000:]}")
    rec = json.loads((out / "lc_results.jsonl").read_text().strip().splitlines()[-1])
    tag = method + ("-asym" if not sym and method != "awq" else "")
    return {"seconds": rec["seconds"], "peak_rss_mb": rec["peak_rss_mb"],
            "out": out / f"lc-{tag}", "cpu_s": _child_cpu_seconds() - cpu0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="gptq,awq")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--model", default="demo", help="'demo' or an HF folder "
                        "(e.g. the de-gridded demo from benchmarks/degrid.py)")
    args = parser.parse_args()
    if not PEER_PY.exists():
        raise SystemExit(f"no peer venv at {PEER_PY}; see this script's docstring")
    from qtapp.engine.model.sources import resolve_model
    from qtapp.engine.quality.gate import model_perplexity
    from qtapp.engine.quant.calibration import builtin_calibration_text

    model_dir = resolve_model(args.model).path
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        calib = tmp / "calib.txt"
        calib.write_text(builtin_calibration_text(), encoding="utf-8")
        tokens_file = tmp / "tokens.pt"
        torch.save(calibration_rows(model_dir, calib.read_text(encoding="utf-8"),
                                    args.samples), tokens_file)
        for method in args.methods.split(","):
            sym = method == "gptq"
            peer = run_peer(method, sym, model_dir, calib, tmp / "peer", args.samples)
            ours = run_ours(method, sym, model_dir, tokens_file, tmp / f"ours-{method}")
            for who, r in (("llm-compressor 0.14", peer), ("QuantDesk", ours)):
                rows.append({"method": method, "who": who, "ppl": model_perplexity(r["out"])[0],
                             "seconds": r["seconds"], "cpu_s": r["cpu_s"],
                             "rss": r["peak_rss_mb"], "load": os.getloadavg()[0]})
                print(json.dumps({k: v for k, v in rows[-1].items()}), flush=True)
        base = model_perplexity(model_dir)[0]
    print(f"\n{model_dir.name}: W4 g64 (GPTQ symmetric, AWQ asymmetric), "
          f"{args.samples} × 512 calibration tokens; source perplexity {base:.3f}\n")
    print("| method | tool | perplexity | quantize s (wall) | process CPU s | peak RSS MiB | "
          "load after |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['who']} | {r['ppl']:.3f} | {r['seconds']:.1f} | "
              f"{r['cpu_s']:.0f} | {r['rss']} | {r['load']:.1f} |")


if __name__ == "__main__":
    main()
