"""The Hub inside QuantDesk (qtapp.engine.hub, qtapp.engine.model.hub_files) against a local
Hub (tests/hub_fixture.py): search, fit verdicts, offline, download with cut / resume /
cancel / gated / disk refusal, and resolve_model through the same download."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from qtapp.engine.errors import Cancelled, UserError
from qtapp.engine.hub.download import (
    HubAccessError,
    HubUnavailable,
    check_disk,
    download,
    plan_download,
)
from qtapp.engine.hub.search import cached_models, search_models, with_full_config
from qtapp.engine.hub.verdicts import compat_verdict, fit_verdicts
from qtapp.engine.model import hub_files
from tests.hub_fixture import GRANTED, FakeRepo, hub_server  # noqa: F401 - the fixture "hub"
from tests.shapes import GiB, hardware
from tests.tiny_models import build_tiny_model

# config.json of Qwen2.5-0.5B-Instruct and of Llama-3.3-70B-Instruct (the widths that matter)
QWEN_05B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
            "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
            "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True}
LLAMA_70B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
             "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
             "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False}
Q4_K_M_BPW = 4.85  # llama.cpp's bits per weight of Q4_K_M (its quantize tool's table)


def _json_repo(repo_id: str, config: dict, params: int, **kw) -> FakeRepo:
    import json

    return FakeRepo(repo_id, {"config.json": json.dumps(config).encode(),
                              "model.safetensors": b"\0" * 16}, params=params, **kw)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict[str, bytes]:
    """A real tiny model's files (resolve_model checks them), plus the files a Hub repo
    often carries that quantizing must never fetch."""
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny") / "m")
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    files.update({"pytorch_model.bin": b"PICKLE" * 1000, "original/consolidated.00.pth": b"x",
                  "onnx/model.onnx": b"onnx", "gguf/model-Q4_K_M.gguf": b"GGUF",
                  "consolidated.safetensors": b"dup", "README.md": b"# card",
                  "added_tokens.json": b""})  # an empty file is a file too
    return files


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------ search


def test_search_gives_params_licence_gated_and_verdicts(hub):
    hub.add(_json_repo("Qwen/Qwen2.5-0.5B-Instruct", QWEN_05B, 494_032_768, downloads=900,
                       likes=10))
    hub.add(_json_repo("meta-llama/Llama-3.3-70B-Instruct", LLAMA_70B, 70_553_706_496,
                       downloads=500, likes=99, license="llama3.3"))
    hub.add(_json_repo("someone/unrelated", QWEN_05B, 1, downloads=10_000))
    found = search_models("instruct", sort="downloads", timeout=5)
    assert [m.repo_id for m in found] == ["Qwen/Qwen2.5-0.5B-Instruct",
                                          "meta-llama/Llama-3.3-70B-Instruct"]
    small, large = found
    assert small.params == 494_032_768 and small.size_bytes == 2 * 494_032_768
    assert large.gated is False and small.license == "apache-2.0" and large.license == "llama3.3" and large.downloads == 500
    assert large.last_modified is not None and large.last_modified.year == 2026
    assert not small.cached
    query = hub.requests("GET", "/api/models?")[0][1]
    assert "pipeline_tag=text-generation" in query and "expand=safetensors" in query
    # the search answer has a trimmed config; the verdicts need config.json itself
    assert "(from the parameter count)" in fit_verdicts(small, hardware())[0].text
    small, large = with_full_config(small), with_full_config(large)
    assert hub.requests("GET", "/resolve/") and all(
        "config.json" in p for _, p, _ in hub.requests("GET", "/resolve/"))

    machine = hardware()  # 32 GiB RAM, no GPU
    gguf_small = fit_verdicts(small, machine)[0]
    assert gguf_small.label == "GGUF Q4_K_M" and gguf_small.fits is True
    assert gguf_small.text.endswith("runs in RAM")
    gguf_large = fit_verdicts(large, machine)[0]
    assert gguf_large.fits is False and "too large" in gguf_large.text
    # the size shown is llama.cpp's Q4_K_M bits per weight times the parameters (±3 %)
    shown = float(gguf_large.text.split("≈ ")[1].split(" GiB")[0])
    assert shown == pytest.approx(70_553_706_496 * Q4_K_M_BPW / 8 / GiB, rel=0.03)
    assert {v.label for v in fit_verdicts(large, machine)} == {
        "GGUF Q4_K_M", "GGUF Q8_0", "GPTQ W4", "AWQ W4"}
    # on a 24 GB card the small model's GPTQ output runs on the GPU, with a long context
    gptq = next(v for v in fit_verdicts(small, hardware(24)) if v.method == "gptq")
    assert gptq.fits and "on the GPU: fits with" in gptq.text and "k context" in gptq.text
    # a machine that is too small says so for the small model too (the verdict is computed)
    tiny_machine = hardware()
    object.__setattr__(tiny_machine, "ram_total", GiB // 4)
    object.__setattr__(tiny_machine, "ram_available", GiB // 4)
    assert fit_verdicts(small, tiny_machine)[0].fits is False

    # a gated model whose licence is not accepted: config.json is refused, the verdicts
    # count from the parameters of the search answer
    hub.add(_json_repo("meta-llama/Llama-3.1-8B", {**LLAMA_70B, "num_hidden_layers": 32},
                       8_030_261_248, gated="manual"))
    (gated,) = search_models("Llama-3.1-8B")
    gated = with_full_config(gated)
    assert gated.gated == "manual" and "hidden_size" not in gated.config
    assert hub.requests("GET", "Llama-3.1-8B/resolve/")
    v = fit_verdicts(gated, machine)[0]
    assert v.fits is True and "(from the parameter count)" in v.text
    shown = float(v.text.split("≈ ")[1].split(" GiB")[0])
    assert shown == pytest.approx(8_030_261_248 * Q4_K_M_BPW / 8 / GiB, rel=0.03)

    assert compat_verdict(small).fits is True and "qwen2: supported" in compat_verdict(small).text
    mamba = _json_repo("x/mamba", {"model_type": "mamba",
                                   "architectures": ["MambaForCausalLM"]}, 1)
    hub.add(mamba)
    (m,) = search_models("mamba")
    verdict = compat_verdict(m)
    assert verdict.fits is False and verdict.text.startswith("mamba not supported yet: ")


def test_search_of_a_server_that_never_answers_times_out(hub):
    hub.hang = True
    t0 = time.monotonic()
    with pytest.raises(HubUnavailable) as e:
        search_models("qwen")
    elapsed = time.monotonic() - t0
    assert elapsed < 7, elapsed  # the default timeout is 5 s
    assert "timed out" in str(e.value) and hub.url in str(e.value)


def test_offline_lists_the_cache_and_says_offline(hub, tiny_files, monkeypatch):
    hub.add(FakeRepo("org/tiny", dict(tiny_files)))
    download(plan_download("org/tiny"))
    n_requests = len(hub.log)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailable, match="Offline"):
        search_models("tiny")
    assert len(hub.log) == n_requests  # offline: nothing was asked
    (m,) = cached_models()
    assert m.repo_id == "org/tiny" and m.cached and m.config["model_type"] == "llama"
    weights = len(tiny_files["model.safetensors"])
    assert m.size_bytes == weights and m.params and m.params * 4 == pytest.approx(weights,
                                                                                  rel=0.05)


# ------------------------------------------------------------------------------ download


def test_download_fetches_only_what_quantizing_needs(hub, tiny_files):
    hub.add(FakeRepo("org/tiny", dict(tiny_files)))
    plan = plan_download("org/tiny")
    names = {n for n, _ in plan.files}
    assert "model.safetensors" in names and "config.json" in names and "tokenizer.json" in names
    never = {"pytorch_model.bin", "original/consolidated.00.pth", "onnx/model.onnx",
             "gguf/model-Q4_K_M.gguf", "consolidated.safetensors"}
    assert never <= set(plan.skipped) and not never & names
    folder = download(plan)
    for name in never:
        assert not hub.requests(contains=name), name
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def test_cut_download_resumes_with_range_and_is_byte_identical(hub, tiny_files):
    from qtapp.engine.model.sources import resolve_model

    hub.add(FakeRepo("org/tiny", dict(tiny_files)))
    size = len(tiny_files["model.safetensors"])
    hub.cut_after = size // 3
    seen: list = []
    folder = download(plan_download("org/tiny"), on_progress=seen.append)
    gets = [h for _, p, h in hub.requests("GET", "model.safetensors")]
    assert [h.get("Range") for h in gets] == [None, f"bytes={size // 3}-"]
    for p in folder.iterdir():
        assert _sha(p.read_bytes()) == _sha(tiny_files[p.name]), p.name
    assert seen[-1].done_bytes == seen[-1].total_bytes == sum(
        len(tiny_files[p.name]) for p in folder.iterdir())
    # the cache layout is huggingface-hub's: resolve_model finds it without asking the Hub
    n = len(hub.log)
    info = resolve_model("org/tiny")
    assert info.path == folder and len(hub.log) == n


def test_a_file_damaged_on_the_way_is_refused(hub, tiny_files, monkeypatch):
    hub.add(FakeRepo("org/tiny", dict(tiny_files)))
    plan = plan_download("org/tiny")
    hub.repos["org/tiny"].files["model.safetensors"] = b"\1" + tiny_files["model.safetensors"][1:]
    with pytest.raises(UserError, match="arrived damaged"):
        download(plan)
    blobs = Path(hub_files.hub_cache_dir()) / "models--org--tiny" / "blobs"
    assert not (blobs / plan.blobs["model.safetensors"][0]).exists()


def _cancel_once_started(partial: Path, delay: float) -> tuple[threading.Event, list[float]]:
    """A cancel flag set ``delay`` s after the first bytes of ``partial`` are on disk, and
    when it was set."""
    flag, when = threading.Event(), []

    def watch() -> None:
        while not (partial.exists() and partial.stat().st_size > 0):
            time.sleep(0.02)
        time.sleep(delay)
        when.append(time.monotonic())
        flag.set()

    threading.Thread(target=watch, daemon=True).start()
    return flag, when


@pytest.mark.parametrize("slow", [0.02, 5.0], ids=["streaming", "stalled"])
def test_cancel_returns_within_a_second_and_the_next_download_resumes(hub, slow):
    data = os.urandom(8 * 2**20)
    hub.add(FakeRepo("org/big", {"config.json": b"{}", "model.safetensors": data}))
    plan = plan_download("org/big")
    # streaming: a 64 KiB piece every 20 ms (the whole file would take 2.6 s); stalled: one
    # piece, then 5 s of silence, during which the cancel comes
    hub.slow = slow
    partial = (Path(hub_files.hub_cache_dir()) / "models--org--big" / "blobs"
               / f"{plan.blobs['model.safetensors'][0]}.incomplete")
    cancel, asked = _cancel_once_started(partial, 0.3)
    with pytest.raises(Cancelled):
        download(plan, should_cancel=cancel.is_set)
    assert time.monotonic() - asked[0] < 1.0
    have = partial.stat().st_size
    assert 0 < have < len(data) and partial.read_bytes() == data[:have]

    hub.slow = 0.0
    folder = download(plan)
    assert hub.requests("GET", "model.safetensors")[-1][2].get("Range") == f"bytes={have}-"
    assert _sha((folder / "model.safetensors").read_bytes()) == _sha(data)
    assert not partial.exists()


@pytest.mark.parametrize(("token", "status"), [(None, 401), ("hf_not_granted", 403)])
def test_gated_model_names_the_licence_page(hub, tiny_files, token, status):
    hub.add(FakeRepo("meta-llama/tiny", dict(tiny_files), gated="manual"))
    plan = plan_download("meta-llama/tiny")
    with pytest.raises(HubAccessError) as e:
        download(plan, token=token)
    msg = str(e.value)
    assert f"{hub.url}/meta-llama/tiny" in msg and "hf auth login" in msg
    assert f"HTTP {status}" in msg and "accept" in msg
    folder = download(plan, token=GRANTED)
    assert (folder / "model.safetensors").read_bytes() == tiny_files["model.safetensors"]


def test_too_little_disk_is_refused_before_the_first_byte(hub, tiny_files, monkeypatch):
    hub.add(FakeRepo("org/tiny", dict(tiny_files)))
    plan = plan_download("org/tiny")
    monkeypatch.setattr(hub_files, "free_bytes", lambda folder: 10 * 2**20)
    with pytest.raises(UserError, match="needs .* of disk") as e:
        check_disk(plan)
    assert "10.0 MiB are free" in str(e.value) or "10 MiB are free" in str(e.value)
    with pytest.raises(UserError, match="of disk"):
        download(plan)
    assert not hub.requests(contains="/resolve/")
    monkeypatch.setattr(hub_files, "free_bytes", lambda folder: 100 * 2**30)
    check_disk(plan)  # enough room: no error


def test_resolve_model_downloads_through_the_same_implementation(hub, tiny_files):
    from qtapp.engine.model.sources import resolve_model

    hub.add(FakeRepo("org/tiny", dict(tiny_files)))
    hub.cut_after = 1000
    calls: list[tuple[int, int]] = []
    info = resolve_model("org/tiny", allow_download=True, progress=lambda d, t: calls.append(
        (d, t)))
    assert info.n_layers == 2 and calls[-1][0] == calls[-1][1] > 0
    assert any(h.get("Range") for _, _, h in hub.requests("GET", "/resolve/"))
    assert not hub.requests(contains="pytorch_model.bin")
    hub.add(FakeRepo("org/other", dict(tiny_files)))
    with pytest.raises(Cancelled):  # the window's cancel reaches the download
        resolve_model("org/other", allow_download=True, should_cancel=lambda: True)
    assert not hub.requests(contains="org/other/resolve/")


def test_unknown_repo_and_unreachable_hub_say_what_to_do(hub, monkeypatch):
    with pytest.raises(UserError, match="not found on .*HTTP 404"):
        plan_download("org/missing")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(HubUnavailable, match="Cannot reach http://127.0.0.1:9"):
        plan_download("org/missing")


# ------------------------------------------------------------------------------ publish


def _output_folder(tmp_path: Path, source: str) -> Path:
    """A QuantDesk output folder: weights, config, tokenizer, a sub-folder, and the model
    card a GPTQ job writes (with quality-gate figures)."""
    from types import SimpleNamespace

    from qtapp.engine.config import JobSpec
    from qtapp.engine.export.model_card import write_model_card
    from qtapp.engine.results import ExportResult, JobResult, Quality, Sizes

    out = tmp_path / "out"
    (out / "awq_search").mkdir(parents=True)
    (out / "config.json").write_text('{"model_type": "qwen2"}')
    (out / "model.safetensors").write_bytes(os.urandom(300_000))
    (out / "tokenizer.json").write_text("{}")
    (out / "awq_search" / "search.json").write_text("[]")
    job = JobSpec(model=source, method="gptq", out=str(out))
    result = JobResult(model="Qwen2.5-0.5B", source=source, method="gptq",
                       export=ExportResult(format="gptq", files=[]), scheme="W4 g128",
                       calibration=[128, 512], quantize_seconds=12.5,
                       sizes=Sizes(300_000, 1_000_000),
                       quality=Quality(ppl=12.3456, ppl_source=11.0, kld_mean=0.01234,
                                       kld_p99=0.2, top1_agree=91.25, verdict="good"))
    write_model_card(out, job, SimpleNamespace(name="Qwen2.5-0.5B", source=source), result)
    return out


def test_publish_commits_the_card_and_every_file(hub, tmp_path):
    from huggingface_hub import ModelCard

    from qtapp.engine.hub.publish import publish

    # the source was the Hugging Face cache's folder of Qwen/Qwen2.5-0.5B; the card is one
    # without the Hub metadata (as older QuantDesk wrote): publish finds the id from the path
    source = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B" / "snapshots" / ("a" * 40)
    source.mkdir(parents=True)
    out = _output_folder(tmp_path, str(source))
    card_file = out / "README.md"
    assert "base_model: Qwen/Qwen2.5-0.5B\n" in card_file.read_text()
    card_file.write_text("".join(ln for ln in card_file.read_text().splitlines(keepends=True)
                                 if not ln.startswith("base_model")))
    steps: list[str] = []
    url = publish(out, "tester/qwen-gptq", token="hf_write", on_progress=steps.append)
    assert url == f"{hub.url}/tester/qwen-gptq"
    repo = hub.repos["tester/qwen-gptq"]
    assert repo.private  # private by default
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    committed = {name for c in repo.commits for name in c["files"]}
    assert committed == files and "README.md" in files and "awq_search/search.json" in files
    for name in files:
        assert repo.files[name] == (out / name).read_bytes(), name
    card = ModelCard(repo.files["README.md"].decode())  # the Hub's own reader of the metadata
    assert card.data.base_model == "Qwen/Qwen2.5-0.5B"
    assert card.data.base_model_relation == "quantized"
    assert "quantdesk" in card.data.tags
    text = card.content
    assert "12.346" in text and "GPTQ" in text and "builtin" in text  # gate, method, calibration
    assert steps[-1] == "published"

    # published again (an update): the repository exists (409), the commit goes through
    publish(out, "tester/qwen-gptq", token="hf_write")
    assert len(repo.commits) >= 2


def test_publish_refusals_say_what_to_do(hub, tmp_path):
    from qtapp.engine.hub.publish import publish

    out = _output_folder(tmp_path, "Qwen/Qwen2.5-0.5B")
    with pytest.raises(UserError, match="hf auth login"):
        publish(out, "tester/x")  # no token stored (the fixture empties the token paths)
    other = tmp_path / "not-ours"
    other.mkdir()
    (other / "README.md").write_text("# someone's model\n")
    with pytest.raises(UserError, match="not a QuantDesk output"):
        publish(other, "tester/x", token="hf_write")
    with pytest.raises(UserError, match="not a valid repository name"):
        publish(out, "no-slash", token="hf_write")
    assert not hub.requests("POST")  # nothing was sent


# ------------------------------------------------------------------------------ command line


def test_cli_download_interrupted_then_resumed(hub, monkeypatch, capsys):
    from qtapp.cli import main
    from qtapp.commands import download as download_command

    data = os.urandom(2 * 2**20)
    hub.add(FakeRepo("org/big", {"config.json": b"{}", "model.safetensors": data}))
    hub.slow = 0.01
    real = download_command.DownloadPrinter.__call__

    def ctrl_c(self, p):  # Ctrl+C once the first bytes are in
        real(self, p)
        if p.done_bytes > 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(download_command.DownloadPrinter, "__call__", ctrl_c)
    assert main(["download", "org/big"]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    partial = next((Path(hub_files.hub_cache_dir()) / "models--org--big" / "blobs").glob(
        "*.incomplete"))
    have = partial.stat().st_size
    assert 0 < have < len(data)

    monkeypatch.setattr(download_command.DownloadPrinter, "__call__", real)
    hub.slow = 0.0
    assert main(["download", "org/big"]) == 0
    out = capsys.readouterr().out
    assert "already here" in out and "done: " in out
    folder = Path(out.split("done: ")[1].splitlines()[0])
    assert (folder / "model.safetensors").read_bytes() == data
    assert hub.requests("GET", "model.safetensors")[-1][2].get("Range") == f"bytes={have}-"


def test_cli_publish_and_search(hub, tmp_path, monkeypatch, capsys):
    from qtapp.cli import main

    out = _output_folder(tmp_path, "Qwen/Qwen2.5-0.5B")
    assert main(["publish", str(out), "--repo", "tester/q"]) == 2  # not logged in
    assert "hf auth login" in capsys.readouterr().err
    monkeypatch.setenv("HF_TOKEN", "hf_write")
    assert main(["publish", str(out), "--repo", "tester/q", "--public"]) == 0
    assert capsys.readouterr().out.strip() == f"{hub.url}/tester/q"
    assert not hub.repos["tester/q"].private
    assert main(["publish", str(tmp_path), "--repo", "tester/q"]) == 2
    assert "not a QuantDesk output" in capsys.readouterr().err

    hub.add(_json_repo("Qwen/Qwen2.5-0.5B-Instruct", QWEN_05B, 494_032_768, downloads=9))
    assert main(["hub", "search", "qwen2.5", "--verdicts"]) == 0
    text = capsys.readouterr().out
    assert "Qwen/Qwen2.5-0.5B-Instruct  494M parameters, 942.3 MiB, 9 downloads" in text
    assert "GGUF Q4_K_M ≈" in text and "qwen2: supported" in text


# ------------------------------------------------------------------------------ settings


def test_a_mirror_set_at_run_time_is_used(hub, monkeypatch):
    from qtapp.engine.hub.settings import endpoint, set_endpoint

    hub.add(_json_repo("Qwen/Qwen2.5-0.5B-Instruct", QWEN_05B, 494_032_768))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(HubUnavailable, match="127.0.0.1:9"):
        search_models("qwen")
    try:
        assert set_endpoint(hub.url + "/") == hub.url == endpoint()
        assert os.environ["HF_ENDPOINT"] == hub.url  # job workers inherit it
        assert [m.repo_id for m in search_models("qwen")] == ["Qwen/Qwen2.5-0.5B-Instruct"]
        with pytest.raises(UserError, match="not a Hub address"):
            set_endpoint("hf-mirror.com")
    finally:
        set_endpoint(None)


def test_the_system_proxy_carries_the_requests(hub, monkeypatch):
    """huggingface-hub's HTTP client (httpx) takes HTTP(S)_PROXY from the environment when it
    is created: the fixture, acting as the proxy, receives the absolute-URI requests for a
    Hub address that does not resolve."""
    from huggingface_hub.utils import close_session

    hub.add(_json_repo("Qwen/Qwen2.5-0.5B-Instruct", QWEN_05B, 494_032_768))
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.invalid")
    monkeypatch.setenv("HTTP_PROXY", hub.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    close_session()  # the next request makes a new client, which reads the environment
    try:
        assert [m.repo_id for m in search_models("qwen")] == ["Qwen/Qwen2.5-0.5B-Instruct"]
    finally:
        monkeypatch.delenv("HTTP_PROXY")
        close_session()
    assert hub.requests("GET")[-1][1].startswith("http://hub.invalid/api/models?")


# ------------------------------------------------------------------------------ local apps


def test_lmstudio_gets_the_publisher_model_layout(tmp_path, monkeypatch):
    from qtapp.engine.hub import local_apps

    monkeypatch.setattr(Path, "home", lambda: tmp_path / "home")
    gguf = tmp_path / "out" / "m.Q4_K_M.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + os.urandom(1000))
    assert local_apps.lmstudio_models_dir() is None
    with pytest.raises(UserError, match="lms import"):
        local_apps.open_in_lmstudio(gguf, "quantdesk", "m")
    (tmp_path / "home" / ".lmstudio").mkdir(parents=True)
    placed = local_apps.open_in_lmstudio(gguf, "quantdesk", "m-GGUF")
    assert placed == tmp_path / "home" / ".lmstudio" / "models" / "quantdesk" / "m-GGUF" / gguf.name
    assert placed.read_bytes() == gguf.read_bytes()
    assert placed.stat().st_ino == gguf.stat().st_ino  # a hard link, no second copy
    copied = local_apps.open_in_lmstudio(gguf, "quantdesk", "copy", link=False)
    assert copied.read_bytes() == gguf.read_bytes()
    assert copied.stat().st_ino != gguf.stat().st_ino


def test_ollama_runs_create_or_gives_the_command(tmp_path, monkeypatch):
    from qtapp.engine.gguf.llama_runtime import write_modelfile
    from qtapp.engine.hub import local_apps

    gguf = tmp_path / "out" / "m.Q4_K_M.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    write_modelfile(gguf.parent, gguf.name, "<|im_start|>{{ .Prompt }}")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert local_apps.ollama_path() is None
    with pytest.raises(UserError) as e:
        local_apps.add_to_ollama(gguf, "m-q4")
    assert f"ollama create m-q4 -f {gguf.parent / 'Modelfile'}" in str(e.value)
    text = local_apps.ollama_modelfile(gguf)
    assert text.startswith(f"FROM {gguf}\n") and 'PARAMETER stop "<|im_end|>"' in text

    # a stand-in `ollama` that records what it was asked and the Modelfile it was given
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "ollama"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\n/bin/cat "$4" > {tmp_path}/mf\n'
                    'echo success\n')
    fake.chmod(0o755)
    assert local_apps.add_to_ollama(gguf, "m-q4") == "success"
    assert (tmp_path / "args").read_text().split()[:3] == ["create", "m-q4", "-f"]
    assert (tmp_path / "mf").read_text() == text


def test_a_second_download_of_the_same_file_is_refused_not_interleaved(hub, tiny_files):
    from filelock import FileLock

    from qtapp.engine.errors import Busy

    hub.add(FakeRepo("org/tiny", dict(tiny_files)))
    plan = plan_download("org/tiny")
    digest = plan.blobs["model.safetensors"][0]
    lock = Path(hub_files.hub_cache_dir()) / ".locks" / "models--org--tiny" / f"{digest}.lock"
    lock.parent.mkdir(parents=True)
    # huggingface-hub's lock of this blob, held by "another" download
    with FileLock(str(lock)), pytest.raises(Busy, match="Another download is writing model"):
        download(plan)
    assert not hub.requests(contains="model.safetensors")
    folder = download(plan)  # free again
    assert (folder / "model.safetensors").read_bytes() == tiny_files["model.safetensors"]
