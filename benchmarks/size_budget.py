"""Size budgets on the de-gridded demo: allocated mixed precision against uniform types.

For each family, uniform reference files and allocated files (quantdesk's --target-size)
are written from the same calibration tokens and scored on the same windows of the
built-in evaluation text against the source model:

- GPTQ (format gptq, W4 g64 sym; g128 does not divide the demo's 576 inputs): uniform
  W4 g64 (and W3 g64); allocated at the size
  of the W4 file (its written folder, README excluded) and at 0.85 × that size.
- GGUF (importance matrix from the calibration tokens): uniform Q4_K_M, Q3_K_M (and
  Q5_K_M); allocated at each of their file sizes. --quick leaves out the rows in brackets.

Scores: perplexity, mean KL divergence KL_k(P_source ‖ Q) (top-64 tokens of the source plus
one tail bucket, a lower bound within ~1 % of the full-vocabulary KL) and top-1 agreement.
HF folders are run by QuantDesk's dequantizing loader against the float source in PyTorch;
GGUF files by llama.cpp against the source converted to an F32 GGUF (same runtime).

Estimator check: (1) single modules — one module at a time quantized to its lowest GGUF
candidate (imatrix as in the jobs) in the float model, end-to-end KLD against the source
on a few windows, Spearman rank correlation with D_m = g_m · E_m (and, for comparison,
with E_m alone and E_m / ‖x‖² of the block input); (2) whole files — Spearman of the
plan's predicted Σ D_m against measured KLD over each family's rows.

Rows are cached in .cache/bench/size_budget/results.json (delete it, or --fresh, to
rerun). The plot goes to docs/size_budget.png.

    python benchmarks/size_budget.py [--family gptq|gguf|all] [--windows 6] [--samples 16]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from degrid import degrid_demo_dir

from qtapp.engine.config import CalibrationSpec, GGUFOptions, JobSpec, QuantScheme

WORK = ROOT / ".cache" / "bench" / "size_budget"
RESULTS = WORK / "results.json"
PLOT = ROOT / "docs" / "size_budget.png"
CTX = 512
TOP_K = 64


# ------------------------------------------------------------------------ KL divergence

def _log_tail(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logp.scatter(-1, ids, float("-inf")), dim=-1)


def summarize(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Top-k of the source distribution and the log of the rest's mass, per position."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    top, ids = torch.topk(logp, TOP_K, dim=-1)
    return {"ids": ids, "logp": top, "log_tail": _log_tail(logp, ids)}


def score(ref: dict[str, torch.Tensor], logits: torch.Tensor, targets: torch.Tensor
          ) -> tuple[float, float, float]:
    """Σ KL_k, Σ NLL, Σ top-1 agreement over the positions of one window."""
    logq = torch.log_softmax(logits.double(), dim=-1)
    head = (ref["logp"].exp() * (ref["logp"] - logq.gather(-1, ref["ids"]))).sum(-1)
    log_pt, log_qt = ref["log_tail"], _log_tail(logq, ref["ids"])
    kl = (head + log_pt.exp() * (log_pt - log_qt)).clamp_min(0)
    nll = -logq.gather(-1, targets.view(-1, 1))[:, 0]
    agree = (logq.argmax(-1) == ref["ids"][:, 0]).double()
    return float(kl.sum()), float(nll.sum()), float(agree.sum())


def eval_windows(tokenizer, n: int) -> torch.Tensor:
    from qtapp.engine.quant.calibration import eval_tokens

    ids = eval_tokens(tokenizer)[0]
    total = ids.numel() // CTX
    picks = np.unique(np.linspace(0, total - 1, n).round().astype(int))
    return torch.stack([ids[i * CTX:(i + 1) * CTX] for i in picks])


class TorchRunner:
    """Logits of a Hugging Face folder (plain or quantized) through QuantDesk's loader."""

    def __init__(self, folder: Path) -> None:
        from qtapp.engine.model.loader import load_dequantized

        self.model, _ = load_dequantized(folder)
        self.model.eval()

    def logits(self, window: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(input_ids=window[None], use_cache=False).logits[0, :-1].float()

    def close(self) -> None:
        del self.model


class LlamaRunner:
    """Logits of a GGUF file through llama.cpp."""

    def __init__(self, path: Path) -> None:
        from qtapp.engine.gguf.llama_runtime import load_llama

        self.llm = load_llama(path, n_ctx=CTX, logits_all=True)

    def logits(self, window: torch.Tensor) -> torch.Tensor:
        self.llm.reset()
        self.llm.eval(window.tolist())
        return torch.from_numpy(np.asarray(self.llm.scores[: CTX - 1], dtype=np.float32))

    def close(self) -> None:
        self.llm.close()


def references(runner, windows: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    refs = [summarize(runner.logits(w)) for w in windows]
    runner.close()
    return refs


def measure(runner, windows: torch.Tensor, refs) -> dict[str, float]:
    kl = nll = agree = 0.0
    for w, ref in zip(windows, refs, strict=True):
        k, n, a = score(ref, runner.logits(w), w[1:])
        kl, nll, agree = kl + k, nll + n, agree + a
    runner.close()
    count = windows.shape[0] * (CTX - 1)
    return {"kld": kl / count, "ppl": math.exp(nll / count), "top1": agree / count}


# ------------------------------------------------------------------------------- rows

def written_size(out: Path, summary: dict) -> int:
    """What a budget counts: the .gguf file, or the folder without README.md."""
    if summary.get("gguf_file"):
        return (out / summary["gguf_file"]).stat().st_size
    return sum(p.stat().st_size for p in out.iterdir() if p.is_file() and p.name != "README.md")


def run_row(name: str, job: JobSpec, tokens: torch.Tensor) -> dict:
    from qtapp.engine.jobs.job import run_job

    t0 = time.perf_counter()
    summary = run_job(job, lambda e: None, lambda: False, tokens=tokens)
    out = Path(summary["out"])
    row = {"name": name, "out": str(out), "size": written_size(out, summary),
           "seconds": round(time.perf_counter() - t0, 1)}
    if "gguf_file" in summary:
        row["gguf"] = str(out / summary["gguf_file"])
    if "plan" in summary:
        row["plan"] = {k: v for k, v in summary["plan"].items() if k != "rules"}
        row["choice"] = _choice_from_rules(summary["plan"]["rules"], job)
    print(f"  {name}: written {row['size']:,} bytes in {row['seconds']} s", flush=True)
    return row


def _choice_from_rules(rules: list[dict], job: JobSpec) -> dict[str, str]:
    out = {}
    for r in rules:
        if r["gguf_type"]:
            out[r["pattern"]] = r["gguf_type"]
        elif r["skip"]:
            out[r["pattern"]] = "16-bit"
        else:
            out[r["pattern"]] = f"W{r['scheme']['bits']}"
    return out


def load_results(fresh: bool) -> dict[str, dict]:
    if fresh or not RESULTS.is_file():
        return {}
    return json.loads(RESULTS.read_text())


def merged(paths: list[Path]) -> dict[str, dict]:
    """Rows of several results files (families run in separate processes)."""
    out: dict[str, dict] = {}
    for path in paths:
        if path.is_file():
            out.update(json.loads(path.read_text()))
    return out


def save_results(results: dict[str, dict]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))


def row_runner(family: str, tokens, windows, results, reference, runner_of):
    """row(name, job): run the job once (kept in results across runs), then score it against
    the reference model's distributions (computed on first use) on the same windows."""
    refs = None

    def row(name: str, job: JobSpec) -> None:
        nonlocal refs
        if name in results and "kld" in results[name]:
            return
        r = run_row(name, dataclasses.replace(job, out=str(WORK / name.replace(" ", "_"))),
                    tokens)
        if refs is None:
            refs = references(reference(), windows)
        r.update(measure(runner_of(r), windows, refs))
        r["family"] = family
        results[name] = r
        save_results(results)
        print(f"    ppl {r['ppl']:.3f}  kld {r['kld']:.4f}  top1 {r['top1']:.3f}", flush=True)

    return row


def gptq_family(src: Path, tokens, windows, results, samples: int, seq_len: int,
                quick: bool) -> None:
    base = JobSpec(model=str(src), method="gptq", out="", scheme=QuantScheme(4, 64, True),
                   export_format="gptq", evaluate=False, overwrite=True,
                   calibration=CalibrationSpec(samples=samples, seq_len=seq_len))
    row = row_runner("gptq", tokens, windows, results, lambda: TorchRunner(src),
                     lambda r: TorchRunner(Path(r["out"])))
    row("GPTQ W4 g64", base)
    s4 = results["GPTQ W4 g64"]["size"]
    row("GPTQ alloc @W4 size", dataclasses.replace(base, target_bytes=s4))
    row("GPTQ alloc @0.85xW4", dataclasses.replace(base, target_bytes=int(0.85 * s4)))
    if not quick:
        row("GPTQ W3 g64", dataclasses.replace(base, scheme=QuantScheme(3, 64, True)))


def gguf_family(src: Path, tokens, windows, results, samples: int, seq_len: int,
                types: tuple[str, ...]) -> None:
    from qtapp.engine.gguf.convert import convert_to_gguf

    f32 = WORK / "source-F32.gguf"
    if not f32.is_file():
        convert_to_gguf(src, f32, "F32")
    cal = CalibrationSpec(samples=samples, seq_len=seq_len)
    row = row_runner("gguf", tokens, windows, results, lambda: LlamaRunner(f32),
                     lambda r: LlamaRunner(Path(r["gguf"])))
    first = JobSpec(model=str(src), method="gguf", out="", evaluate=False, overwrite=True,
                    gguf=GGUFOptions("Q4_K_M", "auto"), calibration=cal)
    imatrix = str(WORK / "GGUF_Q4_K_M" / "imatrix.gguf")
    base = dataclasses.replace(first, gguf=GGUFOptions("Q4_K_M", imatrix))
    for t in types:
        row(f"GGUF {t}", first if t == "Q4_K_M" else
            dataclasses.replace(base, gguf=GGUFOptions(t, imatrix)))
        row(f"GGUF alloc @{t} size",
            dataclasses.replace(base, target_bytes=results[f"GGUF {t}"]["size"]))


# ------------------------------------------------------------------- estimator checks

def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def _profile(job: JobSpec, src: Path):
    """The cached sensitivity profile a budgeted job of this kind used."""
    from qtapp.engine.model.sources import resolve_model
    from qtapp.engine.planning.budget import size_model
    from qtapp.engine.planning.sensitivity import cached_profile, profile_key

    info = resolve_model(str(src))
    return cached_profile(profile_key(job, info, size_model(job, info).modules)), info


def module_correlation(src: Path, windows, results, n_windows: int) -> dict:
    """One module at a time at its lowest GGUF candidate: estimate vs end-to-end KLD."""
    from qtapp.engine.gguf.hf_model import HfModel
    from qtapp.engine.gguf.imatrix import read_imatrix
    from qtapp.engine.planning.budget import Candidate
    from qtapp.engine.planning.sensitivity import quantized_weight

    if "module_correlation" in results:
        return results["module_correlation"]
    job = JobSpec(model=str(src), method="gguf", out="", gguf=GGUFOptions(
        "Q4_K_M", str(Path(results["GGUF Q4_K_M"]["out"]) / "imatrix.gguf")),
        calibration=CalibrationSpec(**results["_calibration"]))
    profile, info = _profile(job, src)
    importance = read_imatrix(Path(job.gguf.imatrix)).importance()
    hf = HfModel(src)
    runner = TorchRunner(src)
    wins = windows[:n_windows]
    refs = [summarize(runner.logits(w)) for w in wins]
    blocks = (0, 5, 10, 15, 20, 25, 29)
    kinds = info.arch.linears
    picks = [f"{info.arch.layers_prefix}.{b}.{kinds[(2 * j + k) % len(kinds)]}"
             for j, b in enumerate(blocks) for k in range(2)]
    rows = []
    for name in picks:
        m = profile.modules[name]
        key = max(m.error, key=m.error.get)  # the lowest (largest-error) candidate
        linear = runner.model.get_submodule(name)
        W = linear.weight.data.clone()
        imp = torch.from_numpy(importance[hf.gguf_name(name + ".weight")])
        H = torch.diag(imp * 2)
        c = Candidate(key, 0, gguf_type=key)
        linear.weight.data.copy_(quantized_weight("gguf", W.float(), H, c, job))
        kl = sum(score(r, runner.logits(w), w[1:])[0] for w, r in zip(wins, refs, strict=True))
        linear.weight.data.copy_(W)
        block = int(name.split(".")[2])
        rows.append({"module": name, "candidate": key, "kld": kl / (len(wins) * (CTX - 1)),
                     "D": m.degradation(key), "D_gain": m.gain * m.error[key],
                     "E": m.error[key],
                     "E_rel": m.error[key] / profile.block_energy[block], "gain": m.gain})
        print(f"  {name} {key}: kld {rows[-1]['kld']:.5f}  D {rows[-1]['D']:.3e}", flush=True)
    kld = [r["kld"] for r in rows]
    out = {"rows": rows, "spearman_D": spearman([r["D"] for r in rows], kld),
           "spearman_D_gain": spearman([r["D_gain"] for r in rows], kld),
           "spearman_E": spearman([r["E"] for r in rows], kld),
           "spearman_E_rel": spearman([r["E_rel"] for r in rows], kld)}
    results["module_correlation"] = out
    save_results(results)
    return out


def plan_correlation(src: Path, results) -> dict:
    """Predicted Σ D of each file's per-module choice against its measured KLD."""
    from qtapp.engine.gguf.convert import plan_tensors
    from qtapp.engine.gguf.hf_model import HfModel
    from qtapp.engine.gguf.types import file_type

    cal = CalibrationSpec(**results["_calibration"])
    out = {}
    for family in ("gptq", "gguf"):
        rows = [r for n, r in results.items() if not n.startswith("_") and
                isinstance(r, dict) and r.get("family") == family]
        if len(rows) < 3:
            continue
        if family == "gptq":
            job = JobSpec(model=str(src), method="gptq", out="", export_format="gptq",
                          scheme=QuantScheme(4, 64, True), calibration=cal)
        else:
            job = JobSpec(model=str(src), method="gguf", out="", calibration=cal,
                          gguf=GGUFOptions("Q4_K_M", str(Path(results["GGUF Q4_K_M"]["out"])
                                                         / "imatrix.gguf")))
        profile, _ = _profile(job, src)
        if profile is None:
            continue
        pred, kld = [], []
        for r in rows:
            choice = r.get("choice")
            if choice is not None and family == "gptq":  # rules name the non-base modules
                base = f"W{r['plan']['scheme']['bits']}"
                choice = {n: choice.get(n, base) for n in profile.modules}
            elif choice is None and family == "gptq":
                bits = 4 if "W4" in r["name"] else 3
                choice = {n: f"W{bits}" for n in profile.modules}
            elif choice is None:
                ftype = r["name"].split()[-1]
                plan = plan_tensors(HfModel(src), file_type(ftype), True)
                choice = {p.source.module: p.type.name for p in plan
                          if p.source.module in profile.modules}
            r["predicted"] = profile.predicted(choice)
            pred.append(r["predicted"])
            kld.append(r["kld"])
        out[family] = spearman(pred, kld)
    results["plan_correlation"] = out
    save_results(results)
    return out


# -------------------------------------------------------------------------------- plot

def plot(results: dict, path: Path) -> None:
    """Size (MiB) vs mean KLD (log scale), uniform types as points, allocations as curves."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QPointF, QRectF, Qt
    from PySide6.QtGui import QColor, QFont, QGuiApplication, QImage, QPainter, QPen

    _app = QGuiApplication.instance() or QGuiApplication([])
    rows = [r for n, r in results.items() if not n.startswith("_") and isinstance(r, dict)
            and "kld" in r and "family" in r]
    W, H, L, R, T, B = 960, 600, 90, 250, 50, 70
    img = QImage(W, H, QImage.Format.Format_ARGB32)
    img.fill(QColor("white"))
    p = QPainter(img)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    xs = [r["size"] / 2**20 for r in rows]
    ys = [math.log10(r["kld"]) for r in rows]
    x0, x1 = min(xs) - 3, max(xs) + 3
    y0, y1 = math.floor(min(ys) * 4) / 4, math.ceil(max(ys) * 4) / 4

    def at(x: float, y: float) -> QPointF:
        return QPointF(L + (x - x0) / (x1 - x0) * (W - L - R),
                       H - B - (y - y0) / (y1 - y0) * (H - T - B))

    p.setPen(QPen(QColor("#444"), 1))
    p.drawRect(QRectF(L, T, W - L - R, H - T - B))
    p.setFont(QFont("Sans", 9))
    step = 5 if x1 - x0 > 20 else 2
    for x in range(math.ceil(x0 / step) * step, int(x1) + 1, step):
        q = at(x, y0)
        p.drawLine(q, QPointF(q.x(), q.y() + 5))
        p.drawText(QRectF(q.x() - 30, q.y() + 8, 60, 16), Qt.AlignmentFlag.AlignCenter, str(x))
    for e in np.arange(y0, y1 + 1e-9, 0.25):
        q = at(x0, e)
        p.setPen(QPen(QColor("#ddd"), 1))
        p.drawLine(q, at(x1, e))
        p.setPen(QPen(QColor("#444"), 1))
        p.drawText(QRectF(L - 85, q.y() - 8, 78, 16), Qt.AlignmentFlag.AlignRight,
                   f"{10 ** e:.3g}")
    p.drawText(QRectF(L, H - 35, W - L - R, 20), Qt.AlignmentFlag.AlignCenter,
               "written size (MiB)")
    p.save()
    p.translate(20, (H - B + T) / 2)
    p.rotate(-90)
    p.drawText(QRectF(-150, -10, 300, 20), Qt.AlignmentFlag.AlignCenter,
               "mean KL divergence vs source (log)")
    p.restore()
    p.setFont(QFont("Sans", 11))
    p.drawText(QRectF(L, 12, W - L - R, 24), Qt.AlignmentFlag.AlignCenter,
               "De-gridded SmolLM2-135M: size vs KLD, uniform types and size-budget allocation")
    colors = {"gptq": QColor("#1f77b4"), "gguf": QColor("#d62728")}
    legend_y = T + 10
    for family, color in colors.items():
        fam = sorted((r for r in rows if r["family"] == family), key=lambda r: r["size"])
        if not fam:
            continue
        alloc = [r for r in fam if "alloc" in r["name"]]
        p.setPen(QPen(color, 2))
        for a, b in itertools.pairwise(alloc):
            p.drawLine(at(a["size"] / 2**20, math.log10(a["kld"])),
                       at(b["size"] / 2**20, math.log10(b["kld"])))
        p.setFont(QFont("Sans", 8))
        for r in fam:
            q = at(r["size"] / 2**20, math.log10(r["kld"]))
            p.setBrush(color if "alloc" in r["name"] else QColor("white"))
            p.setPen(QPen(color, 2))
            if "alloc" in r["name"]:
                p.drawEllipse(q, 5, 5)
            else:
                p.drawRect(QRectF(q.x() - 5, q.y() - 5, 10, 10))
                p.setPen(QPen(QColor("#222"), 1))
                p.drawText(QPointF(q.x() + 8, q.y() - 6), r["name"].split(" ", 1)[1])
        p.setFont(QFont("Sans", 9))
        for label, filled in (("uniform", False), ("allocated (--target-size)", True)):
            p.setPen(QPen(color, 2))
            p.setBrush(color if filled else QColor("white"))
            c = QPointF(W - R + 20, legend_y)
            if filled:
                p.drawEllipse(c, 5, 5)
            else:
                p.drawRect(QRectF(c.x() - 5, c.y() - 5, 10, 10))
            p.setPen(QPen(QColor("#222"), 1))
            p.drawText(QPointF(c.x() + 12, c.y() + 4), f"{family.upper()} {label}")
            legend_y += 20
        legend_y += 10
    p.end()
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(str(path))


def table(results: dict) -> str:
    lines = ["| row | size MiB | bytes | perplexity | mean KLD | top-1 | predicted Σ D |",
             "|---|---|---|---|---|---|---|"]
    for n, r in results.items():
        if n.startswith("_") or not isinstance(r, dict) or "kld" not in r:
            continue
        pred = f"{r['predicted']:.4g}" if "predicted" in r else ""
        lines.append(f"| {n} | {r['size'] / 2**20:.2f} | {r['size']:,} | {r['ppl']:.3f} | "
                     f"{r['kld']:.4f} | {r['top1']:.3f} | {pred} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="all", choices=("gptq", "gguf", "all"))
    ap.add_argument("--windows", type=int, default=6, help="evaluation windows of 512 tokens")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--corr-windows", type=int, default=2)
    ap.add_argument("--no-correlation", action="store_true")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--results", type=Path, default=WORK / "results.json",
                    help="results file (run families in parallel with one file each)")
    ap.add_argument("--report", type=Path, nargs="*",
                    help="only print the table and draw the plot from these results files")
    ap.add_argument("--quick", action="store_true",
                    help="leave out the Q5_K_M and GPTQ W3 rows")
    ap.add_argument("--gptq-threads", type=int, default=0,
                    help="torch threads for the GPTQ rows (0: one, fastest on a busy CPU)")
    args = ap.parse_args()
    global RESULTS
    RESULTS = args.results
    if args.report:
        results = merged(args.report)
        print(table(results))
        plot(results, PLOT)
        print(f"plot: {PLOT}")
        return
    from transformers import AutoTokenizer

    from qtapp.engine.quant.calibration import calibration_batches

    torch.manual_seed(0)
    src = degrid_demo_dir()
    tokenizer = AutoTokenizer.from_pretrained(src)
    tokens = calibration_batches(tokenizer, "builtin", args.samples, args.seq_len, 0)
    windows = eval_windows(tokenizer, args.windows)
    results = load_results(args.fresh)
    results["_calibration"] = {"samples": args.samples, "seq_len": args.seq_len}
    results["_windows"] = int(windows.shape[0])
    print(f"source {src}; calibration {args.samples} × {args.seq_len}; "
          f"{windows.shape[0]} evaluation windows of {CTX}", flush=True)
    if args.family in ("gguf", "all"):
        gguf_family(src, tokens, windows, results, args.samples, args.seq_len,
                    ("Q4_K_M", "Q3_K_M") if args.quick else ("Q4_K_M", "Q3_K_M", "Q5_K_M"))
    if args.family in ("gptq", "all"):
        # GPTQ's column loop is many small ops: one thread is far faster on a busy CPU
        torch.set_num_threads(1 if args.gptq_threads == 0 else args.gptq_threads)
        gptq_family(src, tokens, windows, results, args.samples, args.seq_len, args.quick)
    if not args.no_correlation and "GGUF Q4_K_M" in results:
        c = module_correlation(src, windows, results, args.corr_windows)
        print(f"single modules: Spearman(D, KLD) {c['spearman_D']:.3f}, (g·E, KLD) "
              f"{c['spearman_D_gain']:.3f}, (E, KLD) "
              f"{c['spearman_E']:.3f}, (E/‖x‖², KLD) {c['spearman_E_rel']:.3f}")
    print("whole files: Spearman(predicted, KLD)", plan_correlation(src, results))
    print(table(results))
    plot(results, PLOT)
    print(f"plot: {PLOT}")


if __name__ == "__main__":
    main()
