"""Helpers of the family and mixture-of-experts tests (tests/engine/test_families.py,
test_moe.py, test_mixtral.py, test_gpt_oss.py, test_gemma4_moe.py, test_hybrid.py, …): tiny
models of a transformers family with peaked outputs, the consumers' logits (transformers
through load_dequantized, llama-cpp-python), the mean KL divergence and its limits, damaged
copies of an output, and the per-expert checks every MoE family runs (each expert quantized
from the tokens its router sends it, AWQ's scale before the experts folding exactly, a
wrong expert count refused).

A module with a unique name, imported as `from family_helpers import …` (as tiny_models);
every check here is one that a test shows failing on a damaged input (the *_is_caught
tests of the family modules)."""

from __future__ import annotations

import functools
import json
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
import torch

from qtapp.engine.model.arch import FAMILIES, arch_for

KLD_MAX = 1e-3
# GGUF: an F32 file must reproduce the source (the conversion itself: names, layout, norm
# offsets, metadata); Q8_0 adds llama.cpp's CPU matmul, which also rounds the activations to
# 8 bits (W8A8), on top of 8-bit token embeddings and output: 0.3e-3 … 5.5e-3 measured here.
GGUF_F32_KLD_MAX = 1e-5
GGUF_Q8_KLD_MAX = 1e-2
N_TOKENS = 48
ENTROPY = 2.5  # nats of the tiny models' next-token distributions (flat: ln 259 = 5.6)

# per family: config overrides on top of the tiny shape (real vocab/rope/etc. values of the
# family otherwise come from its config class); head_dim 16 = hidden / heads
FAMILY_CONFIGS: dict[str, dict] = {
    "llama": {},
    "granite": {"embedding_multiplier": 12.0, "residual_multiplier": 0.22,
                "attention_multiplier": 0.015625, "logits_scaling": 8.0},
    "olmo2": {},
    "smollm3": {"num_hidden_layers": 4},  # layer 3 has no rope (NoPE every 4th)
    "phi3": {"pad_token_id": 2},
    "gemma2": {"head_dim": 16, "query_pre_attn_scalar": 16, "tie_word_embeddings": True,
               "sliding_window": 32},
    "gemma3_text": {"head_dim": 16, "query_pre_attn_scalar": 16, "tie_word_embeddings": True,
                    "sliding_window": 32},
    "glm4": {"head_dim": 16},
}
# std of the token embeddings: how much the residual stream is the embedding rather than
# block outputs. Random blocks of OLMo 2 (no pre-norms) swing the output most, Granite's
# (residual_multiplier 0.22) and Gemma's (embeddings × √hidden) least; these values put the
# 8-bit error well below KLD_MAX while zeroing one block's down_proj stays well above it.
EMBED_STD = {"granite": 0.3, "gemma2": 0.3, "gemma3_text": 0.3, "olmo2": 2.0, "glm4": 1.5}

# the calibration every run here uses: 16 samples of 64 tokens, on the CPU
CALIBRATION = ("--samples", "16", "--seq-len", "64", "--device", "cpu", "--no-eval")


# ------------------------------------------------------------------------ tiny models


