"""The method-comparison table for the demo model (SmolLM2-135M-Instruct).

method, bits, group, size on disk, perplexity on the built-in evaluation text, wall time
(quantization only, and the whole job), peak RSS of the job's process.

    python benchmarks/demo_table.py [--samples 128] [--rows rtn-w4g64,...] [--model DIR]

Rows run in their own processes (benchmarks/run_one.py) so that peak RSS is per row.
The bf16 source is always the first row. Give `--model` the de-gridded copy of the demo
(benchmarks/degrid.py) to compare methods fairly: its weights are no longer on the Q4_1
grid they were shipped in.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qtapp.engine.config import JobSpec, QuantScheme, preset_rules

ROWS = {
    "rtn-w4g64": {"method": "rtn", "scheme": QuantScheme(4, 64, True)},
    "gptq-w4g64": {"method": "gptq", "scheme": QuantScheme(4, 64, True)},
    "gptq-w8g64": {"method": "gptq", "scheme": QuantScheme(8, 64, True)},
    "gptq-attn8-ffn4": {"method": "gptq", "scheme": QuantScheme(4, 64, True),
                            "rules": preset_rules("attn8-ffn4", QuantScheme(4, 64, True))},
    "rtn-w4g64-asym": {"method": "rtn", "scheme": QuantScheme(4, 64, False)},
    "awq-w4g64": {"method": "awq", "scheme": QuantScheme(4, 64, False)},
    "awq-attn8-ffn4": {"method": "awq", "scheme": QuantScheme(4, 64, False),
                           "rules": preset_rules("attn8-ffn4", QuantScheme(4, 64, False))},
}


def run_row(name: str, model: str, samples: int, seq_len: int, tmp: Path) -> dict:
    from qtapp.engine.config import CalibrationSpec

    spec = ROWS[name]
    job = JobSpec(model=model, out=str(tmp / name), evaluate=True, resume=False,
                  calibration=CalibrationSpec(samples=samples, seq_len=seq_len), **spec)
    job_file = tmp / f"{name}.json"
    job_file.write_text(job.to_json())
    out = subprocess.run(check=False, args=[sys.executable, str(ROOT / "benchmarks" / "run_one.py"), str(job_file)],
                         capture_output=True, text=True, env=dict(os.environ))
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--model", default="demo")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    from qtapp.engine.model.sources import resolve_model
    from qtapp.engine.quality.gate import model_perplexity
    from qtapp.engine.results import JobResult

    info = resolve_model(args.model)
    table = [{"row": "bf16 (source)", "method": "-", "bits": 16, "group": "-",
              "size_mb": info.size_bytes / 2**20, "ppl": model_perplexity(info.path)[0],
              "quant_s": 0.0, "job_s": 0.0, "rss_mb": 0}]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.rows.split(","):
            r = run_row(name, args.model, args.samples, args.seq_len, Path(tmp))
            s = JobResult.from_dict(r["result"])
            spec = ROWS[name]
            table.append({"row": name, "method": spec["method"],
                          "bits": "8/4" if "rules" in spec else spec["scheme"].bits,
                          "group": spec["scheme"].group_size,
                          "size_mb": s.sizes.bytes / 2**20, "ppl": s.quality.ppl,
                          "quant_s": s.quantize_seconds, "job_s": r["seconds"],
                          "rss_mb": r["peak_rss_mb"]})
            t = table[-1]
            print(f"row {name}: size {t['size_mb']:.1f} MiB, ppl {t['ppl']:.3f}, quantize "
                  f"{t['quant_s']:.0f} s, job {t['job_s']:.0f} s, peak RSS {t['rss_mb']} MiB",
                  file=sys.stderr, flush=True)
    print(f"\n{info.name}: {args.samples} × {args.seq_len} calibration tokens, "
          f"perplexity on the built-in evaluation text (ctx 512)\n")
    print(f"| {'row':<18} | {'method':<6} | bits | group | size MiB | perplexity | "
          f"quantize s | job s | peak RSS MiB |")
    print("|" + "|".join("-" * w for w in (20, 8, 6, 7, 10, 12, 12, 7, 14)) + "|")
    for t in table:
        print(f"| {t['row']:<18} | {t['method']:<6} | {t['bits']!s:>4} | {t['group']!s:>5} | "
              f"{t['size_mb']:8.1f} | {t['ppl']:10.3f} | {t['quant_s']:10.1f} | "
              f"{t['job_s']:5.0f} | {t['rss_mb']:12d} |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
