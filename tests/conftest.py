"""Shared fixtures.

demo_dir          the demo model (SmolLM2-135M-Instruct) as a Hugging Face folder; converted once
                  into $QUANTDESK_CACHE (default <repo>/.cache/quantdesk, kept between runs).
tiny_llama_dir    a tiny random LlamaForCausalLM folder (hidden 64, 4 heads, 2 kv heads,
                  2 layers, intermediate 128, float32) with a byte-level tokenizer (vocab 259)
                  and SmolLM's chat template. Session-scoped: copy it before changing it.
make_tiny_model   factory: make_tiny_model(folder, model_type="llama", dtype=torch.float32,
                  **config_overrides) -> folder; model types llama, mistral, qwen2, qwen3.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tiny_models import build_tiny_model, write_byte_tokenizer  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("QUANTDESK_CACHE", str(ROOT / ".cache" / "quantdesk"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

@pytest.fixture(scope="session")
def demo_dir() -> Path:
    from qtapp.engine.model.sources import demo_model_dir

    return demo_model_dir()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def make_tiny_model():
    return build_tiny_model
