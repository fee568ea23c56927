"""Quality gate: is a quantized model still its source? Perplexity, KL divergence, top-1
agreement and a generation check, with a verdict good / degraded / broken.

    quality_report(model, source, ctx=EVAL_CTX, text=None) -> QualityReport
    model_perplexity(model, ctx=EVAL_CTX, text=None) -> (perplexity, positions)

`model` and `source` are anything QuantDesk can load: a Hugging Face folder (plain, GPTQ,
AWQ, compressed-tensors; dequantized by qtapp.engine.model.loader), a `.gguf` file, or a folder
holding one model `.gguf` (run through llama-cpp-python with logits for every position).

Protocol (that of `llama-perplexity --kl-divergence`): the evaluation text (built-in unless
`text` is given) is tokenized once by the source's tokenizer, a BOS token prepended when the
tokenizer adds one, and cut into ⌊T/ctx⌋ non-overlapping windows of `ctx` tokens whose first
token is replaced by BOS (when used). In each window only the second half is scored: the
logits at positions ctx/2 … ctx−2 predict tokens ctx/2+1 … ctx−1, so every scored token has
at least ctx/2 tokens of context. Over all scored positions t:

    ppl        = exp(mean_t −log Q(x_{t+1}))          (ppl_source likewise with P)
    kld_mean   = mean_t KL(P_t‖Q_t),  kld_p99 its 99th percentile (linear interpolation)
    top1_agree = 100 · mean_t [argmax Q_t = argmax P_t]

It is QuantDesk's one perplexity protocol: `model_perplexity` scores a model alone with
it (its own tokenizer), so `quantdesk eval M`, `quantdesk eval M --against S`, a job's
result and the benchmarks print the same perplexity for M. The window is
qtapp.engine.config.EVAL_CTX (512) unless `ctx` is given.

P is the source's next-token distribution, Q the model's; KL uses the source's cached top-k
and a sample of its tail (qtapp.engine.quality.kld explains the estimate and its error). The source's distributions and
its generation check are computed once and cached under <cache>/quality/, keyed by a
content fingerprint of the source's weights, the token ids and ctx; later reports pay only
for the quantized model's pass. One model is in memory at a time.

Verdict (THRESHOLDS; a quantized model is judged against its own source):

    broken    kld_mean > 1.0 nat, or top1_agree < 50 %, or ppl > 2 × ppl_source, or a
              non-finite figure, or degenerate answers (qtapp.engine.quality.gencheck) to at least
              2 of the 3 prompts that the source answers without that flag;
    degraded  kld_mean > 0.1 nat, or top1_agree < 85 %, or ppl > 1.2 × ppl_source, or one
              such degenerate answer;
    good      otherwise.

Measured on the demo model (SmolLM2-135M-Instruct, first 20 000 characters of the built-in
text, 3 570 positions; with the tail still estimated as one bucket, so KLDs slightly low): 8-bit RTN g128 kld_mean 0.0017, top1_agree 97.7 %, perplexity
+0.6 % → good; 4-bit symmetric RTN g128 0.41, 65 %, +48 % → degraded; 2-bit per-tensor RTN
27 nats, 0 %, one token repeated for every prompt → broken.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qtapp.engine.config import EVAL_CTX
from qtapp.engine.errors import UserError, check_cancel
from qtapp.engine.events import ShouldCancel
from qtapp.engine.gguf.llama_runtime import load_llama
from qtapp.engine.model.loader import has_tokenizer, load_dequantized, load_tokenizer
from qtapp.engine.model.sources import cache_disk_full, cache_root, gguf_file_of
from qtapp.engine.quality import kld as K
from qtapp.engine.quality.gencheck import GenerationCheck, check_llama, check_torch
from qtapp.engine.quant.calibration import builtin_eval_text, tokenize

CACHE_VERSION = "quality-2"
MessageCallback = Callable[[str], None]  # one line saying what the gate is doing now
StepCallback = Callable[[int, int], None]  # (units done, units in all) of the gate's work


@dataclass
class _Steps:
    """Counts the gate's units of work for a progress bar: one per window scored and one per
    generation check, of the source (unless cached) and of the model (quality_report). The
    total is known once the text is cut into windows."""

    callback: StepCallback | None = None
    model_pass: bool = False
    generation: bool = True
    total: int = 0
    done: int = 0

    def plan(self, n_windows: int, source_windows: bool, source_generation: bool) -> None:
        self.total = (n_windows if source_windows else 0) + int(source_generation) + (
            n_windows + int(self.generation) if self.model_pass else 0)
        if self.callback is not None:
            self.callback(self.done, self.total)

    def step(self) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, max(self.total, self.done))


def _never() -> bool:
    return False


@dataclass(frozen=True)
class Thresholds:
    degraded_kld: float = 0.1
    broken_kld: float = 1.0
    degraded_top1: float = 85.0
    broken_top1: float = 50.0
    degraded_ppl_ratio: float = 1.2
    broken_ppl_ratio: float = 2.0
    broken_generations: int = 2


THRESHOLDS = Thresholds()


@dataclass
class QualityReport:
    ppl: float
    ppl_source: float
    kld_mean: float
    kld_p99: float
    top1_agree: float          # percent
    positions: int             # scored positions
    ctx: int
    verdict: str               # "good" | "degraded" | "broken"
    reasons: list[str] = field(default_factory=list)
    generation: list[GenerationCheck] = field(default_factory=list)
    source_generation: list[GenerationCheck] = field(default_factory=list)
    thresholds: Thresholds = THRESHOLDS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.verdict}: perplexity {self.ppl:.3f} (source {self.ppl_source:.3f}), "
                f"KLD mean {self.kld_mean:.4f} / p99 {self.kld_p99:.4f}, top-1 agreement "
                f"{self.top1_agree:.1f} %")


# models -------------------------------------------------------------------------------
class _Scorer:
    """Logits per position and greedy answers of one loaded model."""

    tokenizer: Any = None

    def token_ids(self, text: str) -> tuple[list[int], int | None]:
        """Token ids of `text` without special tokens, and the BOS id if one is added."""
        raise NotImplementedError

    def logits(self, window: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def generate(self, tokenizer: Any = None, should_cancel: ShouldCancel = _never,
                 ) -> list[GenerationCheck]:
        raise NotImplementedError

    def close(self) -> None:
        """Free the model."""


class _TorchScorer(_Scorer):
    """A Hugging Face folder (plain or quantized). The model is loaded when first needed:
    a source whose distributions are cached is only tokenized, so a quality gate does not
    hold the source's float weights (the whole model in float32) beside the quantized
    model's, nor spend their load time."""

    def __init__(self, path: Path, trust_remote_code: bool = False) -> None:
        if not (path / "config.json").exists():
            raise UserError(f"{path} is neither a model folder (no config.json) nor a .gguf "
                            "file; give what QuantDesk wrote or a Hugging Face folder")
        self.path = path
        self.trust_remote_code = trust_remote_code
        self.tokenizer = load_tokenizer(path, trust_remote_code) if has_tokenizer(path) else None
        self._model: Any = None

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model, _tokenizer = load_dequantized(
                self.path, trust_remote_code=self.trust_remote_code)
        return self._model

    def token_ids(self, text: str) -> tuple[list[int], int | None]:
        tok = self.tokenizer
        if tok is None:
            raise UserError("the source model folder has no tokenizer; it is needed to "
                            "tokenize the evaluation text")
        bos = tok.bos_token_id
        adds_bos = bos is not None and tok("a").input_ids[:1] == [bos]
        return tokenize(tok, text).tolist(), bos if adds_bos else None

    def logits(self, window: np.ndarray) -> torch.Tensor:
        ids = torch.from_numpy(window).view(1, -1)
        with torch.inference_mode():
            return self.model(input_ids=ids, use_cache=False).logits[0].float()

    def generate(self, tokenizer: Any = None, should_cancel: ShouldCancel = _never,
                 ) -> list[GenerationCheck]:
        tok = self.tokenizer or tokenizer
        return check_torch(self.model, tok, should_cancel=should_cancel) \
            if tok is not None else []

    def close(self) -> None:
        self._model = None


