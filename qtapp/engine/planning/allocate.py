"""One scheme per module under a size budget: a multiple-choice knapsack.

    minimise  Σ_m D_m(c_m)   subject to   fixed + Σ_m bytes_m(c_m) ≤ budget,

one candidate c_m per module (D from sensitivity.py, bytes from budget.py).

Solver: dynamic programming over the bytes above each module's smallest option,
counted in units u = ⌈slack / 100 000⌉ bytes, every option's extra bytes rounded *up* to
whole units. `best[b]` is the least total degradation of the modules seen so far within b
units; each module adds one vectorised min over its options (O(modules · options ·
cells), well under a second for thousands of modules). Rounding up keeps every answer
within the real budget, and at most `modules · u` bytes (< 0.3 % of the slack for a few
hundred modules) go unused; with byte-sized units it is the exact optimum. Why not the
Lagrangian relaxation (bisection on λ) or greedy by marginal error per byte: both only
reach points on the lower convex hull of each module's (bytes, error) options and stop
at the last hull step that fits, leaving up to one module's step of the budget unused and
skipping non-convex options (e.g. a 3-bit option that is barely better than 2-bit); the
DP has neither gap and is as cheap at these sizes.

The plan becomes ordinary per-module rules of the job (`plan_job`), so it is shown,
saved, reproduced and edited like hand-written mixed precision.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from qtapp.engine import events as ev
from qtapp.engine.config import JobSpec, ModuleRule
from qtapp.engine.errors import UserError
from qtapp.engine.events import Emit
from qtapp.engine.model.loader import load_tokenizer
from qtapp.engine.model.sources import ModelInfo, resolve_model
from qtapp.engine.planning.budget import SizeModel, check_budget, size_model, target_bytes
from qtapp.engine.planning.sensitivity import (
    SensitivityProfile,
    cached_profile,
    profile_key,
    sensitivity_profile,
)
from qtapp.engine.quant.calibration import calibration_batches
from qtapp.engine.quant.streaming import pick_device
from qtapp.engine.units import format_size

MAX_CELLS = 100_000


def solve_mckp(costs: Sequence[Sequence[int]], values: Sequence[Sequence[float]],
               capacity: int, max_cells: int = MAX_CELLS, fill: bool = True) -> list[int]:
    """Index of the chosen option per item minimising Σ values with Σ costs ≤ capacity.

    Raises ValueError when even the cheapest options exceed `capacity`. `fill=False` skips
    the exact-byte fill after the DP (quick previews).
    """
    base = [min(c) for c in costs]
    slack = capacity - sum(base)
    if slack < 0:
        raise ValueError(f"capacity {capacity} is below the smallest total {sum(base)}")
    unit = max(1, math.ceil(slack / max_cells))
    cells = slack // unit
    best = np.zeros(cells + 1)
    picks = np.zeros((len(costs), cells + 1), dtype=np.int16)
    weights: list[list[int]] = []
    for i, (cost, value) in enumerate(zip(costs, values, strict=True)):
        w = [math.ceil((c - base[i]) / unit) for c in cost]
        weights.append(w)
        new = np.full(cells + 1, np.inf)
        pick = picks[i]
        for j in sorted(range(len(cost)), key=lambda j: (cost[j], value[j])):
            if w[j] > cells:
                continue
            cand = best[: cells + 1 - w[j]] + value[j]
            better = cand < new[w[j]:]
            new[w[j]:][better] = cand[better]
            pick[w[j]:][better] = j
        best = new
    choice = [0] * len(costs)
    b = cells
    for i in range(len(costs) - 1, -1, -1):
        choice[i] = int(picks[i][b])
        b -= weights[i][choice[i]]
    return _fill(costs, values, capacity, choice) if fill else choice


def _fill(costs: Sequence[Sequence[int]], values: Sequence[Sequence[float]], capacity: int,
          choice: list[int]) -> list[int]:
    """Spend the bytes the unit rounding left: take the largest improvement that still fits
    in exact bytes, until none does (never worse than the DP's answer)."""
    left = capacity - sum(c[j] for c, j in zip(costs, choice, strict=True))
    while True:
        best = None
        for i, (cost, value) in enumerate(zip(costs, values, strict=True)):
            for j in range(len(cost)):
                extra = cost[j] - cost[choice[i]]
                gain = value[choice[i]] - value[j]
                if extra <= left and gain > 0 and (best is None or gain > best[0]):
                    best = (gain, i, j, extra)
        if best is None:
            return choice
        _, i, j, extra = best
        choice[i] = j
        left -= extra


@dataclass
class Plan:
    """The allocation: module → candidate key, with its predicted bytes and degradation."""

    fmt: str
    budget: int
    choice: dict[str, str]
    total_bytes: int
    fixed_bytes: int
    predicted: float
    uniform4: float  # prediction of every module at 4 bits (W4 / Q4_K or its fallback)
    rows: list[tuple[str, str, int, float]]  # module, candidate, bytes, degradation

    def table(self) -> str:
        """The plan as text: one line per module, then totals."""
        lines = [f"{'module':<44} {'scheme':>8} {'bytes':>12} {'pred. KLD':>11}"]
        for name, key, nbytes, d in self.rows:
            lines.append(f"{name:<44} {key:>8} {nbytes:>12,} {d:>11.3e}")
        counts = Counter(k for _, k, _, _ in self.rows)
        lines.append(f"schemes: {', '.join(f'{k} × {n}' for k, n in sorted(counts.items()))}")
        lines.append(f"fixed (embeddings, norms, headers, config, tokenizer): "
                     f"{format_size(self.fixed_bytes)}")
        lines.append(f"predicted file size {format_size(self.total_bytes)} "
                     f"({self.total_bytes:,} bytes) for a budget of {format_size(self.budget)} "
                     f"({self.budget:,} bytes), format {self.fmt}")
        if self.uniform4 > 0:
            lines.append(f"predicted KL divergence {self.predicted:.4g} nats/token "
                         f"({self.predicted / self.uniform4:.2f}× that of every module at "
                         "4 bit; the estimate of the modules' errors only)")
        return "\n".join(lines)


def _four_bit_key(options: Sequence) -> str:
    for c in options:
        if c.key in ("W4", "Q4_K"):
            return c.key
    quantized = [c for c in options if not c.kept]
    return min(quantized or options, key=lambda c: abs(c.bits - 4.5)).key


def allocate(model: SizeModel, profile: SensitivityProfile, budget: int,
             max_cells: int = MAX_CELLS, fill: bool = True) -> Plan:
    """The least predicted degradation whose written size is at most `budget` (a coarser
    `max_cells` and no fill give a quick preview, as the window's size slider does)."""
    check_budget(model, budget, "target size")
    slots = model.modules
    costs = [list(s.nbytes) for s in slots]
    values = [[profile.cost(s.name, c.key) for c in s.options] for s in slots]
    picks = solve_mckp(costs, values, budget - model.fixed_bytes, max_cells, fill)
    choice = {s.name: s.options[j].key for s, j in zip(slots, picks, strict=True)}
    rows = [(s.name, s.options[j].key, s.nbytes[j], values[i][j])
            for i, (s, j) in enumerate(zip(slots, picks, strict=True))]
    four = {s.name: _four_bit_key(s.options) for s in slots}
    return Plan(model.fmt, budget, choice, model.total(choice), model.fixed_bytes,
                profile.predicted(choice), profile.predicted(four), rows)


def rules_for(job: JobSpec, model: SizeModel, choice: dict[str, str]) -> JobSpec:
    """`job` with the plan as ordinary rules (and the budget fields cleared).

    GGUF: one rule per module with its tensor type. Other methods: the most common
    quantized bit width becomes the job's scheme; modules with another width get a rule
    with that scheme, modules kept in 16 bit a skip rule.
    """
    options = {s.name: {c.key: c for c in s.options} for s in model.modules}
    picked = {n: options[n][k] for n, k in choice.items()}
    cleared: dict = {"target_bytes": 0, "target_bpw": 0.0}
    if job.method == "gguf":
        rules = tuple(ModuleRule(n, gguf_type=c.gguf_type) for n, c in picked.items())
        return dataclasses.replace(job, rules=rules, **cleared)
    bits = Counter(c.scheme.bits for c in picked.values() if c.scheme is not None)
    scheme = job.scheme
    if bits:
        scheme = dataclasses.replace(scheme, bits=bits.most_common(1)[0][0])
    rules = []
    for n, c in picked.items():
        if c.scheme is None:
            rules.append(ModuleRule(n, skip=True))
        elif c.scheme != scheme:
            rules.append(ModuleRule(n, c.scheme))
    return dataclasses.replace(job, scheme=scheme, rules=tuple(rules),
                               export_format=model.fmt, **cleared)


def budget_model(job: JobSpec, info: ModelInfo) -> tuple[SizeModel, int]:
    """The size model and budget of a job with a target, refusing impossible budgets.

    Cheap (reads headers only): call it before any calibration work."""
    if job.rules:
        raise UserError("a size budget chooses every module's scheme itself; drop the "
                        "mixed-precision rules (--preset / --rules) or the target size")
    model = size_model(job, info)
    budget = target_bytes(job, info)
    what = (f"--target-bpw {job.target_bpw:g} ({format_size(budget)} for "
            f"{info.n_params / 1e6:.1f} M parameters)" if job.target_bpw and not job.target_bytes
            else "--target-size")
    check_budget(model, budget, what)
    return model, budget


def plan_job(job: JobSpec, info: ModelInfo, tokens, emit: Emit,
             should_cancel: Callable[[], bool], device) -> tuple[JobSpec, Plan]:
    """Measure sensitivities (or reuse the cached profile), allocate, return the job with
    the plan as rules."""
    model, budget = budget_model(job, info)
    profile = sensitivity_profile(job, info, tokens, model.modules, emit, should_cancel, device)
    plan = allocate(model, profile, budget)
    return rules_for(job, model, plan.choice), plan


def plan_for_job(job: JobSpec, info: ModelInfo, tokens, calibration: Callable[[], object],
                 emit: Emit, should_cancel: Callable[[], bool],
                 ) -> tuple[JobSpec, object, dict]:
    """What run_job does with a budgeted job: refuse an impossible budget before any work,
    get the calibration tokens (`calibration()` when `tokens` is None), plan, log the plan.
    Returns the planned job, the tokens and a summary of the plan for the job's result."""
    budget_model(job, info)
    if tokens is None:
        tokens = calibration()
    planned, plan = plan_job(job, info, tokens, emit, should_cancel, pick_device(job.device))
    for line in plan.table().splitlines()[-4:]:
        emit(ev.Log(level="info", message=f"plan: {line}"))
    summary = {"budget_bytes": plan.budget, "predicted_bytes": plan.total_bytes,
               "predicted_degradation": plan.predicted, "uniform4_degradation": plan.uniform4,
               "schemes": dict(Counter(plan.choice.values())),
               "scheme": dataclasses.asdict(planned.scheme),
               "rules": [dataclasses.asdict(r) for r in planned.rules]}
    return planned, tokens, summary


def plan_before_running(job: JobSpec, emit: Emit,
                        should_cancel: Callable[[], bool] = lambda: False,
                        ) -> tuple[JobSpec, Plan]:
    """Plan a budgeted job on its own (the CLI shows the plan before quantizing): resolve the
    model, refuse an impossible budget, sample the calibration tokens, plan."""
    job.validate()
    info = resolve_model(job.model, allow_pickle=job.allow_pickle)
    budget_model(job, info)
    c = job.calibration
    tokens = calibration_batches(load_tokenizer(info.path, job.trust_remote_code), c.source, c.samples,
                                 c.seq_len, c.seed)
    return plan_job(job, info, tokens, emit, should_cancel, pick_device(job.device))


def budget_preview(job: JobSpec, info: ModelInfo) -> tuple[SizeModel, SensitivityProfile | None]:
    """What the window's size field needs: the size model of `job` and, when an earlier job
    measured this model with this method and calibration, its cached sensitivity profile."""
    model = size_model(job, info)
    return model, cached_profile(profile_key(job, info, model.modules))


def uniform_four_bytes(model: SizeModel) -> int:
    """Written size with every module at 4 bits (W4, or Q4_K / its fallback)."""
    return model.total({s.name: _four_bit_key(s.options) for s in model.modules})