def build_family_model(folder: Path, model_type: str, tokenizer_from: Path | None = None,
                       embed_std: float | None = None, **overrides) -> Path:
    """A tiny random model of `model_type` with peaked outputs, saved as safetensors with
    the byte tokenizer (or the tokenizer of `tokenizer_from`)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    vocab = write_tokenizer(folder, tokenizer_from)
    settings = {
        "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": vocab,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
        "max_position_embeddings": 2048, "tie_word_embeddings": False,
        "initializer_range": 0.1, **FAMILY_CONFIGS.get(model_type, {}), **overrides,
    }
    config = AutoConfig.for_model(model_type, **settings)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        with torch.no_grad():
            spread(model, embed_std or EMBED_STD.get(model_type, 1.0))
        sharpen(model, vocab)
    model.to(torch.float32).save_pretrained(folder)
    return folder


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "special_tokens_map.json")


def copy_tokenizer(src: Path, folder: Path) -> None:
    """The tokenizer files `src` has, copied into `folder`."""
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, folder / name)


def write_tokenizer(folder: Path, tokenizer_from: Path | None = None) -> int:
    """The byte tokenizer written into `folder` (created), or the tokenizer of
    `tokenizer_from` (a folder whose config.json names its vocab_size) copied over it.
    Returns the vocabulary size."""
    from tiny_models import write_byte_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_byte_tokenizer(folder)
    if tokenizer_from is None:
        return vocab
    copy_tokenizer(tokenizer_from, folder)
    return json.loads((tokenizer_from / "config.json").read_text())["vocab_size"]


def spread(model, embed_std: float) -> None:
    """Move the model's norm weights off their neutral value (1, or 0 for 1 + w) and scale
    its token embeddings to std `embed_std` (call under torch.no_grad, seeded)."""
    for name, p in model.named_parameters():
        if p.ndim == 1 and "norm" in name:
            p.add_(0.2 * torch.randn_like(p))
    embed = model.get_input_embeddings().weight
    embed.mul_(embed_std / embed.std())


def sharpen(model, vocab: int, entropy: float = ENTROPY) -> None:
    """Scale the final norm's weight (every family's logits are linear in it, up to Gemma 2's
    soft-capping) until the mean next-token entropy on the test tokens is `entropy` nats."""
    norm = model.get_submodule(arch_for(model.config.to_dict()).final_norm)
    offset = FAMILIES[arch_for(model.config.to_dict()).name].norm_offset
    base = norm.weight.detach().clone() + offset
    ids = torch.tensor([token_ids(vocab)])
    lo, hi = 0.01, 100.0
    model.eval()
    with torch.no_grad():
        for _ in range(40):
            c = (lo * hi) ** 0.5
            norm.weight.copy_(c * base - offset)
            p = torch.softmax(model(ids).logits[0].double(), -1)
            h = float(-(p * p.clamp_min(1e-300).log()).sum(-1).mean())
            lo, hi = (c, hi) if h > entropy else (lo, c)


@functools.cache
def family_builder(model_type: str, tokenizer_from: Path | None = None
                   ) -> Callable[[Path], Path]:
    """folder → build_family_model(folder, model_type, tokenizer_from): one function per
    arguments, so that folder_cache builds the model once a session for every module that
    asks for it (test_families.py and test_families_everywhere.py)."""
    return lambda folder: build_family_model(folder, model_type, tokenizer_from)


# what folder_cache and output_cache made in this test session, shared by every module
# that asks with the same builder or arguments (the folders are only read)
_SESSION: dict[tuple, Path] = {}


def folder_cache(tmp_path_factory, builders: dict[str, Callable[[Path], Path]]):
    """case → its folder, built by `builders[case]` into a fresh temporary folder the first
    time this session asks for it (the body of a fixture: tests/gui/test_family_model_page.py
    reads the folders test_families_everywhere.py builds from the same CASES)."""
    def get(case: str) -> Path:
        key = (builders[case], str(tmp_path_factory.getbasetemp()))
        if key not in _SESSION:
            folder = tmp_path_factory.mktemp(case.replace("+", "-")) / case.split("+")[0]
            _SESSION[key] = builders[case](folder)
        return _SESSION[key]
    return get


def rewrite_tensors(folder: Path, edit: Callable[[str, torch.Tensor], torch.Tensor | None]
                    ) -> int:
    """Rewrite the folder's safetensors files with `edit(name, tensor)` applied to every
    tensor: it returns the tensor to write in its place (the same one, changed in place,
    or another) or None to leave it. Returns how many tensors it rewrote."""
    from safetensors.torch import load_file, save_file

    n = 0
    for f in sorted(folder.glob("*.safetensors")):
        tensors = load_file(f)
        new = {name: edit(name, t) for name, t in tensors.items()}
        new = {name: t for name, t in new.items() if t is not None}
        if new:
            save_file({**tensors, **new}, f, metadata={"format": "pt"})
        n += len(new)
    return n


def zero_router_row(folder: Path, router: str | tuple[str, ...], row: int) -> None:
    """Zero row `row` of every tensor whose name ends with `router` (the router's weight,
    and its bias where it has one), in every block: the expert it scores gets logit 0,
    below most top-k logits, so it is seldom routed to and takes the fallback."""
    def edit(name: str, t: torch.Tensor) -> torch.Tensor | None:
        if not name.endswith(router):
            return None
        t[row] = 0
        return t
    assert rewrite_tensors(folder, edit), f"no {router} in {folder}"


def tensor_names(folder: Path) -> set[str]:
    """Every tensor name of the folder's safetensors files."""
    from safetensors import safe_open

    names: set[str] = set()
    for f in folder.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            names |= set(st.keys())
    return names


