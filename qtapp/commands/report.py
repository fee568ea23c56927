"""Plain-text rendering of an `Advice` for `quantdesk hw` and `quantdesk recommend`."""

from __future__ import annotations

from qtapp.engine.planning.advisor import PRECISIONS, Advice, SizeRow
from qtapp.engine.units import format_params, format_size

FIT_WORDS = {"gpu": "GPU", "ram": "RAM", "none": "no"}


def advice_table(advice: Advice) -> list[str]:
    head = ["Model", "Params", *PRECISIONS, f"Runs here (ctx {advice.ctx})", "Quantize peak"]
    rows = [head] + [_row(r) for r in advice.rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _row(r: SizeRow) -> list[str]:
    runs = ", ".join(f"{p} {FIT_WORDS[f]}" for p, f in r.run_fit.items())
    label = f"{r.label} *" if r.selected else r.label
    return [label, format_params(r.n_params), *(format_size(r.weights[p]) for p in PRECISIONS),
            runs, f"{format_size(r.quantize_peak)} ({FIT_WORDS[r.quantize_fit]})"]


def print_advice(advice: Advice) -> None:
    r = advice.recommendation
    print(f"Recommendation: {r.summary}  (goal {r.goal}, runs on {r.target}, "
          f"quantize on {r.device}, {r.samples} calibration samples)")
    print(f"Why: {r.reason}")
    for w in r.warnings:
        print(f"Warning: {w}")
    print()
    print("Weights at FP16 / INT8 / INT4 (GB = 10^9 bytes); 'Runs here' adds the KV cache "
          "and runtime overhead:")
    print("\n".join(advice_table(advice)))