class _LlamaScorer(_Scorer):
    def __init__(self, file: Path, ctx: int) -> None:
        self.ctx = ctx
        self.llm = load_llama(file, n_ctx=max(ctx, 512), logits_all=True)

    def token_ids(self, text: str) -> tuple[list[int], int | None]:
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        return list(ids), self.llm.token_bos() if self.llm._model.add_bos_token() else None

    def logits(self, window: np.ndarray) -> torch.Tensor:
        self.llm.reset()
        self.llm.eval(window.tolist())
        return torch.from_numpy(np.array(self.llm.scores[: len(window)], dtype=np.float32))

    def generate(self, tokenizer: Any = None, should_cancel: ShouldCancel = _never,
                 ) -> list[GenerationCheck]:
        return check_llama(self.llm, should_cancel=should_cancel)

    def close(self) -> None:
        self.llm.close()


def _open(path: Path, ctx: int, trust_remote_code: bool = False) -> _Scorer:
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path} does not exist; give a model folder or a .gguf file")
    file = gguf_file_of(path)
    return (_LlamaScorer(file, ctx) if file is not None
            else _TorchScorer(path, trust_remote_code))


# protocol -----------------------------------------------------------------------------
def _eval_text(text: str | None) -> str:
    """The text every evaluation scores: the built-in one unless the user gave one."""
    text = builtin_eval_text() if text is None else text
    if not text.strip():
        raise UserError("the evaluation text is empty; give a text to evaluate on")
    return text