def load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors files, by name."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in folder.glob("*.safetensors"):
        out.update(load_file(f))
    return out


def load_model(folder: Path):
    """The folder's transformers model, float32, in eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


# ------------------------------------------------------------------------ the consumers


def source_logits(folder: Path, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return load_model(folder)(torch.tensor([ids])).logits[0].float()


def hf_logits(folder: Path, ids: list[int]) -> torch.Tensor:
    from qtapp.engine.model.loader import load_dequantized

    model, _ = load_dequantized(folder)
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def gguf_logits(path: Path, ids: list[int]) -> torch.Tensor:
    from qtapp.engine.gguf.llama_runtime import load_llama

    llm = load_llama(path, n_ctx=128, logits_all=True, n_threads=2)
    llm.eval(ids)
    out = torch.tensor(np.asarray(llm.scores[:len(ids)]), dtype=torch.float32)
    llm.close()
    return out


def mean_kld(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """mean over positions of KL(P ‖ Q), P the source."""
    logp = torch.log_softmax(p_logits.double(), -1)
    logq = torch.log_softmax(q_logits.double(), -1)
    return float((logp.exp() * (logp - logq)).sum(-1).mean())


def token_ids(vocab: int) -> list[int]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, min(vocab, 259), (N_TOKENS,), generator=g).tolist()


HELD_OUT_TOKENS = 256


def held_out_ids(folder: Path, n: int = HELD_OUT_TOKENS) -> list[int]:
    """The first `n` tokens of the built-in evaluation text (disjoint from the calibration
    text, same kind of text), by the model's tokenizer: the tokens to compare a calibrated
    W4 output with RTN on. `token_ids` draws uniformly from all 256 bytes while the
    calibration text uses 93 of them; GPTQ fits its weights to the calibration inputs, so on
    those random ids it measured worse than RTN for dense and MoE models alike, and better on
    this text (docs/models.md, footnote 6)."""
    from transformers import AutoTokenizer

    from qtapp.engine.quant.calibration import eval_tokens

    return eval_tokens(AutoTokenizer.from_pretrained(folder), max_tokens=n)[0].tolist()


# ------------------------------------------------------------------------ the CLI


def quantize_cli(src: Path, out: Path, method: str, *args: str) -> Path:
    """`quantdesk quantize` of `src` into `out` with CALIBRATION and `args` (by default
    8 bits, or Q8_0 without an importance matrix for GGUF); it must succeed."""
    from qtapp.cli import main

    if not args:
        args = ("--type", "Q8_0", "--imatrix", "none") if method == "gguf" else ("--bits", "8")
    assert main(["quantize", "--model", str(src), "--method", method, "--out", str(out),
                 *CALIBRATION, *args]) == 0
    return out


def gguf_file(out: Path) -> Path:
    (path,) = sorted(out.glob("*.gguf"))
    return path


def output_cache(tmp_path_factory):
    """(src, method, *args) → the quantize_cli output, run the first time this session
    asks for it (the body of a fixture: one run shared by the tests that only read it)."""
    def get(src: Path, method: str, *args: str) -> Path:
        key = (str(src), method, *args, str(tmp_path_factory.getbasetemp()))
        if key not in _SESSION:
            out = tmp_path_factory.mktemp(f"{Path(src).name}-{method}") / "out"
            _SESSION[key] = quantize_cli(src, out, method, *args)
        return _SESSION[key]
    return get


def assert_router_excluded(out: Path, router: str, expert: str) -> None:
    """The output's quantization_config keeps the router (`router`, a module name) out of
    the loaders' quantized linears and not the expert linear `expert`: a negative dynamic
    rule (GPTQ format) or the ignore list (compressed-tensors)."""
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    if qc["quant_method"] == "gptq":
        excluded = [k[2:] for k in qc.get("dynamic", {}) if k.startswith("-:")]
        assert any(re.match(x, router) for x in excluded), qc
        assert not any(re.match(x, expert) for x in excluded), qc
    else:
        assert router in qc["ignore"], qc
        assert expert not in qc["ignore"], qc


def assert_expert_count_refused(src: Path, tmp: Path, capsys, key: str, claimed: int,
                                held: int) -> None:
    """A copy of `src` whose config.json says `claimed` experts (`key`) while its tensors
    hold `held`: the CLI refuses it, saying both numbers, before writing anything."""
    from qtapp.cli import main

    bad = tmp / "bad"
    shutil.copytree(src, bad)
    config = json.loads((bad / "config.json").read_text())
    config[key] = claimed
    (bad / "config.json").write_text(json.dumps(config))
    out = tmp / "out"
    assert main(["quantize", "--model", str(bad), "--method", "gptq", "--out", str(out),
                 "--bits", "8", "--device", "cpu", "--no-eval"]) != 0
    err = capsys.readouterr().err
    assert f"says {claimed} experts" in err and f"hold {held}" in err, err
    assert not out.exists() and not list(tmp.glob(".out*"))


# ------------------------------------------------------------------------ damaged copies


def damage_hf(out: Path, tmp: Path, module: str) -> Path:
    """A copy of `out` whose `module` (quantized) has all-zero scales: its weight is 0."""
    from safetensors.torch import load_file, save_file

    bad = tmp / (out.name + "-damaged")
    shutil.copytree(out, bad)
    for f in bad.glob("*.safetensors"):
        tensors = load_file(f)
        key = next((k for k in tensors if k.startswith(module + ".") and "scale" in k), None)
        if key is not None:
            tensors[key] = torch.zeros_like(tensors[key])
            save_file(tensors, f, metadata={"format": "pt"})
            return bad
    raise AssertionError(f"no scales of {module} in {out}")


def damage_gguf(path: Path, tmp: Path, tensor: str) -> Path:
    """A copy of `path` whose `tensor` holds only zero bytes."""
    import gguf

    bad = tmp / ("damaged-" + path.name)
    shutil.copy2(path, bad)
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == tensor)
    data = np.memmap(bad, dtype=np.uint8, mode="r+")
    data[t.data_offset:t.data_offset + t.n_bytes] = 0
    data.flush()
    del data
    return bad


# ------------------------------------------------------------------------ comparisons


def assert_w8_matches(src: Path, out: Path, damaged: Callable[[], Path], label: str,
                      limit: float = KLD_MAX) -> float:
    """The output opened by load_dequantized within `limit` mean KLD of the source on
    `token_ids`, and the copy `damaged()` makes of it above that limit. Returns the KLD."""
    ids = token_ids(259)
    ref = source_logits(src, ids)
    kld = mean_kld(ref, hf_logits(out, ids))
    print(f"{label}: mean KLD {kld:.2e}")
    assert kld < limit, kld
    bad = mean_kld(ref, hf_logits(damaged(), ids))
    print(f"{label}, damaged: mean KLD {bad:.2e}")
    assert bad > limit, bad
    return kld


def held_out_klds(src: Path, outputs: dict[str, Path], ids: list[int] | None = None
                  ) -> tuple[list[int], torch.Tensor, dict[str, float]]:
    """(held_out_ids (or `ids`), the source's logits on them, name → mean KLD of each
    output)."""
    ids = held_out_ids(src) if ids is None else ids
    ref = source_logits(src, ids)
    return ids, ref, {k: mean_kld(ref, hf_logits(out, ids)) for k, out in outputs.items()}


W4_G32 = ("--bits", "4", "--group-size", "32")


def assert_w4_calibrated_beat_rtn(src: Path, tmp: Path, damage: Callable[[Path], Path],
                                  damaged: tuple[str, ...] = ("gptq", "awq"),
                                  args: Callable[[str], tuple[str, ...]] = lambda _m: (),
                                  ) -> dict[str, float]:
    """RTN, GPTQ and AWQ at W4 g32 (`args(method)` added: the export format) through the
    CLI, compared on held-out text: GPTQ and AWQ closer to the source than RTN, and each
    output of `damaged` made worse by `damage(output)` not (the comparison can fail).
    Returns name → mean KLD ("gptq", …, "gptq damaged", …)."""
    methods = ("rtn", "gptq", "awq")
    outputs = {m: quantize_cli(src, tmp / m, m, *W4_G32, *args(m)) for m in methods}
    ids, ref, kld = held_out_klds(src, outputs)
    for m in damaged:
        kld[f"{m} damaged"] = mean_kld(ref, hf_logits(damage(outputs[m]), ids))
    print(f"\n{src.name} W4 g32, held-out text: "
          + "  ".join(f"{k} {v:.2e}" for k, v in kld.items()))
    for m in damaged:
        assert kld[f"{m} damaged"] > kld["rtn"], (m, kld)
    assert kld["gptq"] < kld["rtn"] and kld["awq"] < kld["rtn"], kld
    return kld


def assert_gguf_f32_reproduces(src: Path, tmp: Path, broken: Iterable[str], label: str
                               ) -> tuple[Path, torch.Tensor]:
    """The F32 GGUF of `src`, run by llama-cpp-python, within GGUF_F32_KLD_MAX of
    transformers on `token_ids`; each tensor of `broken` zeroed is above it. Returns the
    file and the source's logits."""
    from qtapp.engine.gguf.convert import convert_to_gguf

    ids = token_ids(259)
    ref = source_logits(src, ids)
    f32 = convert_to_gguf(src, tmp / "f32.gguf", "F32").path
    exact = mean_kld(ref, gguf_logits(f32, ids))
    print(f"{label} gguf F32: mean KLD {exact:.2e}")
    assert exact < GGUF_F32_KLD_MAX, exact
    for tensor in broken:
        damaged = mean_kld(ref, gguf_logits(damage_gguf(f32, tmp, tensor), ids))
        print(f"{label} gguf F32, {tensor} zeroed: mean KLD {damaged:.2e}")
        assert damaged > GGUF_F32_KLD_MAX, (tensor, damaged)
    return f32, ref


