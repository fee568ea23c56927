"""A de-gridded copy of a Llama/Qwen-family model: the same function, weights off their grid.

The demo model ships as Q4_1 (blocks of 32 input columns on one 4-bit grid each), so any
quantizer that uses the same blocks recovers it almost exactly and comparisons between
types or methods say little. This script reorders channels with seeded permutations that
leave the network's function unchanged but scatter every block of input columns:

- residual channels, P (hidden_size): columns of embed_tokens, q/k/v/gate/up (and of an
  untied lm_head), rows of o_proj/down_proj, every RMSNorm weight (RMSNorm is elementwise
  after a norm over all channels, so it commutes with P);
- MLP channels, M_l (intermediate_size, per layer): rows of gate/up, columns of down;
- value channels, V_lj (head_dim, per layer and key/value head j): rows (and bias) of v_proj
  in head j, and o_proj's columns of every query head that reads head j.

q/k rows stay in place (their order carries the rotary frequencies). Logits agree up to
float summation order; `--check` measures it.

    python benchmarks/degrid.py [--src demo|FOLDER] [--out FOLDER] [--seed 0] [--check]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qtapp.engine.model.sources import SafetensorsReader, demo_model_dir, models_cache_dir

_COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
           "tokenizer.model", "special_tokens_map.json", "chat_template.jinja", "vocab.json",
           "merges.txt", "added_tokens.json")


def degrid(src: Path, out: Path, seed: int = 0) -> Path:
    """Write the permuted copy of `src` into `out` (created; must not exist)."""
    from safetensors.torch import save_file

    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads", n_head)
    head_dim = config.get("head_dim") or hidden // n_head
    gen = torch.Generator().manual_seed(seed)
    P = torch.randperm(hidden, generator=gen)
    reader = SafetensorsReader(src)
    state = {name: reader.get(name) for name in reader.names()}
    out_state: dict[str, torch.Tensor] = {}
    for name, w in state.items():
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            w = w[:, P]
        elif name.endswith("norm.weight") and w.shape == (hidden,):
            w = w[P]
        elif name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight",
                            "gate_proj.weight", "up_proj.weight")):
            w = w[:, P]
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            w = w[P, :]
        out_state[name] = w
    for layer in range(config["num_hidden_layers"]):
        pre = f"model.layers.{layer}."
        M = torch.randperm(inter, generator=gen)
        for part in ("gate_proj", "up_proj"):
            out_state[f"{pre}mlp.{part}.weight"] = out_state[f"{pre}mlp.{part}.weight"][M, :]
        out_state[f"{pre}mlp.down_proj.weight"] = out_state[f"{pre}mlp.down_proj.weight"][:, M]
        V = torch.cat([j * head_dim + torch.randperm(head_dim, generator=gen)
                       for j in range(n_kv)])
        for suffix in ("weight", "bias"):
            key = f"{pre}self_attn.v_proj.{suffix}"
            if key in out_state:
                out_state[key] = out_state[key][V]
        # query head h reads key/value head h // (n_head // n_kv)
        group = n_head // n_kv
        O = torch.cat([h * head_dim + (V[(h // group) * head_dim:(h // group + 1) * head_dim]
                                       - (h // group) * head_dim)
                       for h in range(n_head)])
        key = f"{pre}self_attn.o_proj.weight"
        out_state[key] = out_state[key][:, O]
    out.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in out_state.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    for name in _COPIED:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    (out / "degrid.json").write_text(json.dumps({"source": str(src), "seed": seed}) + "\n",
                                     encoding="utf-8")
    return out


def degrid_demo_dir(seed: int = 0) -> Path:
    """The de-gridded demo model, built once into the QuantDesk models cache."""
    out = models_cache_dir() / f"SmolLM2-135M-Instruct-degrid{seed}"
    if (out / "degrid.json").is_file():
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    degrid(demo_model_dir(), tmp, seed)
    tmp.replace(out)
    return out


def max_logit_difference(a: Path, b: Path, n_tokens: int = 256) -> tuple[float, float]:
    """(max |logit_a − logit_b|, max |logit_a|) on the evaluation text, in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qtapp.engine.quant.calibration import eval_tokens

    ids = eval_tokens(AutoTokenizer.from_pretrained(a), max_tokens=n_tokens)
    logits = []
    for folder in (a, b):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        with torch.inference_mode():
            logits.append(model(input_ids=ids).logits)
    return float((logits[0] - logits[1]).abs().max()), float(logits[0].abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default="demo")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", action="store_true", help="compare the logits of both models")
    args = ap.parse_args()
    if args.src == "demo" and args.out is None:
        src, out = demo_model_dir(), degrid_demo_dir(args.seed)
    else:
        src = demo_model_dir() if args.src == "demo" else Path(args.src)
        if args.out is None:
            ap.error("--out is needed with --src FOLDER")
        out = degrid(src, args.out, args.seed)
    print(out)
    if args.check:
        diff, scale = max_logit_difference(src, out)
        print(f"max |Δlogit| = {diff:.3g} (max |logit| {scale:.3g})")


if __name__ == "__main__":
    main()
