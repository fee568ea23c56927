"""llm-compressor 0.14 on a GPU, for `gpu_quantize.py --peer`: one method, one JSON line.

    python benchmarks/gpu_peer_llmcompressor.py MODEL_DIR TOKENS.pt gptq|awq GROUP

Its default sequential pipeline; the model is loaded in bf16 on the CPU as llm-compressor's
examples do, and its layers are moved to the GPU one at a time by oneshot itself.
"""

import json
import sys
import time

import torch
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.awq import AWQModifier
from llmcompressor.modifiers.quantization import GPTQModifier
from transformers import AutoModelForCausalLM


def _no_hashing() -> None:
    """datasets fingerprints datasets and map() calls by pickling them with dill, which fails
    on the GPU machine's pandas/pyarrow (MonthDayNano); fall back to a random hash, as datasets
    itself does for transforms it cannot hash."""
    import uuid

    import datasets.fingerprint as fp

    original = fp.Hasher.hash.__func__

    def safe_hash(cls, value):
        try:
            return original(cls, value)
        except Exception:  # noqa: BLE001 - any unpicklable value, as datasets does
            return uuid.uuid4().hex

    fp.Hasher.hash = classmethod(safe_hash)


def main() -> None:
    _no_hashing()
    folder, tokens_file, method, group = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    tokens = torch.load(tokens_file)
    n, seq = tokens.shape
    ds = Dataset.from_dict({"input_ids": tokens.tolist(),
                            "attention_mask": [[1] * seq for _ in range(n)]})
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", symmetric=method != "awq", strategy="group",
        group_size=group))
    if method == "gptq":
        recipe = GPTQModifier(config_groups={"g": scheme}, ignore=["lm_head"],
                              dampening_frac=0.01)
    else:
        recipe = AWQModifier(config_groups={"g": scheme}, ignore=["lm_head"])
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    oneshot(model=model, dataset=ds, recipe=recipe, max_seq_length=seq,
            num_calibration_samples=n)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    print(json.dumps({"who": "llm-compressor", "method": method, "seconds": round(seconds, 1),
                      "peak_vram_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}))


if __name__ == "__main__":
    main()