def assert_gguf_q8_close(src: Path, tmp: Path, ref: torch.Tensor, label: str,
                         limit: float = GGUF_Q8_KLD_MAX, broken: str | None = None) -> Path:
    """Q8_0 through the CLI, run by llama-cpp-python, within `limit` of `ref` (the source's
    logits on `token_ids`), and the file with the tensor `broken` zeroed above it. Returns
    the file."""
    ids = token_ids(259)
    path = gguf_file(quantize_cli(src, tmp / "out", "gguf"))
    kld = mean_kld(ref, gguf_logits(path, ids))
    print(f"{label} gguf Q8_0: mean KLD {kld:.2e}")
    assert kld < limit, kld
    if broken is not None:
        damaged = mean_kld(ref, gguf_logits(damage_gguf(path, tmp, broken), ids))
        print(f"{label} gguf Q8_0, {broken} zeroed: mean KLD {damaged:.2e}")
        assert damaged > limit, (broken, damaged)
    return path


# ------------------------------------------------------------------------ experts


def block0(folder: Path):
    """(info, block 0 materialised by the pipeline's streamer, its calibration inputs: 16
    samples of 64 seeded tokens in mini-batches of 8, block 0's arguments in use)."""
    from qtapp.engine.model.sources import _model_info
    from qtapp.engine.quant.streaming import LayerStreamer

    info = _model_info(folder, str(folder), folder.name)
    streamer = LayerStreamer(info, torch.device("cpu"))
    g = torch.Generator().manual_seed(3)
    inputs = streamer.capture_inputs(torch.randint(3, 259, (16, 64), generator=g), 8)
    inputs.use_block(0)
    block = streamer.materialize(streamer.blocks[0], streamer.block_prefix(0))
    streamer.close()
    return info, block, inputs


