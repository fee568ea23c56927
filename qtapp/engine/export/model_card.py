"""README.md for an output folder: where the model came from, how it was quantized, what was
measured, and how to load it.

    write_model_card(out_dir, job, info, result) → out_dir / README.md

`result` is the job's result (qtapp.engine.results.JobResult) as far as it is known when the
card is written: the export (format, checkpoint format, modules, notes), calibration [n, L],
the quality gate's figures (qtapp.engine.quality.gate), sizes, quantize_seconds. Whatever is
missing is shown as "not measured", never invented.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import qtapp
from qtapp.engine.config import JobSpec
from qtapp.engine.gguf.output import IMATRIX_FILE
from qtapp.engine.results import GGUFDetails, JobResult
from qtapp.engine.units import format_size

METHOD_NAMES = {"rtn": "RTN (round to nearest)", "gptq": "GPTQ (Frantar et al.)",
                "awq": "AWQ (Lin et al.)", "gguf": "GGUF (llama.cpp)"}
FOLDER = "path/to/this/folder"  # the load commands' placeholder for the output folder
FORMAT_TAGS = {"gptq": "gptq", "awq": "awq", "compressed-tensors": "compressed-tensors"}



def _scheme_label(bits: int, group_size: int, sym: bool) -> str:
    g = {-1: "per-channel", 0: "per-tensor"}.get(group_size, f"group {group_size}")
    return f"{bits}-bit, {g}, {'symmetric' if sym else 'asymmetric'}"


def _method_settings(job: JobSpec, gguf: GGUFDetails | None = None) -> str:
    if job.method == "gptq":
        o = job.gptq
        act = ("act-order with static groups" if o.act_order and o.static_groups
               else "act-order" if o.act_order else "no act-order")
        return (f"dampening {o.percdamp}, block size {o.blocksize}, {act}, "
                f"{'true-sequential' if o.true_sequential else 'all modules at once'}")
    if job.method == "awq":
        o = job.awq
        clip = f"clip search ({o.clip_grid} steps, max shrink {o.max_shrink})" if o.clip \
            else "no clip search"
        return f"scale grid of {o.grid} α values in [0, 1], {clip}"
    if gguf is not None:
        return ("llama.cpp's quantization of each tensor to its type, weighted by the "
                "importance matrix" if gguf.imatrix else
                "llama.cpp's quantization of each tensor to its type (no importance matrix)")
    return "no calibration-driven search"


def _gguf_rules(gguf: GGUFDetails) -> list[str]:
    """A GGUF job's rules as the tensor types they set (llama.cpp's own choice elsewhere)."""
    return [f"`{p}` → {t}" for p, t in gguf.overrides.items()] or [
        f"none (llama.cpp's {gguf.type} choice for every tensor)"]


def _gguf_calibration(job: JobSpec, gguf: GGUFDetails, text: str) -> str:
    """What calibration text did in a GGUF job: it made the importance matrix, or none."""
    if not gguf.imatrix:
        why = ("--imatrix none" if job.gguf.imatrix == "none" else
               f"{gguf.type} does not use an importance matrix")
        return f"not used ({why})"
    if job.gguf.imatrix not in ("auto", "none"):
        return f"importance matrix read from `{Path(job.gguf.imatrix).name}`"
    return (f"{text}: used for the importance matrix (saved as `{IMATRIX_FILE}`, which "
            "llama.cpp's `llama-quantize --imatrix` reads)")


def _rules(job: JobSpec) -> list[str]:
    out = []
    for r in job.rules:
        if r.skip:
            out.append(f"`{r.pattern}` → kept in 16 bit")
        elif r.scheme is not None:
            label = _scheme_label(r.scheme.bits, r.scheme.group_size, r.scheme.sym)
            out.append(f"`{r.pattern}` → {label}")
    out += [f"`{p}` → kept in 16 bit" for p in job.skip]
    return out


def _gguf_load_section(gguf: GGUFDetails, folder: str) -> str:
    """How the GGUF file opens: llama.cpp, llama-cpp-python, Ollama (the Modelfile beside
    it), LM Studio, QuantDesk. The folder has no config.json: transformers'
    AutoModelForCausalLM does not open it as a model folder."""
    file = gguf.file
    path = f"{folder}/{file}"
    tag = Path(file).stem.lower()
    intro = (f"The model is the single file `{file}` (llama.cpp's GGUF format; it holds the "
             "tokenizer and the chat template too). This folder has no config.json, so it is "
             "not a transformers model folder: open the file with one of these.")
    llama = ("With llama.cpp (`llama-cli` chats in the terminal, `llama-server` serves an "
             "OpenAI-compatible API and a web page):")
    chat = ('print(llm.create_chat_completion(messages=[{"role": "user", "content": "Hello"}])'
            '["choices"][0]["message"]["content"])')
    ollama = ("With Ollama (the `Modelfile` in this folder points at the file and sets the "
              "chat template):")
    studio = (f"With LM Studio: import the file (`lms import {path}`, or drag it into the "
              "My Models tab), then load it in the Chat tab.")
    return "\n".join([
        intro, "",
        llama, "", "```bash", f"llama-cli -m {path}", f"llama-server -m {path}", "```", "",
        "With llama-cpp-python (`pip install llama-cpp-python`):", "",
        "```python", "from llama_cpp import Llama", "",
        f'llm = Llama(model_path="{path}", n_ctx=4096)', chat, "```", "",
        ollama, "", "```bash", f"cd {folder}", f"ollama create {tag} -f Modelfile",
        f"ollama run {tag}", "```", "",
        studio, "",
        "With QuantDesk (CPU; no extra packages):", "", "```bash",
        f"quantdesk chat {folder}", f"quantdesk eval {path}", "```"])


def _load_section(fmt: str, folder: str) -> str:
    py = (f'from transformers import AutoModelForCausalLM, AutoTokenizer\n\n'
          f'model = AutoModelForCausalLM.from_pretrained("{folder}", device_map="auto")\n'
          f'tokenizer = AutoTokenizer.from_pretrained("{folder}")\n')
    need = {
        "gptq": "`pip install gptqmodel optimum` (transformers loads GPTQ through them)",
        "awq": "`pip install gptqmodel accelerate` (transformers 5 loads AWQ GEMM through "
               "them; older versions used autoawq)",
        "compressed-tensors": "`pip install compressed-tensors` (it decompresses the weights "
                              "on load, also on CPU)",
    }.get(fmt, "nothing beyond transformers")
    lines = [f"With transformers: {need}.", "", "```python", py.rstrip(), "```", ""]
    if fmt in ("gptq", "awq", "compressed-tensors"):
        lines += ["With vLLM (GPU):", "", "```bash", f"vllm serve {folder}", "```", ""]
    lines += ["With QuantDesk (CPU, dequantized; no extra packages):", "", "```bash",
              f"quantdesk chat {folder}", f"quantdesk eval {folder}", "```"]
    return "\n".join(lines)


def _measured(result: JobResult) -> list[str]:
    rows = []
    q = result.quality
    ppl, ppl_src = (q.ppl, q.ppl_source) if q is not None else (None, None)
    if ppl is not None:
        rel = f" ({(ppl / ppl_src - 1) * 100:+.1f}%)" if ppl_src else ""
        src = f", source {ppl_src:.3f}{rel}" if ppl_src is not None else ""
        rows.append(f"| perplexity (built-in evaluation text) | {ppl:.3f}{src} |")
    else:
        rows.append("| perplexity | not measured |")
    size, size_src = ((result.sizes.bytes, result.sizes.source_bytes)
                      if result.sizes is not None else (None, None))
    if size is not None:
        rel = f" ({size / size_src * 100:.0f}% of the source's {format_size(size_src)})" \
            if size_src else ""
        rows.append(f"| size of the weight files | {format_size(size)}{rel} |")
    else:
        rows.append("| size of the weight files | not measured |")
    for seconds, label in ((result.quantize_seconds, "quantization time"),
                           (result.seconds, "total time")):
        if seconds is not None:
            rows.append(f"| {label} | {float(seconds):.1f} s |")
    if q is None:
        return rows
    if q.kld_mean is not None:
        p99 = q.kld_p99 if q.kld_p99 is not None else float("nan")
        rows.append(f"| KL divergence vs source (mean / 99th percentile) | "
                    f"{q.kld_mean:.4f} / {p99:.4f} |")
    if q.top1_agree is not None:
        rows.append(f"| top-1 agreement with the source | {q.top1_agree:.1f} % |")
    if q.verdict:
        why = "; ".join(q.reasons)
        rows.append(f"| quality verdict | **{q.verdict}**{f' ({why})' if why else ''} |")
    return rows


_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_HF_CACHE_FOLDER = re.compile(r"models--([\w.-]+?)--([\w.-]+)[/\\]snapshots[/\\]")


def base_model_of(source: str) -> str | None:
    """The Hub id a model source stands for: an org/name id that is not a local folder, or a
    snapshot folder of the Hugging Face cache (…/models--org--name/snapshots/<commit>);
    None for any other folder (no Hub id is guessed)."""
    cached = _HF_CACHE_FOLDER.search(source + "/")
    if cached:
        return f"{cached.group(1)}/{cached.group(2)}"
    return source if _HUB_ID.match(source) and not Path(source).exists() else None


def model_card(job: JobSpec, info: Any, result: JobResult) -> str:
    """The README.md text (see the module docstring for what `result` may hold)."""
    name = getattr(info, "name", None) or result.model or job.model
    source = str(getattr(info, "source", None) or job.model)
    fmt = result.export.format or job.export_format
    ckpt = result.export.checkpoint_format or fmt
    modules = result.export.modules
    schemes = modules.get("schemes") or {}
    bits = sorted({int(s["bits"]) for s in schemes.values()}) or [job.scheme.bits]
    gguf = result.gguf if fmt == "gguf" else None
    if gguf is not None:
        tags = ["quantized", "quantdesk", "gguf", gguf.type]
    else:
        tags = ["quantized", "quantdesk", FORMAT_TAGS.get(fmt, fmt),
                *(f"{b}-bit" for b in bits)]
    library = "gguf" if fmt == "gguf" else "transformers"
    front = ["---", f"library_name: {library}", "tags:", *(f"- {t}" for t in tags)]
    base = base_model_of(source)
    if base:
        # the Hub lists the output under the source's "Quantizations" by these two
        front += [f"base_model: {base}", "base_model_relation: quantized"]
    front.append("---")

    cal = result.calibration
    c = job.calibration
    n_samples, seq_len = (cal[0], cal[1]) if cal else (c.samples, c.seq_len)
    text = f"{c.source}, {n_samples} samples × {seq_len} tokens, seed {c.seed}"
    if gguf is not None:
        calibration = _gguf_calibration(job, gguf, text)
    elif job.method in ("gptq", "awq"):
        calibration = text
    else:
        calibration = f"not used by {job.method.upper()} (only for measuring)"
    if gguf is not None:
        default = title = f"GGUF {gguf.type}"
    else:
        default = _scheme_label(job.scheme.bits, job.scheme.group_size, job.scheme.sym)
        title = f"{job.method.upper()} {job.scheme.label} ({fmt})"
    method = f"{METHOD_NAMES.get(job.method, job.method)}: {_method_settings(job, gguf)}"
    settings = [
        "| | |", "|---|---|",
        f"| source | `{source}` |",
        f"| method | {method} |",
        f"| {'type' if gguf is not None else 'default scheme'} | {default} |",
        f"| rules | {'; '.join(_gguf_rules(gguf) if gguf else _rules(job)) or 'none'} |",
        f"| calibration | {calibration} |",
        (f"| format | GGUF file `{gguf.file}` (llama.cpp) |" if gguf is not None else
         f"| format | {fmt} (checkpoint format `{ckpt}`) |"),
        f"| quantizer | QuantDesk {qtapp.__version__} |",
    ]
    module_rows = ["| scheme | modules | parameters | modules (pattern) |", "|---|---|---|---|"]
    for label, s in schemes.items():
        module_rows.append(f"| {label} | {s['modules']} | {s['params'] / 1e6:,.2f} M | "
                           f"{', '.join(f'`{p}`' for p in s['patterns'])} |")
    floats = modules.get("float_linears") or []
    if floats:
        module_rows.append(f"| 16-bit | {len(floats)} | | "
                           f"{', '.join(f'`{p}`' for p in floats)} |")
    if gguf is not None and gguf.tensor_types:
        module_rows = ["| GGUF tensor type | tensors |", "|---|---|", *(
            f"| {t} | {n} |" for t, n in sorted(gguf.tensor_types.items(),
                                                key=lambda kv: -kv[1]))]
    elif not schemes:
        module_rows = ["Per-module details were not recorded."]

    parts = [
        "\n".join(front), "",
        f"# {name} — {title}", "",
        f"Quantized on the user's own machine by QuantDesk {qtapp.__version__} from `{source}`.",
        "",
        "## Method and settings", "", "\n".join(settings), "",
        "## Modules", "", "\n".join(module_rows), "",
        "## Measured", "", "| | |", "|---|---|", "\n".join(_measured(result)), "",
        "## How to load", "",
        _gguf_load_section(gguf, FOLDER) if gguf is not None else _load_section(fmt, FOLDER),
        "",
    ]
    notes = result.export.notes
    if notes:
        parts += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(parts)


def write_model_card(out_dir: Path, job: JobSpec, info: Any, result: JobResult) -> Path:
    """Write README.md into `out_dir` and return its path."""
    path = Path(out_dir) / "README.md"
    path.write_text(model_card(job, info, result), encoding="utf-8")
    return path
