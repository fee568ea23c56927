"""Every supported family at every station, not only quantize → load → KLD (issue 18, item 4):
`quantdesk check`, the advisor, the planner, the size budget, the quality gate and the chat
engine, on the tiny models the family test modules build (their builders are imported, not
copied; see CASES).

- check: with a fake 32 GiB CPU machine, RTN / GPTQ / AWQ say "yes" exactly where the table
  (arch.method_refusal) lets them, and GGUF says "yes" exactly where the table has GGUF facts
  for the config (Family.gguf, less a variant's gguf_reason), with the demo model's tokenizer
  (one llama.cpp knows) beside the weights;
- advisor: on a CPU machine and a 24 GB GPU machine, for every goal and target, it never
  recommends a method the family refuses;
- planner: plan_job gives finite positive RAM / VRAM / time for each method the family takes,
  counts the total parameters of the module graph (transformers' own model) for memory and
  the active ones (experts scaled by top-k / E) for time;
- size budget (slow): `quantize --target-size` writes no more than its budget for a dense, a
  mixture-of-experts and a hybrid family;
- quality gate: `quantdesk eval` of the RTN W8 output against its source gives a verdict with
  no reason from the figures (KL divergence, perplexity, top-1 agreement); a damaged output
  gets one;
- chat: the chat engine (quality/chat.open_chat) answers from the source and from the RTN
  W8 output (the plain fallback template: the byte tokenizer has none), greedily the same
  first tokens.

Each check is a helper that a deliberately broken input makes fail (the *_is_caught tests).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from family_helpers import (
    build_family_model,
    damage_hf,
    family_builder,
    folder_cache,
    output_cache,
)

from qtapp.engine.config import JobSpec
from qtapp.engine.model.arch import FAMILIES, method_refusal
from qtapp.engine.planning.hardware import GPU, Hardware

GiB = 2**30
CPU_MACHINE = Hardware("Fake CPU", 2, 2, 32 * GiB, 32 * GiB, "TestOS", ())
GPU_MACHINE = Hardware("Fake CPU", 8, 16, 64 * GiB, 64 * GiB, "TestOS",
                       (GPU(0, "Fake RTX 24 GB", "cuda", 24 * GiB, 24 * GiB),))
LINEAR = ("rtn", "gptq", "awq")
MOE_SUFFIX = "+moe"  # a family's mixture-of-experts variant (Gemma 4's enable_moe_block)


def _moe(folder: Path) -> Path:
    from test_moe import MOE

    return build_family_model(folder, "qwen3_moe", **MOE)


def _mixtral(folder: Path) -> Path:
    from test_mixtral import EMBED, MIXTRAL

    return build_family_model(folder, "mixtral", embed_std=EMBED, **MIXTRAL)


def _gpt_oss(folder: Path) -> Path:
    from test_gpt_oss import GPT_OSS, _with_expert_biases

    return _with_expert_biases(build_family_model(folder, "gpt_oss", **GPT_OSS))


def _qwen35(model_type: str):
    def build(folder: Path) -> Path:
        from test_hybrid import EMBED_STD, MOE, QWEN3_5

        extra = {**QWEN3_5, **MOE} if "moe" in model_type else QWEN3_5
        return build_family_model(folder, model_type, embed_std=EMBED_STD, **extra)
    return build


def _qwen35_vl(model_type: str):
    def build(folder: Path) -> Path:
        from test_qwen35_vl import build_vl

        return build_vl(folder, model_type)
    return build


def _gemma(model_type: str, moe: bool = False):
    def build(folder: Path) -> Path:
        from test_gemma_multimodal import EMBED, GEMMA3_TEXT, GEMMA4_TEXT, build_multimodal

        # as GEMMA4_GGUF: the last 3 blocks reuse keys and values, so that those keeping
        # their own end sliding-then-global as llama.cpp's Gemma 4 needs (GGUF can say yes)
        text = {**GEMMA4_TEXT, "num_kv_shared_layers": 3}
        if moe:
            from test_gemma4_moe import MOE_TEXT

            text = MOE_TEXT
        if model_type == "gemma3":
            return build_multimodal(folder, "gemma3", GEMMA3_TEXT)
        if model_type == "gemma4":
            return build_multimodal(folder, "gemma4", text)
        return build_family_model(folder, "gemma4_text", embed_std=EMBED["gemma4"],
                                  vocab_size_per_layer_input=259, **text)
    return build


# case → builder: every supported model_type of the table, and the variants
CASES = {
    **{t: family_builder(t) for t in ("llama", "mistral", "qwen2", "qwen3", "smollm3", "granite",
                              "olmo2", "phi3", "gemma2", "gemma3_text", "glm4")},
    "qwen3_moe": _moe,
    "mixtral": _mixtral,
    "gpt_oss": _gpt_oss,
    "qwen3_5_text": _qwen35("qwen3_5_text"),
    "qwen3_5_moe_text": _qwen35("qwen3_5_moe_text"),
    "qwen3_5": _qwen35_vl("qwen3_5"),
    "qwen3_5_moe": _qwen35_vl("qwen3_5_moe"),
    "gemma3": _gemma("gemma3"),
    "gemma4_text": _gemma("gemma4_text"),
    "gemma4": _gemma("gemma4"),
    "gemma4_text" + MOE_SUFFIX: _gemma("gemma4_text", moe=True),
    "gemma4" + MOE_SUFFIX: _gemma("gemma4", moe=True),
}
MOE_CASES = ("qwen3_moe", "mixtral", "gpt_oss", "qwen3_5_moe_text", "qwen3_5_moe",
             "gemma4_text" + MOE_SUFFIX, "gemma4" + MOE_SUFFIX)


# the quality gate and the chat run a quantized output of each case (build, RTN W8 through
# the CLI, both models scored and generating: 7-110 s a family on 2 shared cores); these
# cases run without the slow marker, the others with it
FAST = ("llama", "qwen3_moe")


def _params(cases):
    return [c if c in FAST else pytest.param(c, marks=pytest.mark.slow) for c in cases]


def test_every_supported_family_and_variant_has_a_case():
    wanted = {t for t, f in FAMILIES.items() if f.supported}
    wanted |= {t + MOE_SUFFIX for t, f in FAMILIES.items() if f.supported and f.variants}
    assert wanted == set(CASES), sorted(wanted ^ set(CASES))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """case → its tiny model (CASES), built once."""
    return folder_cache(tmp_path_factory, CASES)


@pytest.fixture(scope="module")
def quantized(built, tmp_path_factory):
    """case → the RTN W8 output of its tiny model, through the CLI, run once."""
    outputs = output_cache(tmp_path_factory)
    return lambda case: outputs(built(case), "rtn")


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def table_gguf(config: dict) -> bool:
    """Whether the table has a GGUF conversion for this config (its variant's, if any)."""
    family = FAMILIES[str(config["model_type"])]
    variant = family.variant(config)
    return family.gguf is not None and not (variant is not None and variant.gguf_reason)


def test_the_gguf_answer_of_the_table_is_what_the_converter_takes(built):
    """table_gguf (the expectation below) is the GGUF converter's own answer (gguf/archs)
    for each case's config."""
    from qtapp.engine.errors import UserError
    from qtapp.engine.gguf.archs import arch_of

    for case in CASES:
        config = _config(built(case))
        try:
            arch_of(config)
            takes = True
        except UserError:
            takes = False
        assert takes == table_gguf(config), case


def table_methods(config: dict) -> set[str]:
    allowed = {m for m in LINEAR if not method_refusal(m, config)}
    return allowed | ({"gguf"} if table_gguf(config) else set())


# ---------------------------------------------------------------------------- check


def with_demo_tokenizer(src: Path, dest: Path, demo_dir: Path) -> Path:
    """`src`'s config and weights (linked) with the demo model's tokenizer, which llama.cpp
    knows (the byte tokenizer's pre-tokenizer is not one it knows: GGUF would say no for
    that reason alone)."""
    dest.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix in (".safetensors", ".json") and not f.name.startswith("tokenizer") \
                and f.name != "special_tokens_map.json":
            (dest / f.name).symlink_to(f)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "special_tokens_map.json"):
        if (demo_dir / name).is_file():
            shutil.copy2(demo_dir / name, dest / name)
    return dest