def quantize_block0(folder: Path, scheme, break_hessian: int | None = None):
    """The CLI's GPTQ pipeline (`scheme`) on block 0 only, recording every Hessian it builds
    (name → (H, n)) and the events; `break_hessian` zeroes that expert's Hessians before
    they are used. Returns (report, hessians, events, the calibration mini-batches)."""
    from qtapp.engine.config import CalibrationSpec, JobSpec
    from qtapp.engine.quant import pipeline

    info, block, inputs = block0(folder)
    job = JobSpec(model=str(folder), method="gptq", out=str(folder) + "-out", scheme=scheme,
                  calibration=CalibrationSpec(samples=16, seq_len=64), device="cpu")
    events: list = []
    hessians: dict[str, tuple[torch.Tensor, int]] = {}
    collect = pipeline.collect_hessians

    def spy(block, names, inputs, should_cancel=None):
        acc = collect(block, names, inputs, should_cancel)
        for n, a in acc.items():
            if break_hessian is not None and info.arch.expert_of(n) == break_hessian:
                a.H.zero_()
            hessians[n] = (a.H.clone(), a.n_samples)
        return acc

    batches = [(xb.clone(), dict(kw)) for xb, kw in inputs.batches()]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "collect_hessians", spy)
        quantizer = pipeline.BlockQuantizer(job, info, events.append, lambda: False)
        report = quantizer.quantize(0, block, f"{info.arch.layers_prefix}.0.", inputs)
    return report, hessians, events, batches


