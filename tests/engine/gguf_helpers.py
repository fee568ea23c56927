"""Helpers shared by the GGUF tests: llama.cpp's reference converter and file comparison."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def llama_cpp_source() -> Path | None:
    """llama.cpp sources carrying convert_hf_to_gguf.py: $QUANTDESK_LLAMA_CPP, or the vendor
    copy of a llama-cpp-python source distribution unpacked under .cache/sdist."""
    env = os.environ.get("QUANTDESK_LLAMA_CPP")
    candidates = [Path(env)] if env else sorted(
        (ROOT / ".cache" / "sdist").glob("llama_cpp_python-*/vendor/llama.cpp"))
    for path in reversed(candidates):
        if (path / "convert_hf_to_gguf.py").is_file() and (path / "gguf-py").is_dir():
            return path
    return None


def llama_tool(name: str) -> Path | None:
    """A built llama.cpp tool (llama-quantize...) under .cache/llama-build/bin, if any."""
    path = ROOT / ".cache" / "llama-build" / "bin" / name
    return path if path.is_file() else None


def reference_convert(model_dir: Path, out_file: Path, outtype: str) -> Path:
    """Run llama.cpp's own convert_hf_to_gguf.py with its own gguf-py."""
    src = llama_cpp_source()
    if src is None:
        pytest.skip("llama.cpp sources (llama-cpp-python sdist) not found")
    env = {**os.environ, "PYTHONPATH": str(src / "gguf-py"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(src / "convert_hf_to_gguf.py"), str(model_dir), "--outtype",
         outtype, "--outfile", str(out_file)], env=env, capture_output=True, text=True,
        check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return out_file


def with_demo_tokenizer(folder: Path, demo_dir: Path) -> Path:
    """Replace a tiny model's byte tokenizer by the demo's (a BPE llama.cpp knows)."""
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (demo_dir / name).is_file():
            shutil.copy2(demo_dir / name, folder / name)
    return folder


def fields(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def tensor_bytes(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """name -> (type name, ggml shape, raw bytes)."""
    reader = gguf.GGUFReader(path)
    return {t.name: (t.tensor_type.name, tuple(int(d) for d in t.shape),
                     np.asarray(t.data).tobytes()) for t in reader.tensors}


def build_model256(folder: Path, make_tiny_model, demo_dir: Path, n_layer: int = 4) -> Path:
    """A small random Llama whose rows (256, 512) fit the K types' 256-blocks, with the
    demo's tokenizer."""
    make_tiny_model(folder, "llama", vocab_size=49152, hidden_size=256, intermediate_size=512,
                    num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=n_layer)
    return with_demo_tokenizer(folder, demo_dir)