def assert_check_follows_the_table(folder: Path, config: dict) -> None:
    from qtapp.engine.planning.compat import check_model

    report = check_model(str(folder), CPU_MACHINE)
    said = {m.method for m in report.methods if m.ok}
    assert said == table_methods(config), report.text()
    assert report.model_type == config["model_type"]
    assert report.n_params > 0


@pytest.mark.parametrize("case", list(CASES))
def test_check_says_what_the_table_says(case, built, demo_dir, tmp_path):
    folder = with_demo_tokenizer(built(case), tmp_path / "model", demo_dir)
    assert_check_follows_the_table(folder, _config(folder))


def test_check_against_the_table_is_caught(built, demo_dir, tmp_path):
    """A table that claims GGUF for Phi-3 (or the check answering for another family)."""
    folder = with_demo_tokenizer(built("phi3"), tmp_path / "model", demo_dir)
    config = _config(folder)
    with pytest.raises(AssertionError):
        assert_check_follows_the_table(folder, {**config, "model_type": "llama"})


# ------------------------------------------------------------------------- advisor

GOALS_TARGETS = [(g, t) for g in ("speed", "accuracy") for t in (None, "gpu", "cpu", "edge")]


def assert_advice_allowed(config: dict, advise_fn) -> None:
    from qtapp.engine.planning.shape import ModelShape

    shape = ModelShape.from_config(config, name="tiny")
    allowed = table_methods(config)
    for hw in (CPU_MACHINE, GPU_MACHINE):
        for goal, target in GOALS_TARGETS:
            rec = advise_fn(hw, shape, goal, target).recommendation
            assert rec.method in allowed, (config["model_type"], hw.best_gpu, goal, target,
                                           rec.method, rec.reason)


