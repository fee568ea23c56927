"""Our KL divergence of a GGUF file against llama.cpp's `llama-perplexity --kl-divergence`.

Both sides see the same file, the same text (the first --chars characters of the built-in
evaluation text; 0 for all of it) and windows of 512 tokens. llama.cpp: `llama-perplexity -m SOURCE.gguf --kl-divergence-base BASE` stores the
source's log-probabilities, then `-m QUANT.gguf --kl-divergence-base BASE --kl-divergence`
reports mean / 99th percentile KLD and "same top p". QuantDesk: quality_report(QUANT.gguf,
SOURCE.gguf) (llama.cpp's tokenizer for both, as llama-perplexity) and, with --hf-source,
quality_report(QUANT.gguf, HF folder) (the source run through transformers, tokens from the
Hugging Face tokenizer). Target: mean KLD within 5 % of llama.cpp's.

The source GGUF is an F32 conversion of the model (QuantDesk's converter), the quantized one
QuantDesk's Q4_K_M (no imatrix) unless --type says otherwise. Exits 0 with a note when
llama-perplexity is not built (.cache/llama-build/bin) or llama-cpp-python is missing.

    python benchmarks/kld_vs_llama.py [--model degrid|demo|FOLDER] [--type Q4_K_M]
                                      [--chars 20000] [--threads 2] [--hf-source]
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLAMA_PERPLEXITY = ROOT / ".cache" / "llama-build" / "bin" / "llama-perplexity"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))


def llama_figures(tool: Path, source: Path, quant: Path, text: Path, base: Path,
                  threads: int) -> dict[str, float]:
    common = ["-c", "512", "-b", "512", "-t", str(threads), "--kl-divergence-base", str(base)]
    subprocess.run([str(tool), "-m", str(source), "-f", str(text), *common],
                   check=True, capture_output=True, text=True)
    run = subprocess.run([str(tool), "-m", str(quant), "--kl-divergence", *common],
                         check=True, capture_output=True, text=True)
    log = run.stdout + run.stderr
    patterns = {"kld_mean": r"Mean\s+KLD:\s+([-\d.]+)", "kld_p99": r"99\.0%\s+KLD:\s+([-\d.]+)",
                "top1_agree": r"Same top p:\s+([-\d.]+)", "ppl": r"Mean PPL\(Q\)\s*:\s*([\d.]+)",
                "ppl_source": r"Mean PPL\(base\)\s*:\s*([\d.]+)"}
    out = {}
    for key, pattern in patterns.items():
        m = re.search(pattern, log)
        if m is None:
            raise RuntimeError(f"no {key} in llama-perplexity's output:\n{log[-3000:]}")
        out[key] = float(m.group(1))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="degrid")
    ap.add_argument("--type", default="Q4_K_M")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chars", type=int, default=20000)
    ap.add_argument("--hf-source", action="store_true")
    args = ap.parse_args()
    if not LLAMA_PERPLEXITY.is_file():
        print(f"skipped: {LLAMA_PERPLEXITY} is not built")
        return 0
    if importlib.util.find_spec("llama_cpp") is None:
        print("skipped: llama-cpp-python is not installed")
        return 0
    from degrid import degrid_demo_dir

    from qtapp.engine.gguf.quantize import quantize_to_gguf
    from qtapp.engine.model.sources import demo_model_dir
    from qtapp.engine.quality.gate import quality_report
    from qtapp.engine.quant.calibration import builtin_eval_text

    model = {"degrid": degrid_demo_dir, "demo": demo_model_dir}.get(args.model)
    folder = model() if model else Path(args.model)
    with tempfile.TemporaryDirectory(prefix="kld-vs-llama-") as tmp:
        t = Path(tmp)
        source, quant = t / "source-F32.gguf", t / f"quant-{args.type}.gguf"
        quantize_to_gguf(folder, source, "F32")
        quantize_to_gguf(folder, quant, args.type)
        text = t / "evaluation.txt"
        body = builtin_eval_text()[: args.chars or None]
        text.write_text(body, encoding="utf-8")
        rows = {"llama-perplexity": llama_figures(LLAMA_PERPLEXITY, source, quant, text,
                                                  t / "base.kld", args.threads)}
        print("llama-perplexity:", rows["llama-perplexity"], flush=True)
        r = quality_report(quant, source, text=body, generation=False)
        rows["QuantDesk, GGUF source"] = r.to_dict()
        if args.hf_source:
            r = quality_report(quant, folder, text=body, generation=False)
            rows["QuantDesk, HF source"] = r.to_dict()
    ref = rows["llama-perplexity"]["kld_mean"]
    print(f"{folder.name}, {args.type} against F32, {len(body)} characters of the built-in "
          f"evaluation text, ctx 512, {rows['QuantDesk, GGUF source']['positions']} positions\n")
    print(f"| {'':24} | PPL | PPL source | KLD mean | KLD p99 | top-1 % | KLD vs llama.cpp |")
    print("|---|---|---|---|---|---|---|")
    for name, d in rows.items():
        print(f"| {name:24} | {d['ppl']:.4f} | {d['ppl_source']:.4f} | {d['kld_mean']:.5f} | "
              f"{d['kld_p99']:.5f} | {d['top1_agree']:.2f} | "
              f"{(d['kld_mean'] / ref - 1) * 100:+.2f} % |")
    ok = abs(rows["QuantDesk, GGUF source"]["kld_mean"] / ref - 1) < 0.05
    print("\nwithin 5 %" if ok else "\nNOT within 5 %")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
