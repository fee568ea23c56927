"""Compatibility check before download: per-method answers for fixture configs of several
families, tokenizers llama.cpp does or does not know, and bad input (malformed, gated,
absent ids; configs without architectures)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qtapp.engine.errors import UserError
from qtapp.engine.planning.compat import check_model
from qtapp.engine.planning.hardware import Hardware

GiB = 2**30
BASE = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
        "num_key_value_heads": 3, "num_hidden_layers": 30, "vocab_size": 49152}
CONFIGS = {
    "llama": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **BASE},
    "qwen2": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **BASE},
    "mistral": {"architectures": ["MistralForCausalLM"], "model_type": "mistral", **BASE},
    "gemma3": {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", **BASE},
    "qwen3_moe": {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
                  "num_experts": 8, **BASE},
    "mamba": {"architectures": ["MambaForCausalLM"], "model_type": "mamba", "hidden_size": 768,
              "num_hidden_layers": 24, "vocab_size": 50280, "state_size": 16},
    "vlm": {"architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
            "vision_config": {"depth": 32}, **BASE},
}
EXPECT = {  # family -> (GPTQ/AWQ/RTN work (or each of RTN, GPTQ, AWQ), GGUF works)
    "llama": (True, True), "qwen2": (True, True), "mistral": (True, True),
    "gemma3": (True, True), "qwen3_moe": (True, True),
    "mamba": (False, False),
    "vlm": (False, False),
}


def machine(ram_gib: float = 32) -> Hardware:
    return Hardware("Fake CPU", 2, 2, int(ram_gib * GiB), int(ram_gib * GiB), "TestOS", ())


def folder_with(tmp_path: Path, config: dict, tokenizer_from: Path | None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    if tokenizer_from is not None:
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (tokenizer_from / name).exists():
                shutil.copy(tokenizer_from / name, folder / name)
    return folder


@pytest.mark.parametrize("family", list(CONFIGS))
def test_each_family_gets_the_documented_answer(family, demo_dir, tmp_path):
    folder = folder_with(tmp_path, CONFIGS[family], demo_dir)
    report = check_model(str(folder), machine())
    by = {m.method: m for m in report.methods}
    linear, gguf = EXPECT[family]
    works = list(linear) if isinstance(linear, tuple) else [linear] * 3
    assert [by[m].ok for m in ("rtn", "gptq", "awq")] == works, report.text()
    assert by["gguf"].ok == gguf, report.text()
    if not any(works):
        assert by["gptq"].reason and "no QuantDesk method works" in report.text()
    if family == "vlm":
        assert "vision-language" in by["gptq"].reason
    if family == "mamba":
        assert "mamba" in by["gptq"].reason and "MambaForCausalLM" in by["gguf"].reason
    if family == "qwen3_moe":  # AWQ too (one scale before the experts, the router compensated)
        assert by["awq"].ok, by["awq"].reason


def test_an_unknown_pre_tokenizer_rules_out_gguf_only(tiny_llama_dir, tmp_path):
    folder = folder_with(tmp_path, CONFIGS["llama"], tiny_llama_dir)  # byte-level, no merges
    report = check_model(str(folder), machine())
    by = {m.method: m for m in report.methods}
    assert by["gptq"].ok and not by["gguf"].ok
    assert "pre-tokenizer" in by["gguf"].reason
    assert report.works == ["rtn", "gptq", "awq"]


def test_a_config_without_architectures(demo_dir, tmp_path):
    config = {k: v for k, v in CONFIGS["llama"].items() if k != "architectures"}
    report = check_model(str(folder_with(tmp_path, config, demo_dir)), machine())
    by = {m.method: m for m in report.methods}
    assert by["gptq"].ok  # model_type names the family
    assert not by["gguf"].ok and "no 'architectures'" in by["gguf"].reason
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps(BASE))
    with pytest.raises(UserError, match="neither 'architectures' nor 'model_type'"):
        check_model(str(bare), machine())


def test_too_large_for_this_machine_names_the_memory(demo_dir, tmp_path):
    big = {**CONFIGS["llama"], "hidden_size": 8192, "intermediate_size": 28672,
           "num_attention_heads": 64, "num_key_value_heads": 8, "num_hidden_layers": 80,
           "vocab_size": 128256}
    report = check_model(str(folder_with(tmp_path, big, demo_dir)), machine(16))
    assert not report.works
    assert all("GiB of RAM" in m.reason for m in report.methods)
    # 70B on 16 GiB: RTN streams one block and fits without the quality gate; GPTQ's
    # calibration activations and Hessians do not, so it gets no --no-eval hint
    by = {m.method: m.reason for m in report.methods}
    assert "fits without the quality gate (--no-eval" in by["rtn"], by["rtn"]
    assert "--no-eval" not in by["gptq"], by["gptq"]


def test_a_model_that_fits_only_without_the_quality_gate_says_so(demo_dir, tmp_path):
    """The quality gate loads the whole model (float32); quantizing streams one block. A
    Qwen3-30B-A3B-shaped config on a 24 GiB machine: no with the gate, and the reason says
    that --no-eval fits, with its RAM (which must itself be under the machine's limit)."""
    import re

    moe = {**CONFIGS["qwen3_moe"], "hidden_size": 2048, "num_hidden_layers": 48,
           "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8,
           "head_dim": 128, "num_attention_heads": 32, "num_key_value_heads": 4,
           "vocab_size": 151936}
    report = check_model(str(folder_with(tmp_path, moe, demo_dir)), machine(24))
    for m in (m for m in report.methods if m.method != "gguf"):
        assert not m.ok
        hint = re.search(r"fits without the quality gate \(--no-eval[^)]*\): ([\d.]+) GiB",
                         m.reason)
        assert hint, m.reason
        assert float(hint.group(1)) < 24 * 0.8, m.reason


def test_chat_warnings(tiny_llama_dir, demo_dir, tmp_path):
    ok = check_model(str(folder_with(tmp_path, CONFIGS["llama"], demo_dir)), machine())
    assert ok.warnings == []
    folder = tmp_path / "model"
    (folder / "chat_template.jinja").unlink()
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    assert any("no chat template" in w for w in check_model(str(folder), machine()).warnings)


@pytest.mark.parametrize(("model", "message"), [
    ("bad id//x", "neither an existing folder nor a valid Hugging Face model id"),
    ("org/na me", "neither an existing folder nor a valid Hugging Face model id"),
    ("nobody/absent-model", "not in the local Hugging Face cache"),
    ("", "no model given"),
])
def test_bad_ids_are_user_errors(model, message, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError, match=message):
        check_model(model, machine())


def test_a_gated_model_says_how_to_get_access(monkeypatch):
    from types import SimpleNamespace

    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError

    def gated(self, repo_id, **kwargs):
        raise GatedRepoError("403 gated", response=SimpleNamespace(headers={}, request=None))

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(HfApi, "model_info", gated)
    with pytest.raises(UserError, match=r"gated or private\. Open https://huggingface\.co/"
                                        r"meta-llama/Llama-3\.1-8B, accept its licence.*"
                                        "hf auth login"):
        check_model("meta-llama/Llama-3.1-8B", machine())


def test_a_cached_hub_model_is_answered_offline_and_quickly(demo_dir, tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    snapshot = hub / "models--org--tiny" / "snapshots" / ("a" * 40)
    snapshot.parent.mkdir(parents=True)
    shutil.copytree(folder_with(tmp_path, CONFIGS["qwen2"], demo_dir), snapshot)
    (snapshot / "model.safetensors").write_bytes(b"\0" * 1000)
    (hub / "models--org--tiny" / "refs").mkdir()
    (hub / "models--org--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    # "quickly" means without waiting on the network: any connection attempt fails the test
    # (a wall-clock bound flaked on a loaded machine and could not tell a hang from load)
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError(f"check_model tried to connect: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    report = check_model("org/tiny", machine())
    assert report.where == "Hub (from the local cache)"
    assert report.weights_bytes == 1000 and report.works == ["rtn", "gptq", "awq", "gguf"]


def test_cli_check(demo_dir, tmp_path, capsys):
    from qtapp.cli import main

    folder = folder_with(tmp_path, CONFIGS["mamba"], demo_dir)
    assert main(["check", str(folder), "--json"]) == 1
    d = json.loads(capsys.readouterr().out)
    assert d["works"] == [] and d["model_type"] == "mamba"


def test_a_family_without_gguf_says_why_in_a_line(demo_dir, tmp_path, capsys):
    """A family of the table with no GGUF conversion (gguf_reason: Phi-3) answers `quantdesk
    check` with its own reason and what to use instead, in one short line, not the
    converter's list of every architecture; that list stays in the answer for an unknown
    architecture (Mamba), printed once."""
    from qtapp.cli import main
    from qtapp.engine.gguf.archs import ARCHS, arch_of
    from qtapp.engine.model.arch import FAMILIES

    refused = [f for f in FAMILIES.values() if f.supported and f.gguf is None]
    assert [f.model_type for f in refused] == ["phi3"]
    for family in refused:
        config = {"architectures": [family.architectures[0]],
                  "model_type": family.model_type, **BASE}
        (tmp_path / family.model_type).mkdir()
        folder = folder_with(tmp_path / family.model_type, config, demo_dir)
        assert main(["check", str(folder)]) == 0
        out = capsys.readouterr().out
        line = next(x for x in out.splitlines() if x.startswith("  gguf "))
        assert len(line) < 200, line
        assert family.gguf_reason in line and line.endswith("; use GPTQ or AWQ"), line
        assert "LlamaForCausalLM" not in out, out
        with pytest.raises(UserError) as e:  # quantize's error adds the architecture
            arch_of(config)
        assert family.architectures[0] in str(e.value) and family.gguf_reason in str(e.value)
        assert "convert_hf_to_gguf.py" in str(e.value) and len(str(e.value)) < 400

    text = check_model(str(folder_with(tmp_path, CONFIGS["mamba"], demo_dir)),
                       machine()).text()
    assert all(a in text for a in ARCHS), text
    assert "Choose GPTQ or AWQ" not in text and "no other method for it either" in text, text
    assert text.count("QuantDesk supports llama") == 1, text
    assert "  gptq  no   as rtn\n  awq   no   as rtn\n" in text, text


def test_a_job_warns_when_the_model_has_no_chat_template(tiny_llama_dir, tmp_path):
    from qtapp.engine import events as ev
    from qtapp.engine.config import CalibrationSpec, JobSpec, QuantScheme
    from qtapp.engine.jobs.job import run_job

    model = shutil.copytree(tiny_llama_dir, tmp_path / "m")
    (model / "chat_template.jinja").unlink(missing_ok=True)
    tc = json.loads((model / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(tc))
    seen: list[ev.Event] = []
    run_job(JobSpec(model=str(model), method="rtn", out=str(tmp_path / "o"), evaluate=False,
                    scheme=QuantScheme(bits=8, group_size=32),
                    calibration=CalibrationSpec(samples=2, seq_len=32)),
            seen.append, lambda: False)
    warnings = [e.message for e in seen if isinstance(e, ev.Log) and e.level == "warning"]
    assert any("no chat template" in w for w in warnings), warnings
