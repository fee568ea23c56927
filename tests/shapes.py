"""Model shapes and machines the planning tests share (config.json values of real models,
and fake machines), so every test describes the demo, a Llama 7B or an 8 GB card alike."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from qtapp.engine.planning.hardware import GPU, Hardware

GiB = 2**30
# SmolLM2-135M (the built-in demo): widths 576 and 1536, so group size 128 does not fit.
DEMO = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
        "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3,
        "num_hidden_layers": 30, "vocab_size": 49152}
LLAMA_7B = {**DEMO, "hidden_size": 4096, "intermediate_size": 11008,
            "num_attention_heads": 32, "num_key_value_heads": 32, "num_hidden_layers": 32,
            "vocab_size": 32000}


def hardware(vram_gib: float | None = None) -> Hardware:
    """A fake machine: 32 GiB RAM (30 available), and a GPU of `vram_gib` when given."""
    gpus = () if vram_gib is None else (
        GPU(0, f"Fake RTX {vram_gib:g} GB", "cuda", int(vram_gib * GiB), int(vram_gib * GiB)),)
    return Hardware("Fake CPU 9000", 8, 16, 32 * GiB, 30 * GiB, "TestOS 1", gpus)


def model_info(tmp_path: Path, name: str = "Llama-7B-test", config: dict | None = None,
               n_params: int = 6_738_415_616) -> SimpleNamespace:
    """A stand-in for sources.ModelInfo of a model that is not on disk."""
    config = LLAMA_7B if config is None else config
    return SimpleNamespace(path=tmp_path / name, source=str(tmp_path / name), name=name,
                           config=config, arch=SimpleNamespace(name="llama"),
                           n_params=n_params, size_bytes=2 * n_params,
                           n_layers=config["num_hidden_layers"],
                           hidden_size=config["hidden_size"], dtype="bfloat16")