def quantized_layer0(folder: Path, report):
    """Block 0 of the folder's transformers model, experts unfused, with the quantized
    weights of `report` in place except the down projections: what true-sequential GPTQ
    has in place when it builds the down projections' Hessians."""
    from qtapp.engine.model.moe import unfuse_experts

    model = load_model(folder)
    unfuse_experts(model)
    layer = model.model.layers[0]
    with torch.no_grad():
        for name, qw in report.modules.items():
            if not name.endswith("down_proj"):
                layer.get_submodule(name).weight.copy_(qw.dequantize())
    return layer


def run_capturing(layer, batches: list, **points) -> dict[str, torch.Tensor]:
    """Run `layer` on each calibration mini-batch (each with its own arguments) and return,
    for each point name → (module, "in" | "out"), that module's first input or its output,
    concatenated over the mini-batches."""
    seen: dict[str, list[torch.Tensor]] = {k: [] for k in points}
    hooks = []
    for key, (module, where) in points.items():
        if where == "in":
            hooks.append(module.register_forward_pre_hook(
                lambda _m, a, key=key: seen[key].append(a[0])))
        else:
            hooks.append(module.register_forward_hook(
                lambda _m, _a, out, key=key: seen[key].append(out)))
    try:
        with torch.no_grad():
            for xb, kw in batches:
                layer(xb, **kw)
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v) for k, v in seen.items()}