def windows(ids: list[int], ctx: int, bos: int | None) -> np.ndarray:
    """(n, ctx) int64 windows as llama-perplexity cuts them (see the module docstring)."""
    if ctx < 4:
        raise UserError(f"the window length must be at least 4 tokens (got {ctx})")
    stream = ([bos] if bos is not None else []) + list(ids)
    n = len(stream) // ctx
    if n == 0:
        raise UserError(f"the evaluation text has {len(stream)} tokens; a window of {ctx} "
                        "needs more: give a longer text or a smaller window")
    w = np.asarray(stream[: n * ctx], dtype=np.int64).reshape(n, ctx)
    if bos is not None:
        w[:, 0] = bos
    return w


def _scored(window: np.ndarray, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits at positions ctx/2 … ctx−2, the tokens they predict)."""
    first = len(window) // 2
    return logits[first:-1], torch.from_numpy(window[first + 1:])


def fingerprint(path: Path) -> str:
    """Content fingerprint of a model's weights: per weight file its name, size and the
    SHA-256 of its first and last MiB (a safetensors or GGUF header lists every tensor's
    name, type and offset), plus config.json. Fast for any size; renaming or copying a
    folder keeps it."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.suffix in (".safetensors", ".gguf", ".json"))
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(2**20))
            if size > 2**20:
                fh.seek(max(2**20, size - 2**20))
                h.update(fh.read())
    return h.hexdigest()


def _cache_file(source: Path, tokens: np.ndarray, ctx: int) -> Path:
    h = hashlib.sha256(f"{CACHE_VERSION}\0{K.TOP_K}\0{K.TAIL_SAMPLES}\0{ctx}\0"
                       f"{fingerprint(source)}".encode())
    h.update(tokens.tobytes())
    return cache_root() / "quality" / f"{h.hexdigest()[:24]}.npz"


def _checks_from(data: list[dict[str, Any]]) -> list[GenerationCheck]:
    return [GenerationCheck(**d) for d in data]


def _source_pass(scorer: _Scorer, w: np.ndarray, generation: bool,
                 progress: MessageCallback, should_cancel: ShouldCancel = _never,
                 steps: _Steps | None = None,
                 ) -> tuple[K.SourceDistributions, list[GenerationCheck]]:
    steps = steps or _Steps()
    parts = []
    for i, window in enumerate(w):
        check_cancel(should_cancel)
        progress(f"source model: window {i + 1} of {len(w)}")
        parts.append(K.summarize(*_scored(window, scorer.logits(window))))
        steps.step()
    checks = []
    if generation:
        check_cancel(should_cancel)
        progress("source model: generation check")
        checks = scorer.generate(should_cancel=should_cancel)
        steps.step()
    return K.SourceDistributions.concat(parts), checks


def source_is_cached(source: Path, ctx: int = EVAL_CTX, text: str | None = None) -> bool:
    """Whether `source`'s distributions and generation check on the evaluation text are in
    the cache (then a quality gate runs only the quantized model). Tokenizes the text; a
    folder's model is not loaded. False when that cannot be told."""
    text = builtin_eval_text() if text is None else text
    try:
        scorer = _open(Path(source), ctx)
    except (UserError, OSError, ValueError):
        return False
    try:
        ids, bos = scorer.token_ids(text)
        file = _cache_file(Path(source), windows(ids, ctx, bos), ctx)
        saved = json.loads(file.with_suffix(".json").read_text(encoding="utf-8"))
        return file.exists() and bool(saved.get("generation"))
    except (UserError, OSError, ValueError, AttributeError):
        return False
    finally:
        scorer.close()


