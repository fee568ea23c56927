"""GGUF benchmark on the demo model: QuantDesk's converter and quantizer next to llama.cpp's.

Rows: type, imatrix, size, perplexity, time. Perplexity is measured for every file the
same way, the quality gate's protocol through llama-cpp-python on the built-in evaluation
text (windows of 512 tokens, the second half of each scored;
qtapp.engine.quality.gate.model_perplexity). The importance matrices of both routes are
computed on the same tokens: the first `--chunks` windows of 512 tokens of the built-in
calibration text (QuantDesk: hooks on the transformers model; llama.cpp: llama-imatrix on
its own F16 file). The llama.cpp route is convert_hf_to_gguf.py → F16 → llama-imatrix →
llama-quantize, from the llama-cpp-python sdist under .cache/sdist and the tools built into
.cache/llama-build (rows are skipped when those are absent).

By default the model is the de-gridded demo (benchmarks/degrid.py), whose weights are no
longer on the Q4_1 grid the demo ships in.

    python benchmarks/gguf_table.py [--model degrid|demo|FOLDER] [--chunks 32]
                                    [--types F16,Q8_0,Q4_0,Q4_K_M,Q5_K_M] [--out DIR]
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
from typing import Self

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch
from degrid import degrid_demo_dir

from qtapp.engine.gguf.imatrix import compute_imatrix, write_imatrix
from qtapp.engine.gguf.quantize import quantize_to_gguf
from qtapp.engine.model.sources import demo_model_dir
from qtapp.engine.quality.gate import model_perplexity
from qtapp.engine.quant.calibration import builtin_calibration_text, tokenize

CTX = 512
IMATRIX_TYPES = ("Q4_0", "Q4_K_M", "Q5_K_M")


def llama_cpp_dir() -> Path | None:
    found = sorted((ROOT / ".cache" / "sdist").glob("llama_cpp_python-*/vendor/llama.cpp"))
    return found[-1] if found else None


def tool(name: str) -> Path | None:
    path = ROOT / ".cache" / "llama-build" / "bin" / name
    return path if path.is_file() else None


class Clock:
    """Wall time and CPU time (this process and its children) of a block."""

    def __enter__(self) -> Self:
        self.wall = time.perf_counter()
        self.cpu = time.process_time() + _children_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() + _children_cpu() - self.cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(*args: object, cwd: Path | None = None) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    src = llama_cpp_dir()
    if src is not None and str(args[0]) == sys.executable and "convert_hf_to_gguf" in str(
            args[1]):
        env["PYTHONPATH"] = str(src / "gguf-py")
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{result.stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="degrid")
    ap.add_argument("--chunks", type=int, default=32)
    ap.add_argument("--types", default="F16,Q8_0,Q4_0,Q4_K_M,Q5_K_M")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    model = {"degrid": degrid_demo_dir, "demo": demo_model_dir}.get(args.model)
    src = model() if model else Path(args.model)
    out = (args.out or Path(tempfile.mkdtemp(prefix="gguf-bench-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src)
    calib_text = builtin_calibration_text()
    calib = tokenize(tokenizer, calib_text)[: args.chunks * CTX].reshape(args.chunks, CTX)
    (out / "calibration.txt").write_text(calib_text, encoding="utf-8")
    rows: list[dict] = []
    timings: dict[str, float] = {}

    def row(route: str, gguf_type: str, imatrix: str, path: Path, clock: Clock | None) -> None:
        ppl, positions = model_perplexity(path, CTX)
        rows.append({"route": route, "type": gguf_type, "imatrix": imatrix,
                     "size_mib": path.stat().st_size / 2**20, "ppl": ppl,
                     "positions": positions,
                     "wall_s": clock.wall if clock else None,
                     "cpu_s": clock.cpu if clock else None})
        print(json.dumps(rows[-1]), flush=True)

    # conversion to F16 in fresh processes (imports included for both), twice each,
    # alternating, so that both see the same machine load
    vendor = llama_cpp_dir()
    ours_cmd = [sys.executable, "-c", ("import sys; from pathlib import Path; "
                "from qtapp.engine.gguf.convert import convert_to_gguf; "
                "convert_to_gguf(Path(sys.argv[1]), Path(sys.argv[2]), 'F16')"),
                src, out / "ours-F16.gguf"]
    for rep in range(2):
        with Clock() as c:
            run(*ours_cmd, cwd=ROOT)
        timings[f"quantdesk_convert_f16_wall_{rep}"] = c.wall
        timings[f"quantdesk_convert_f16_cpu_{rep}"] = c.cpu
        if vendor is not None:
            with Clock() as c:
                run(sys.executable, vendor / "convert_hf_to_gguf.py", src, "--outtype", "f16",
                    "--outfile", out / "llama-F16.gguf")
            timings[f"llamacpp_convert_f16_wall_{rep}"] = c.wall
            timings[f"llamacpp_convert_f16_cpu_{rep}"] = c.cpu
    print(json.dumps(timings), flush=True)

    with Clock() as c:
        imatrix = compute_imatrix(src, calib, dataset="calibration.txt")
    timings["quantdesk_imatrix_wall"], timings["quantdesk_imatrix_cpu"] = c.wall, c.cpu
    write_imatrix(imatrix, out / "quantdesk-imatrix.gguf")

    for gguf_type in args.types.split(","):
        with Clock() as c:
            path = quantize_to_gguf(src, out / f"ours-{gguf_type}.gguf", gguf_type).path
        row("quantdesk", gguf_type, "-", path, c)
        if gguf_type in IMATRIX_TYPES:
            with Clock() as c:
                path = quantize_to_gguf(src, out / f"ours-{gguf_type}-imat.gguf", gguf_type,
                                        imatrix).path
            row("quantdesk", gguf_type, "quantdesk", path, c)

    quantize, imatrix_tool = tool("llama-quantize"), tool("llama-imatrix")
    if vendor is not None and quantize is not None and imatrix_tool is not None:
        f16 = out / "llama-F16.gguf"
        row("llama.cpp convert", "F16", "-", f16, None)
        with Clock() as c:
            run(imatrix_tool, "-m", f16, "-f", "calibration.txt", "-c", CTX, "-b", CTX,
                "--chunks", args.chunks, "-o", "llama-imatrix.gguf", cwd=out)
        timings["llamacpp_imatrix_wall"], timings["llamacpp_imatrix_cpu"] = c.wall, c.cpu
        for gguf_type in ("Q4_K_M",):
            for with_imatrix in (False, True):
                suffix = "-imat" if with_imatrix else ""
                extra = ["--imatrix", "llama-imatrix.gguf"] if with_imatrix else []
                with Clock() as c:
                    run(quantize, *extra, f16.name, f"llama-{gguf_type}{suffix}.gguf", gguf_type,
                        os.cpu_count() or 1, cwd=out)
                row("llama.cpp quantize", gguf_type, "llama-imatrix" if with_imatrix else "-",
                    out / f"llama-{gguf_type}{suffix}.gguf", c)

    (out / "gguf_table.json").write_text(json.dumps({"model": str(src), "rows": rows,
                                                     "timings": timings}, indent=1))
    scored = rows[0]["positions"] if rows else 0
    print(f"\nmodel {src}, evaluation {scored} scored positions, imatrix "
          f"{args.chunks}x{CTX} tokens, torch threads {torch.get_num_threads()}")
    print("| route | type | imatrix | size MiB | ppl | wall s | CPU s |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        wall = f"{r['wall_s']:.1f}" if r["wall_s"] is not None else "-"
        cpu = f"{r['cpu_s']:.1f}" if r["cpu_s"] is not None else "-"
        print(f"| {r['route']} | {r['type']} | {r['imatrix']} | {r['size_mib']:.1f} | "
              f"{r['ppl']:.3f} | {wall} | {cpu} |")
    for k, v in timings.items():
        print(f"{k}: {v:.1f} s")
    print(f"files in {out}")


if __name__ == "__main__":
    main()