def _advise(config: dict):
    from qtapp.engine.planning.advisor import advise

    return lambda hw, shape, goal, target: advise(hw, shape, goal, target, config=config)


@pytest.mark.parametrize("case", list(CASES))
def test_advisor_recommends_a_method_the_family_takes(case, built):
    config = _config(built(case))
    assert_advice_allowed(config, _advise(config))


def test_advice_blind_to_the_family_is_caught(built):
    """Phi-3 has no GGUF conversion: an advisor that ignores the family recommends it."""
    from qtapp.engine.planning.advisor import advise

    with pytest.raises(AssertionError):
        assert_advice_allowed(_config(built("phi3")), advise)


# ------------------------------------------------------------------------- planner


def graph_params(folder: Path) -> tuple[int, int]:
    """(total, active) parameters of the model transformers builds for the checkpoint (the
    class config.json's architectures names, vision tower included), plus the checkpoint's
    tensors transformers ignores (Qwen3.5's mtp.*: on disk and in memory all the same);
    active: less the share of the routed experts' tensors a token does not use
    (1 − top-k / E). Expert biases (gpt-oss) count as active: the planner's shape has no
    term for them (about 0.2 % of gpt-oss-20b's 3.6 B active parameters, 2 % of this
    tiny model's)."""
    import transformers
    from safetensors import safe_open

    from qtapp.engine.model.arch import text_settings

    raw = _config(folder)
    config = transformers.AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = getattr(transformers, raw["architectures"][0])(config)
    settings = text_settings(raw)
    n = settings.get("num_experts") or settings.get("num_local_experts") or 0
    k = settings.get("num_experts_per_tok") or settings.get("top_k_experts") or 0
    total = active = 0
    for name, p in model.named_parameters():
        total += p.numel()
        routed = ".experts." in name and not name.endswith("_bias") and n
        active += p.numel() * k // n if routed else p.numel()
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    for f in folder.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            for key in st.keys():  # noqa: SIM118 - a safetensors file, not a dict
                if key not in names and key.startswith("mtp."):
                    size = math.prod(st.get_slice(key).get_shape())
                    total, active = total + size, active + size
    return total, active


def assert_plan_counts(info, folder: Path, tmp: Path, total: int, active: int) -> None:
    from qtapp.engine.planning.planner import _shape, plan_job

    shape = _shape(info)
    assert shape.n_params == pytest.approx(total, rel=0.01), (shape.n_params, total)
    assert shape.active_params == pytest.approx(active, rel=0.01), (shape.active_params, active)
    methods = table_methods(_config(folder))
    for hw in (CPU_MACHINE, GPU_MACHINE):
        for method in sorted(methods):
            job = JobSpec(model=str(folder), method=method, out=str(tmp / f"out-{method}"))
            plan = plan_job(job, info, hw)
            figures = (plan.peak_ram, plan.peak_vram, plan.seconds, plan.final_disk)
            assert all(math.isfinite(x) and x >= 0 for x in figures), (method, figures)
            assert plan.peak_ram > 0 and plan.seconds > 0 and plan.final_disk > 0
            assert (plan.peak_vram > 0) == (hw.best_gpu is not None), (method, plan.table())


@pytest.mark.parametrize("case", list(CASES))
def test_planner_counts_total_and_active_parameters(case, built, tmp_path):
    from qtapp.engine.model.sources import resolve_model

    folder = built(case)
    info = resolve_model(str(folder))
    total, active = graph_params(folder)
    if case in MOE_CASES:
        assert active < total * 0.9
    assert_plan_counts(info, folder, tmp_path, total, active)


def test_a_plan_of_the_wrong_parameter_count_is_caught(built, tmp_path):
    """Active counted as total (an MoE planned as if every expert ran) fails the check."""
    from qtapp.engine.model.sources import resolve_model

    folder = built("qwen3_moe")
    info = resolve_model(str(folder))
    total, _active = graph_params(folder)
    with pytest.raises(AssertionError):
        assert_plan_counts(info, folder, tmp_path, total, total)


# --------------------------------------------------------------------- size budget


def _written(out: Path) -> int:
    return sum(p.stat().st_size for p in out.iterdir() if p.name != "README.md")


