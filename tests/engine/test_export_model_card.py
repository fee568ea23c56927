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
from qtapp.engine.export.model_card import FORMAT_TAGS, model_card, write_model_card
from qtapp.engine.results import ExportResult, GGUFDetails, JobResult, Quality, Sizes

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
    assert "\nbase_model_relation: quantized\n" in text  # the Hub's "Quantizations" link
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


# ------------------------------------------------------------------ the card of each format


def _install_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("With transformers:"))


def _transformers_needs(quant_method: str) -> set[str]:
    """The packages transformers' own quantizer for `quant_method` asks to pip-install (its
    error messages), read from the installed transformers."""
    import inspect
    import re

    from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING

    source = inspect.getsource(inspect.getmodule(AUTO_QUANTIZER_MAPPING[quant_method]))
    return set(re.findall(r"pip install ([A-Za-z0-9_\-]+)", source))


@pytest.mark.parametrize("fmt", ["gptq", "awq", "compressed-tensors"])
def test_card_names_the_loader_transformers_uses_for_the_folders_quant_method(
        fmt, make_tiny_model, tmp_path) -> None:
    """The card's install line names every package transformers' quantizer for the written
    config.json's quant_method asks for (AWQ also needs accelerate), and vLLM serves the
    folder (it reads the same quant_method)."""
    import json

    src = make_tiny_model(tmp_path / "src", dtype=torch.bfloat16)
    job = job_for("awq" if fmt == "awq" else "gptq", 4, 32, sym=fmt != "awq",
                  export_format=fmt)
    store = quantize_to_store(src, tmp_path / "store", job)
    export = export_checkpoint(fmt, src, store, job, tmp_path / "out")
    result = JobResult(model="tiny", source=str(src), method=job.method, export=export)
    text = write_model_card(tmp_path / "out", job, SimpleNamespace(name="tiny", source=str(src)),
                            result).read_text(encoding="utf-8")
    method = json.loads((tmp_path / "out" / "config.json").read_text())[
        "quantization_config"]["quant_method"]
    needs = _transformers_needs(method)
    assert needs, f"no pip install hint found for {method}"
    line = _install_line(text)
    assert all(f" {p}" in line or f"`pip install {p}" in line for p in needs), (needs, line)
    assert "AutoModelForCausalLM.from_pretrained" in text and "vllm serve" in text
    assert f"- {FORMAT_TAGS[fmt]}\n" in text.split("---")[1]


def test_the_loader_check_fails_on_a_card_that_omits_a_package() -> None:
    """The check above on a deliberately broken line: AWQ without accelerate."""
    needs = _transformers_needs("awq")
    line = "With transformers: `pip install gptqmodel` (transformers 5 loads AWQ through it)."
    assert not all(f" {p}" in line or f"`pip install {p}" in line for p in needs)


def _gguf_commands(text: str) -> dict[str, str]:
    """The file or folder each GGUF load command opens, with the placeholder folder."""
    import re

    found = {}
    for tool, pattern in (("llama-cli", r"llama-cli -m (\S+)"),
                          ("llama-server", r"llama-server -m (\S+)"),
                          ("llama-cpp-python", r'Llama\(model_path="([^"]+)"'),
                          ("lms", r"lms import (\S+?)`"),
                          ("ollama", r"ollama create \S+ -f (\S+)")):
        m = re.search(pattern, text)
        assert m, f"the card shows no {tool} command"
        found[tool] = m.group(1)
    return found


def check_gguf_card(text: str, out: Path) -> None:
    """What a GGUF card must say about the folder `out` it describes."""
    from qtapp.engine.export.model_card import FOLDER

    assert "from_pretrained" not in text  # the folder has no config.json
    assert not (out / "config.json").exists()
    for tool, path in _gguf_commands(text).items():
        rel = path.removeprefix(FOLDER + "/")
        assert (out / rel).is_file(), f"{tool} opens {rel}, which the folder does not hold"
    modelfile = (out / "Modelfile").read_text(encoding="utf-8")
    model = next(out.glob("*.gguf"))
    assert f"FROM ./{model.name}" in modelfile


