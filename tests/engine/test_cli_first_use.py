"""The command line as a newcomer meets it (issue 22, item 5): the summary's quality verdict,
an existing --out refused first, flags named as typed, one list of bit widths, and
`recommend demo` from the demo's config alone. (The importance matrix out of the way of
OUT/*.gguf and `chat OUT`: test_export_model_card.py, on a real GGUF job.)"""

from __future__ import annotations

import io
import json

import pytest

from qtapp.cli import build_parser, main
from qtapp.commands.quantize import ProgressPrinter
from qtapp.engine import events as ev
from qtapp.engine.config import BITS
from qtapp.engine.results import ExportResult, JobResult, Quality


@pytest.fixture()
def isolated(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("QUANTDESK_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _stderr_error(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_summary_prints_the_quality_verdict_the_card_has() -> None:
    result = JobResult(model="m", source="/m", method="gptq",
                       export=ExportResult(format="gptq"),
                       quality=Quality(ppl=11.61, ppl_source=10.0, verdict="degraded",
                                       reasons=["perplexity +16.1 % over the source"]))
    stream = io.StringIO()
    ProgressPrinter(stream)(ev.Result(out="/o", seconds=3.0, summary=result.to_dict()))
    lines = stream.getvalue().splitlines()
    assert "  quality degraded: perplexity +16.1 % over the source" in lines, lines


def test_existing_out_is_refused_before_the_model_is_read(tmp_path, isolated, monkeypatch,
                                                          capfd) -> None:
    """Exit 2, the command's prefix, and --overwrite named; the model is never resolved (the
    demo would be built first: minutes on first use)."""
    from qtapp.engine.model import sources

    def no(*_a, **_k):
        raise AssertionError("the model was read before --out was checked")

    monkeypatch.setattr(sources, "resolve_model", no)
    out = tmp_path / "out"
    out.mkdir()
    code = main(["quantize", "--model", "demo", "--method", "gptq", "--out", str(out)])
    line = _stderr_error(capfd.readouterr().err)
    assert code == 2
    assert line.startswith("quantdesk quantize: error: the output ") and "--overwrite" in line


@pytest.mark.parametrize(("flags", "expected"), [
    (["--bits", "16"], ("quantdesk quantize: error: --bits: 16 is not allowed; choose one "
                        "of 2, 3, 4, 5, 6, 7, 8")),
    (["--group-size", "100"], "quantdesk quantize: error: --group-size: 100 is not allowed"),
])
def test_a_bad_scheme_flag_is_named_as_typed(flags, expected, tmp_path, isolated, capfd):
    code = main(["quantize", "--model", "demo", "--method", "rtn", "--out",
                 str(tmp_path / "out"), *flags])
    line = _stderr_error(capfd.readouterr().err)
    assert code == 2
    assert line.startswith(expected), line
    assert "scheme" not in line and "/" not in line.split(":")[2], line


def test_command_line_lists_the_engines_bit_widths() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    bits = next(a for a in sub.choices["quantize"]._actions if a.dest == "bits")
    assert f"{', '.join(map(str, BITS))}" in bits.help


def test_recommend_demo_answers_from_the_config_without_building_it(isolated, monkeypatch,
                                                                    capsys) -> None:
    """With an empty cache, `recommend demo` reads the demo's shape from its GGUF file's
    metadata and never converts the model (the demo's figures: 30 blocks, 134,515,008
    parameters, the count of its safetensors)."""
    from qtapp.engine.model import sources

    def no(*_a, **_k):
        raise AssertionError("the demo model was built for a recommendation")

    monkeypatch.setattr(sources, "_convert_demo", no)
    assert main(["recommend", "demo", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    demo = next(r for r in rows if r["label"] == sources.DEMO_NAME)
    assert demo["n_params"] == 134_515_008
    assert not (isolated / "models" / sources.DEMO_NAME).exists()


def test_demo_config_from_the_gguf_matches_the_built_folder(demo_dir, isolated) -> None:
    """The config read without building (empty cache) is the built folder's config.json."""
    from qtapp.engine.model.sources import demo_config

    config, n_params = demo_config()
    built = json.loads((demo_dir / "config.json").read_text(encoding="utf-8"))
    for key in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings",
                "rms_norm_eps", "architectures", "model_type"):
        assert config[key] == built[key], key
    assert n_params == 134_515_008