def budget_of(src: Path, tmp: Path) -> tuple[int, int]:
    """(a budget 40 % of the way from the smallest to the largest choice, the smallest)."""
    from qtapp.engine.model.sources import resolve_model
    from qtapp.engine.planning.budget import size_model

    base = JobSpec(model=str(src), method="rtn", out=str(tmp / "x"), evaluate=False)
    model = size_model(base, resolve_model(str(src)))
    return int(model.smallest() + 0.4 * (model.largest() - model.smallest())), model.smallest()


def assert_within(out: Path, budget: int, smallest: int) -> None:
    written = _written(out)
    assert written <= budget, (written, budget)
    assert written > smallest - 64 * 1024  # the budget is used, not left idle


@pytest.mark.slow
@pytest.mark.parametrize("case", ["llama", "qwen3_moe", "qwen3_5_text"])
def test_size_budget_is_met(case, built, tmp_path):
    from qtapp.cli import main

    src = built(case)
    budget, smallest = budget_of(src, tmp_path)
    out = tmp_path / "budget"
    assert main(["quantize", "--model", str(src), "--method", "rtn", "--out", str(out),
                 "--target-size", str(budget), "--samples", "8", "--seq-len", "64",
                 "--device", "cpu", "--no-eval", "--group-size", "64"]) == 0
    assert_within(out, budget, smallest)


def test_an_output_over_its_budget_is_caught(built, quantized, tmp_path):
    """The RTN W8 output, written without --target-size, is over the budget."""
    budget, smallest = budget_of(built("llama"), tmp_path)
    with pytest.raises(AssertionError):
        assert_within(quantized("llama"), budget, smallest)


# -------------------------------------------------------------------- quality gate

EVAL_TEXT = ("The quick brown fox jumps over the lazy dog. Quantization maps each weight to "
             "one of a few levels; the error it adds depends on the inputs the layer sees. ")


def gate_verdict(out: Path, src: Path, tmp: Path, capsys) -> dict:
    from qtapp.cli import main

    text = tmp / "eval.txt"
    text.write_text(EVAL_TEXT * 3)
    capsys.readouterr()
    rc = main(["eval", str(out), "--against", str(src), "--text", str(text), "--ctx", "64",
               "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc in (0, 1), rc
    return report


@pytest.mark.parametrize("case", _params(CASES))
def test_quality_gate_gives_a_verdict(case, built, quantized, tmp_path, capsys):
    report = gate_verdict(quantized(case), built(case), tmp_path, capsys)
    assert report["verdict"] in ("good", "degraded"), report["reasons"]
    assert not figure_reasons(report), (report["reasons"], report["kld_mean"],
                                        report["top1_agree"])


def figure_reasons(report: dict) -> list[str]:
    """The gate's reasons from the figures (KL divergence, perplexity, top-1 agreement). A
    tiny random model's answers to the generation prompts are noise: one of them may be
    flagged degenerate for the output and not the source (SmolLM3: 'a degenerate answer to 1
    prompt' at mean KLD 3e-4, top-1 98 %); the figures are what tell a family's output."""
    return [r for r in report["reasons"] if "degenerate" not in r]


def test_quality_gate_rejects_a_damaged_output(built, quantized, tmp_path, capsys):
    out = damage_hf(quantized("qwen3"), tmp_path, "model.layers.0.mlp.down_proj")
    report = gate_verdict(out, built("qwen3"), tmp_path, capsys)
    assert report["verdict"] != "good" and figure_reasons(report), report["reasons"]


# ---------------------------------------------------------------------------- chat


def chat_tokens(folder: Path) -> str:
    from qtapp.engine.quality.chat import GenerationSettings, open_chat

    chat = open_chat(str(folder))
    try:
        return chat.reply([{"role": "user", "content": "Hello, who are you?"}],
                          GenerationSettings(max_new_tokens=3, temperature=0.0))
    finally:
        chat.close()


@pytest.mark.parametrize("case", _params(CASES))
def test_chat_answers_from_source_and_output(case, built, quantized):
    assert_same_first_answer(built(case), quantized(case))


def assert_same_first_answer(source_dir: Path, output_dir: Path) -> None:
    source, output = chat_tokens(source_dir), chat_tokens(output_dir)
    assert source, "the source said nothing"
    assert output[:1] == source[:1], (source, output)


def test_a_damaged_output_answering_otherwise_is_caught(built, quantized, tmp_path):
    """Every quantized weight of the output zeroed (its scales): the blocks add nothing."""
    from safetensors.torch import load_file, save_file

    out = tmp_path / "zeroed"
    shutil.copytree(quantized("qwen3"), out)
    for f in out.glob("*.safetensors"):
        tensors = load_file(f)
        save_file({k: torch.zeros_like(v) if "scale" in k else v for k, v in tensors.items()},
                  f, metadata={"format": "pt"})
    with pytest.raises(AssertionError):
        assert_same_first_answer(built("qwen3"), out)
