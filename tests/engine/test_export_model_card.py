"""Model card: the settings, per-module bits, measured numbers and load instructions."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from export_helpers import job_for, quantize_to_store

from qtapp.engine.config import CalibrationSpec, GPTQOptions, ModuleRule, QuantScheme
from qtapp.engine.export import export_checkpoint
from qtapp.engine.export.model_card import model_card, write_model_card
from qtapp.engine.results import ExportResult, JobResult, Quality, Sizes

INFO = SimpleNamespace(name="SmolLM2-135M-Instruct", source="HuggingFaceTB/SmolLM2-135M-Instruct")


@pytest.fixture(scope="module")
def exported(make_tiny_model, tmp_path_factory):
    """A GPTQ job with the attn8-ffn4 rules and a skipped module, exported; its result."""
    tmp = tmp_path_factory.mktemp("card")
    src = make_tiny_model(tmp / "src", dtype=torch.bfloat16)
    rules = (ModuleRule("*.self_attn.*", QuantScheme(8, 32, True)),
             ModuleRule("*.mlp.*", QuantScheme(4, 32, True)),
             ModuleRule("*.mlp.down_proj", skip=True))
    job = job_for("gptq", 4, 64, rules=rules, export_format="compressed-tensors",
                  gptq=GPTQOptions(percdamp=0.01, act_order=True, static_groups=True),
                  calibration=CalibrationSpec(source="builtin", samples=128, seq_len=512))
    store = quantize_to_store(src, tmp / "store", job)
    export = export_checkpoint("compressed-tensors", src, store, job, tmp / "out")
    result = JobResult(model=INFO.name, source=str(src), method="gptq", export=export,
                       scheme=job.scheme.label, mixed=True, calibration=[128, 512],
                       quantize_seconds=42.25, sizes=Sizes(50 * 2**20, 200 * 2**20),
                       quality=Quality(ppl=12.3456, ppl_source=11.0, kld_mean=0.01234,
                                       kld_p99=0.2, top1_agree=91.25, verdict="degraded",
                                       reasons=["a", "b"]))
    return job, result, tmp / "out"


def test_card_settings_and_measurements(exported) -> None:
    job, result, out = exported
    path = write_model_card(out, job, INFO, result)
    assert path == out / "README.md"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\nlibrary_name: transformers\ntags:\n- quantized\n- quantdesk\n"
                           "- compressed-tensors\n- 4-bit\n- 8-bit\n")
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in text
    assert "# SmolLM2-135M-Instruct — GPTQ W4 g64 sym (compressed-tensors)" in text
    assert ("| method | GPTQ (Frantar et al.): dampening 0.01, block size 128, act-order with "
            "static groups, true-sequential |") in text
    assert "| calibration | builtin, 128 samples × 512 tokens, seed 0 |" in text
    assert "`*.self_attn.*` → 8-bit, group 32, symmetric" in text
    assert "`*.mlp.down_proj` → kept in 16 bit" in text and "`lm_head` → kept in 16 bit" in text
    assert ("| W8 g32 sym | 8 | 0.02 M | `model.layers.*.self_attn.k_proj`, "
            "`model.layers.*.self_attn.o_proj`") in text
    assert "| W4 g32 sym | 4 | 0.03 M | `model.layers.*.mlp.gate_proj`, " in text
    assert ("| 16-bit | 3 | | `lm_head`, `model.layers.0.mlp.down_proj`, "
            "`model.layers.1.mlp.down_proj` |") in text
    assert "| perplexity (built-in evaluation text) | 12.346, source 11.000 (+12.2%) |" in text
    assert "| size of the weight files | 50.0 MiB (25% of the source's 200.0 MiB) |" in text
    assert "| quantization time | 42.2 s |" in text and "total time" not in text
    assert "| KL divergence vs source (mean / 99th percentile) | 0.0123 / 0.2000 |" in text
    assert "| top-1 agreement with the source | 91.2 % |" in text
    assert "| quality verdict | **degraded** (a; b) |" in text
    assert "pip install compressed-tensors" in text and "vllm serve" in text
    assert "quantdesk chat path/to/this/folder" in text


def test_missing_measurements_are_not_invented(exported) -> None:
    job, result, _ = exported
    text = model_card(job, INFO, dataclasses.replace(result, quality=None, sizes=None))
    assert "| perplexity | not measured |" in text
    assert "| size of the weight files | not measured |" in text
    assert "KL divergence" not in text and "verdict" not in text


def test_rtn_card_says_calibration_is_unused_and_shows_format_notes(tmp_path: Path) -> None:
    job = job_for("rtn", 4, 32)
    result = JobResult(model="tiny", source=str(tmp_path), method="rtn",
                       export=ExportResult(format="gptq", checkpoint_format="gptq_v2",
                                           notes=["this checkpoint uses format gptq_v2"]))
    text = model_card(job, SimpleNamespace(name="tiny", source=str(tmp_path)), result)
    assert "| calibration | not used by RTN (only for measuring) |" in text
    assert "| format | gptq (checkpoint format `gptq_v2`) |" in text
    assert "## Notes\n\n- this checkpoint uses format gptq_v2" in text
    assert "pip install gptqmodel optimum" in text
    assert "base_model" not in text  # a local folder is not a Hub id