@pytest.mark.slow
def test_gguf_card_of_a_real_job_title_calibration_and_loaders(demo_dir, tmp_path) -> None:
    """A Q4_K_M job with an importance matrix on the demo: the card's title names the GGUF
    type, its calibration row says the text made the importance matrix, and every command
    opens a file the folder holds; the importance matrix is out of the way of OUT/*.gguf, and
    `quantdesk chat OUT` picks the model."""
    from qtapp.engine.config import JobSpec
    from qtapp.engine.jobs.job import run_job
    from qtapp.engine.model.sources import resolve_loadable

    out = tmp_path / "gguf"
    job = JobSpec(model=str(demo_dir), method="gguf", out=str(out), evaluate=False,
                  calibration=CalibrationSpec(samples=2, seq_len=64))
    result = run_job(job, lambda e: None, lambda: False)
    text = (out / "README.md").read_text(encoding="utf-8")
    title = next(line for line in text.splitlines() if line.startswith("# "))
    assert title == f"# {demo_dir.name} — GGUF Q4_K_M", title
    assert "W4 g128" not in text and "library_name: gguf" in text
    assert ("| calibration | builtin, 2 samples × 64 tokens, seed 0: used for the importance "
            "matrix (saved as `imatrix/imatrix.gguf`") in text
    assert "weighted by the importance matrix" in text
    check_gguf_card(text, out)
    assert [p.name for p in out.glob("*.gguf")] == [result.gguf.file]
    assert (out / "imatrix" / "imatrix.gguf").is_file()
    assert resolve_loadable(str(out)) == out / result.gguf.file


def test_gguf_card_check_fails_on_todays_card(tmp_path) -> None:
    """The GGUF check on a card written as before (the transformers loader for a folder
    without config.json) and on a card that names a file the folder lacks."""
    from qtapp.engine.export.model_card import _load_section

    (tmp_path / "m-Q4_K_M.gguf").write_bytes(b"GGUF")
    (tmp_path / "Modelfile").write_text("FROM ./m-Q4_K_M.gguf\n", encoding="utf-8")
    with pytest.raises(AssertionError):
        check_gguf_card(_load_section("gguf", "path/to/this/folder"), tmp_path)
    job = job_for("gguf", 4, 32)
    result = JobResult(model="m", source="/m", method="gguf",
                       export=ExportResult(format="gguf", files=["m-Q4_K_M.gguf"]),
                       gguf=GGUFDetails(type="Q4_K_M", file="m-Q4_K_M.gguf"))
    check_gguf_card(model_card(job, SimpleNamespace(name="m", source="/m"), result), tmp_path)
    (tmp_path / "m-Q4_K_M.gguf").rename(tmp_path / "other.gguf")
    with pytest.raises(AssertionError, match="does not hold"):
        check_gguf_card(model_card(job, SimpleNamespace(name="m", source="/m"), result),
                        tmp_path)


def test_gguf_card_without_an_importance_matrix_says_calibration_was_unused() -> None:
    job = job_for("gguf", 4, 32)
    result = JobResult(model="m", source="/m", method="gguf",
                       export=ExportResult(format="gguf", files=["m-Q8_0.gguf"]),
                       gguf=GGUFDetails(type="Q8_0", file="m-Q8_0.gguf",
                                        tensor_types={"Q8_0": 10, "F32": 3}))
    text = model_card(job, SimpleNamespace(name="m", source="/m"), result)
    assert "| calibration | not used (Q8_0 does not use an importance matrix) |" in text
    assert "| type | GGUF Q8_0 |" in text and "| format | GGUF file `m-Q8_0.gguf` " in text
    assert "| GGUF tensor type | tensors |\n|---|---|\n| Q8_0 | 10 |\n| F32 | 3 |" in text
    assert "| rules | none (llama.cpp's Q8_0 choice for every tensor) |" in text