def source_distributions(source: Path, ctx: int = EVAL_CTX, text: str | None = None,
                         generation: bool = True, progress: MessageCallback | None = None,
                         trust_remote_code: bool = False, *,
                         should_cancel: ShouldCancel = _never,
                         steps: StepCallback | None = None,
                         ) -> tuple[np.ndarray, K.SourceDistributions, list[GenerationCheck]]:
    """(windows, the source's compact distributions, its generation check), from the cache
    when present. A cache entry without a generation check is completed by one. A full
    disk while writing the cache is a UserError naming the cache. should_cancel() is
    polled per window and per generated token (then Cancelled is raised). steps(done,
    total) is called after each window and generation check (and once with done=0 when
    the total is known)."""
    return _source_distributions(source, ctx, text, generation, progress, trust_remote_code,
                                 should_cancel, _Steps(steps, generation=generation))


def _source_distributions(source: Path, ctx: int, text: str | None, generation: bool,
                          progress: MessageCallback | None, trust_remote_code: bool,
                          should_cancel: ShouldCancel, steps: _Steps,
                          ) -> tuple[np.ndarray, K.SourceDistributions, list[GenerationCheck]]:
    progress = progress or (lambda _m: None)
    text = _eval_text(text)
    scorer = _open(Path(source), ctx, trust_remote_code)
    try:
        ids, bos = scorer.token_ids(text)
        w = windows(ids, ctx, bos)
        file = _cache_file(Path(source), w, ctx)
        meta = file.with_suffix(".json")
        dist, checks = None, None
        try:
            dist = K.SourceDistributions.load(file)
            saved = json.loads(meta.read_text(encoding="utf-8"))
            checks = _checks_from(saved["generation"]) if saved["generation"] else None
        except (OSError, ValueError, KeyError, TypeError):
            dist = None
        steps.plan(len(w), source_windows=dist is None,
                   source_generation=generation and (dist is None or checks is None))
        if dist is None:
            dist, checks = _source_pass(scorer, w, generation, progress, should_cancel, steps)
            with cache_disk_full(file.parent, "the source model's distributions"):
                dist.save(file)
        elif generation and checks is None:
            progress("source model: generation check")
            checks = scorer.generate(should_cancel=should_cancel)
            steps.step()
        with cache_disk_full(file.parent, "the source model's distributions"):
            meta.write_text(json.dumps({"source": str(source), "ctx": ctx,
                                        "generation": [asdict(c) for c in checks or []]}),
                            encoding="utf-8")
        return w, dist, checks or []
    finally:
        scorer.close()


# verdict ------------------------------------------------------------------------------
def judge(ppl: float, ppl_source: float, kld_mean: float, top1_agree: float,
          new_flags: int, t: Thresholds = THRESHOLDS) -> tuple[str, list[str]]:
    """(verdict, reasons) from the figures; new_flags = prompts with a degenerate answer
    that the source's answer does not share."""
    ratio = ppl / ppl_source if ppl_source > 0 else math.inf
    figures = (ppl, ppl_source, kld_mean, top1_agree)
    if not all(math.isfinite(x) for x in figures):
        return "broken", ["a figure is not finite (the model's outputs overflow)"]
    broken, degraded = [], []
    for value, bad, worse, text in (
            (kld_mean, t.degraded_kld, t.broken_kld, "mean KL divergence {:.3f} nat"),
            (ratio, t.degraded_ppl_ratio, t.broken_ppl_ratio, "perplexity {:.2f}× the source's"),
    ):
        if value > worse:
            broken.append(text.format(value) + f" > {worse}")
        elif value > bad:
            degraded.append(text.format(value) + f" > {bad}")
    if top1_agree < t.broken_top1:
        broken.append(f"top-1 agreement {top1_agree:.1f} % < {t.broken_top1} %")
    elif top1_agree < t.degraded_top1:
        degraded.append(f"top-1 agreement {top1_agree:.1f} % < {t.degraded_top1} %")
    if new_flags >= t.broken_generations:
        broken.append(f"degenerate answers to {new_flags} prompts the source answers well")
    elif new_flags:
        degraded.append(f"a degenerate answer to {new_flags} prompt the source answers well")
    if broken:
        return "broken", broken + degraded
    return ("degraded", degraded) if degraded else ("good", [])


def _new_flags(model: list[GenerationCheck], source: list[GenerationCheck]) -> int:
    if not source:
        return sum(bool(c.flags) for c in model)
    return sum(bool(set(m.flags) - set(s.flags)) for m, s in zip(model, source, strict=False))