def routed_hessians(x: torch.Tensor, idx: torch.Tensor, n_experts: int, prefix: str,
                    linear_inputs: Callable[[int, torch.Tensor], Iterable[tuple]]) -> dict:
    """Reference, per expert linear: H = 2/n Σ x xᵀ over exactly the tokens (rows of `x`)
    that the router's top-k picks `idx` send to that expert, and n. `linear_inputs(e, xe)`
    gives (linear, its input) for expert e's linears from its routed rows `xe`; the names
    are `{prefix}{e}.{linear}`."""
    out = {}
    with torch.no_grad():
        for e in range(n_experts):
            for kind, inp in linear_inputs(e, x[(idx == e).any(-1)]):
                inp = inp.double()
                out[f"{prefix}{e}.{kind}"] = (2 / max(len(inp), 1) * inp.T @ inp, len(inp))
    return out


def assert_experts_counted(hessians: dict, probe: str, n_experts: int, top_k: int,
                           min_tokens: int) -> list[int]:
    """The tokens each expert's linear `probe` (formatted with the expert) was solved from:
    every routed (token, expert) pair of the 16 × 64 calibration tokens counted once, and
    both paths exercised (an expert under `min_tokens`, one at or above it)."""
    counts = [hessians[probe.format(e)][1] for e in range(n_experts)]
    assert sum(counts) == 16 * 64 * top_k
    assert any(c < min_tokens for c in counts), counts
    assert any(c >= min_tokens for c in counts), counts
    return counts


def assert_zeroed_hessian_caught(folder: Path, scheme, hessians: dict, probe: str,
                                 n_experts: int, check: Callable) -> None:
    """An expert solved from its own tokens (`probe`, formatted with the expert, has at
    least min_expert_tokens) whose Hessians quantize_block0 zeroes fails `check(folder,
    report, hessians, events, batches)`."""
    from qtapp.engine.model.moe import min_expert_tokens

    big = next(e for e in range(n_experts)
               if hessians[probe.format(e)][1] >= min_expert_tokens(scheme.group_size))
    broken = quantize_block0(folder, scheme, break_hessian=big)
    with pytest.raises(AssertionError):
        check(folder, *broken)


def assert_unquantized_caught(folder: Path, block0_run: tuple, name: str,
                              check: Callable) -> None:
    """quantize_block0's report without the expert linear `name` fails `check` (which
    names it)."""
    from dataclasses import replace

    report, hessians, events, batches = block0_run
    modules = {k: v for k, v in report.modules.items() if k != name}
    with pytest.raises(AssertionError, match="left unquantized"):
        check(folder, replace(report, modules=modules), hessians, events, batches)


def check_every_expert(report, hessians: dict, events: list, ref: dict,
                       source: dict[str, tuple[int, torch.Tensor]], scheme) -> None:
    """Every expert linear of block 0 (`source`: name → (expert, its source weight as the
    linear's (out, in))) is quantized, from the Hessian of exactly its routed tokens (`ref`,
    routed_hessians'); one with fewer than min_expert_tokens is reported as the range-search
    RTN fallback (named with its count in the log) and its weight is that RTN, the others
    are GPTQ's."""
    from qtapp.engine.model.moe import min_expert_tokens
    from qtapp.engine.quant.methods.rtn import rtn_searched

    fallback = set(report.meta["experts"]["fallback"])
    logged = " ".join(e.message for e in events if getattr(e, "type", "") == "log")
    methods = {e.module: e.method for e in events if getattr(e, "type", "") == "layer"}
    assert source
    for name, (e, W) in source.items():
        assert name in report.modules, f"{name} left unquantized"
        H, n = hessians[name]
        H_ref, n_ref = ref[name]
        assert n == n_ref, (name, n, n_ref)
        torch.testing.assert_close(H.double(), H_ref, rtol=1e-4, atol=1e-6)
        if n < min_expert_tokens(scheme.group_size):
            assert name in fallback and methods["model.layers.0." + name] == "rtn"
            assert f"{e} ({n})" in logged
            expect = rtn_searched(W.detach().float(), scheme).dequantize()
            torch.testing.assert_close(report.modules[name].dequantize(), expect)
        else:
            assert name not in fallback and methods["model.layers.0." + name] == "gptq"