def quality_report(model: Path, source: Path, ctx: int = EVAL_CTX, text: str | None = None,
                   *, generation: bool = True, progress: MessageCallback | None = None,
                   thresholds: Thresholds = THRESHOLDS,
                   trust_remote_code: bool = False,
                   should_cancel: ShouldCancel = _never,
                   steps: StepCallback | None = None) -> QualityReport:
    """Compare `model` with `source` on the evaluation text (see the module docstring).
    should_cancel() is polled per window and per generated token: Cancelled is raised
    within a window's time of it answering True.

    generation=False skips the generation check (then only the figures decide).
    progress(message) is called per window; steps(done, total) after each window and
    generation check of both models, the total counting the source's only when it is not
    cached (first called with done=0 once the total is known). trust_remote_code lets the
    tokenizers run code shipped with the models (never their modelling code). Raises
    UserError for unusable inputs."""
    progress = progress or (lambda _m: None)
    counter = _Steps(steps, model_pass=True, generation=generation)
    w, dist, source_checks = _source_distributions(source, ctx, text, generation, progress,
                                                   trust_remote_code, should_cancel, counter)
    check_cancel(should_cancel)
    scorer = _open(Path(model), ctx, trust_remote_code)
    try:
        parts = []
        start = 0
        for i, window in enumerate(w):
            check_cancel(should_cancel)
            progress(f"quantized model: window {i + 1} of {len(w)}")
            logits, targets = _scored(window, scorer.logits(window))
            n = len(targets)
            parts.append(K.compare(dist.rows(start, start + n), logits, targets))
            start += n
            counter.step()
        checks = []
        if generation:
            check_cancel(should_cancel)
            progress("quantized model: generation check")
            checks = scorer.generate(_source_tokenizer(scorer, source, trust_remote_code),
                                     should_cancel)
            counter.step()
    finally:
        scorer.close()
    kld = np.concatenate([p.kld for p in parts]).astype(np.float64)
    nll = np.concatenate([p.nll for p in parts]).astype(np.float64)
    agree = np.concatenate([p.agree for p in parts])
    ppl = math.exp(nll.mean()) if nll.mean() < 700 else math.inf
    ppl_source = math.exp(float(dist.nll.astype(np.float64).mean()))
    kld_mean, kld_p99 = float(kld.mean()), float(np.percentile(kld, 99))
    top1 = float(agree.mean() * 100)
    verdict, reasons = judge(ppl, ppl_source, kld_mean, top1,
                             _new_flags(checks, source_checks), thresholds)
    return QualityReport(ppl=ppl, ppl_source=ppl_source, kld_mean=kld_mean, kld_p99=kld_p99,
                         top1_agree=top1, positions=int(kld.size), ctx=ctx, verdict=verdict,
                         reasons=reasons, generation=checks, source_generation=source_checks,
                         thresholds=thresholds)


def _source_tokenizer(scorer: _Scorer, source: Path, trust_remote_code: bool = False) -> Any:
    """The source folder's tokenizer when a quantized folder lacks its own, else None."""
    path = Path(source)
    if scorer.tokenizer is not None or not isinstance(scorer, _TorchScorer):
        return None
    if not path.is_dir() or gguf_file_of(path) is not None or not has_tokenizer(path):
        return None
    return load_tokenizer(path, trust_remote_code)


def model_perplexity(model: Path, ctx: int = EVAL_CTX, text: str | None = None, *,
                     progress: MessageCallback | None = None,
                     trust_remote_code: bool = False) -> tuple[float, int]:
    """(perplexity, scored positions) of `model` alone, with the quality gate's protocol
    (module docstring): the same windows, the same scored second halves and the same
    arithmetic as quality_report, so `quantdesk eval M` prints the perplexity that
    `quantdesk eval M --against S` prints for M when M and S tokenize the text alike (a
    quantized folder and its source do). The text is tokenized by `model`'s own tokenizer
    (a .gguf file's, through llama.cpp)."""
    progress = progress or (lambda _m: None)
    text = _eval_text(text)
    scorer = _open(Path(model), ctx, trust_remote_code)
    try:
        ids, bos = scorer.token_ids(text)
        w = windows(ids, ctx, bos)
        parts = []
        for i, window in enumerate(w):
            progress(f"model: window {i + 1} of {len(w)}")
            logits, targets = _scored(window, scorer.logits(window))
            logq = torch.log_softmax(logits.float(), dim=-1)  # as kld.compare computes NLL
            parts.append((-logq.gather(-1, targets.view(-1, 1))[:, 0]).numpy())
    finally:
        scorer.close()
    nll = np.concatenate(parts).astype(np.float64)
    return (math.exp(nll.mean()) if nll.mean() < 700 else math.inf), int(nll.size)