def routing(block, router, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's outputs on every calibration mini-batch and the experts its router (the
    module `router`, whose third output is the top-k indices) picks for every token."""
    picked: list[torch.Tensor] = []
    hook = router.register_forward_hook(lambda _m, _a, out: picked.append(out[2]))
    ys = []
    try:
        with torch.no_grad():
            for xb, kw in inputs.batches():
                y = block(xb, **kw)
                ys.append(y[0] if isinstance(y, tuple) else y)
    finally:
        hook.remove()
    return torch.cat(ys), torch.cat(picked)


def awq_search(info, block, inputs, options=None, compensate_router: bool = True):
    """AWQ W4 g32's search on block 0 (experts with fewer than min_expert_tokens(32) routed
    tokens skipped); without `compensate_router`, the groups lose their extra targets (the
    router's columns). Returns (groups, result)."""
    from dataclasses import replace

    from qtapp.engine.config import AWQOptions, QuantScheme
    from qtapp.engine.model.moe import min_expert_tokens
    from qtapp.engine.quant.methods.awq import awq_search_block

    groups = info.arch.present(0, block)[1]
    if not compensate_router:
        groups = tuple(replace(g, also=()) for g in groups)
    scheme = QuantScheme(4, 32, True)
    result = awq_search_block(
        block, inputs.x, inputs.kwargs, groups, lambda _n: scheme, options or AWQOptions(),
        8, batches=inputs.batches(),
        min_tokens=lambda n: min_expert_tokens(32) if info.arch.expert_of(n) is not None
        else 0)
    return groups, result


def check_awq_folds_exactly(info, block, inputs, router: str, norm: str, options=None,
                            compensate_router: bool = True, fold_into: str = "") -> None:
    """AWQ's scales searched on block 0 (awq_search) and folded without clipping: the scale
    on `norm` (before the experts) is not all ones, the router (module `router`) picks the
    same experts and the block's output is unchanged. `fold_into` folds that scale into
    another norm instead (a broken table)."""
    from dataclasses import replace

    from qtapp.engine.quant.methods.awq import awq_apply_block

    module = block.get_submodule(router)
    y0, picked0 = routing(block, module, inputs)
    groups, result = awq_search(info, block, inputs, options, compensate_router)
    assert norm in result.scales
    assert not torch.allclose(result.scales[norm], torch.ones_like(result.scales[norm]))
    result.clips.clear()  # the scales alone change nothing in real arithmetic
    if fold_into:
        result.scales[fold_into] = result.scales.pop(norm)
        groups = tuple(replace(g, prev=fold_into) if g.prev == norm else g
                       for g in groups if g.prev != fold_into)
    awq_apply_block(block, result, groups)
    y1, picked1 = routing(block, module, inputs)
    assert torch.equal(picked0, picked1), "the router picks other experts after scaling"
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)


def imatrix_and_routed(folder: Path, experts: Callable) -> tuple:
    """(the importance matrix collect_input_stats builds on 8 seeded samples of 64 tokens,
    the tokens the float router of the unfused transformers model sends each expert of the
    module `experts(model)` on the same samples)."""
    from qtapp.engine.gguf.hf_model import HfModel
    from qtapp.engine.gguf.imatrix import ImatrixCollector
    from qtapp.engine.model.moe import unfuse_experts
    from qtapp.engine.model.sources import _model_info
    from qtapp.engine.quant.pipeline import collect_input_stats

    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(3, 259, (8, 64), generator=g)
    hf = HfModel(folder)
    collector = ImatrixCollector()
    collect_input_stats(_model_info(folder, str(folder), "m"), tokens,
                        lambda name, x: collector.add_source(hf, name + ".weight", x),
                        lambda _e: None, lambda: False, torch.device("cpu"))
    model = load_model(folder)
    unfuse_experts(model)
    with torch.no_grad():
        model(tokens)
    return collector.to_imatrix(), experts(model).token_counts.numpy()
