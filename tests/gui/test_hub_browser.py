"""The Hub browser on the model page: search results with the planner's fit verdicts, a Hub
that never answers, offline, download with progress, cancel and resume, a gated model, a
disk too small; the publish dialog and the GGUF hand-offs on the results page."""

from __future__ import annotations

import html
import json
import threading
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from hub_fixture import GRANTED, FakeRepo
from PySide6.QtCore import Qt, QTimer
from shapes import DEMO, LLAMA_7B, hardware
from tiny_models import build_tiny_model

from qtapp.engine.hub import search
from qtapp.engine.hub.search import HubModel, HubUnavailable
from qtapp.gui import theme
from qtapp.gui.format import format_size
from qtapp.gui.main_window import MainWindow


def hub_model(repo_id: str, config: dict | None, params: int | None, **kw) -> HubModel:
    base = {"downloads": 123_456, "likes": 10, "license": "apache-2.0", "gated": False,
            "last_modified": datetime(2025, 3, 1), "cached": False, "size_bytes": None}
    return HubModel(repo_id, params, config=config, **{**base, **kw})


LLAMA_70B = {**LLAMA_7B, "hidden_size": 8192, "intermediate_size": 28672,
             "num_attention_heads": 64, "num_key_value_heads": 8, "num_hidden_layers": 80,
             "vocab_size": 128256}
MODELS = [hub_model("HuggingFaceTB/SmolLM2-135M-Instruct", DEMO, 134_515_008),
          hub_model("meta-llama/Llama-3.1-70B", LLAMA_70B, 70_553_706_496)]


@pytest.fixture
def browser(window: MainWindow):
    window.state.set_hardware(hardware(8))  # an 8 GB card, 32 GiB of RAM
    page = window.page("model")
    window.go("model")
    page.radio["hub"].setChecked(True)
    return page.hub_browser


def fixture_repos(hub, tiny_files: dict[str, bytes] | None = None) -> None:
    """The demo's config (fits everywhere), a gated 70B (its config.json is refused: the
    verdicts count from the parameters), a family QuantDesk does not know, and a tiny real
    model to download."""
    hub.add(json_repo("HuggingFaceTB/SmolLM2-135M-Instruct", DEMO, 134_515_008,
                      downloads=900_000))
    hub.add(json_repo("meta-llama/Llama-3.1-70B", LLAMA_70B, 70_553_706_496,
                      downloads=50_000, license="llama3.1", gated="manual"))
    hub.add(json_repo("someone/mamba-test", {"model_type": "mamba",
                                             "architectures": ["MambaForCausalLM"]},
                      None, downloads=12))
    if tiny_files is not None:
        hub.add(FakeRepo("tester/tiny-llama", dict(tiny_files), params=500_000, downloads=3))


def json_repo(repo_id: str, config: dict, params: int | None, **kw) -> FakeRepo:
    return FakeRepo(repo_id, {"config.json": json.dumps(config).encode(),
                              "model.safetensors": b"\0" * 16}, params=params, **kw)


def test_search_lists_models_with_fit_verdicts(browser, hub, qtbot) -> None:
    fixture_repos(hub)
    browser.query.setText("")
    browser.sort.setCurrentIndex(1)  # most liked
    browser.search()
    qtbot.waitUntil(lambda: browser.search_task is None, timeout=15000)
    assert browser.table.rowCount() == 3, browser.status.text()
    (_, query, _), *_ = hub.requests("GET", "/api/models?")
    assert "sort=likes" in query and "pipeline_tag=text-generation" in query
    header, *rows = browser.table_text()
    assert header == ["Model", "Parameters", "Downloads", "Licence", "Updated", "Q4_K_M",
                      "Q8_0", "GPTQ", "AWQ", "Supported"]
    assert [r[:5] for r in rows] == [
        ["HuggingFaceTB/SmolLM2-135M-Instruct", "135M", "900k", "apache-2.0", "2026-11-30"],
        ["meta-llama/Llama-3.1-70B", "70.6B", "50k", "llama3.1 · gated", "2026-11-30"],
        ["someone/mamba-test", "—", "12", "apache-2.0", "2026-11-30"]]
    # every method fits the demo on an 8 GB card; none fits the 70B; the unknown family
    # has no widths (its verdicts are unknown) and is not supported
    assert [r[5:] for r in rows] == [["✓", "✓", "✓", "✓", "✓ yes"],
                                     ["✗", "✗", "✗", "✗", "✓ yes"],
                                     ["?", "?", "?", "?", "✗ no"]]
    assert browser.table.item(1, 5).foreground().color().name() == theme.BAD
    assert browser.table.item(0, 5).foreground().color().name() == theme.GOOD
    # the demo's config.json was read (the search answer's is trimmed) for its verdicts
    assert hub.requests("GET", "SmolLM2-135M-Instruct/resolve/")

    browser.table.selectRow(0)
    assert browser.window().page("model").hub_edit.text() == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    detail = browser.detail.text()
    assert "GGUF Q4_K_M ≈ 77.8 MiB: runs on the GPU" in detail
    assert "GPTQ W4 ≈ 146.6 MiB on the GPU: fits with 128k context" in detail
    assert "llama: supported (RTN, GPTQ, AWQ, GGUF)" in detail
    browser.table.selectRow(1)
    detail = browser.detail.text()
    assert "GGUF Q4_K_M ≈ 39.84 GiB (from the parameter count): too large: needs" in detail
    assert "the authors approve each request" in detail
    assert browser.table.item(1, 5).toolTip().startswith("GGUF Q4_K_M ≈ 39.84 GiB")
    assert browser.table.horizontalHeaderItem(5).toolTip() == "Fits this machine: GGUF Q4_K_M"
    browser.table.selectRow(2)
    assert "mamba not supported yet" in browser.detail.text()


def test_a_hub_that_never_answers_times_out_and_says_so(browser, hub, qtbot) -> None:
    hub.hang = True  # accepts the connection, never answers
    browser.timeout_s = 1.0
    browser.search()
    qtbot.waitUntil(lambda: browser.search_task is None, timeout=8000)
    assert "did not answer within 1 s (timed out)" in browser.status.text()
    assert "local cache" in browser.status.text()


def test_a_hub_that_never_answers_leaves_the_window_responsive(browser, monkeypatch,
                                                               qtbot) -> None:
    release = threading.Event()

    def hang(query, **kw):
        release.wait(30)  # longer than any timeout: the network never answers
        return list(MODELS)

    cached = hub_model("HuggingFaceTB/SmolLM2-135M-Instruct", DEMO, 134_515_008,
                       cached=True, downloads=None)
    monkeypatch.setattr(search, "search_models", hang)
    monkeypatch.setattr(search, "cached_models", lambda: [cached])
    browser.timeout_s = 1.0
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(50)
    try:
        browser.search()
        qtbot.wait(300)
        qtbot.keyClicks(browser.author, "abc")  # the window takes input while it waits
        assert browser.author.text() == "abc"
        qtbot.waitUntil(lambda: "did not answer in 1 s" in browser.status.text(),
                        timeout=5000)
        assert len(ticks) >= 10  # the event loop kept running while the search hung
        qtbot.waitUntil(lambda: browser.table.rowCount() == 1, timeout=5000)
    finally:
        release.set()
        timer.stop()
    assert "local cache" in browser.status.text()
    assert browser.table_text()[1][0].endswith("in the cache")
    qtbot.wait(200)  # the hung search's late answer is dropped
    assert browser.table.rowCount() == 1


def test_offline_lists_the_cache_and_says_why(browser, monkeypatch, qtbot) -> None:
    def offline(query, **kw):
        raise HubUnavailable("https://hub.example is not reachable (offline).")

    monkeypatch.setattr(search, "search_models", offline)
    monkeypatch.setattr(search, "cached_models", lambda: [MODELS[0]])
    browser.search()
    qtbot.waitUntil(lambda: browser.search_task is None, timeout=10000)
    assert browser.status.text() == ("⚠ https://hub.example is not reachable (offline). "
                                     "Showing the 1 models in the local cache.")
    assert browser.table.rowCount() == 1


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict[str, bytes]:
    """A real tiny Llama's files (the model page loads them), and a pickle copy of the
    weights that quantizing never needs."""
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny") / "m")
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    files["pytorch_model.bin"] = b"PICKLE" * 1000
    return files


def needed(files: dict[str, bytes]) -> int:
    """Bytes a download of these files fetches: all but the pickle copy."""
    return sum(len(data) for name, data in files.items() if name != "pytorch_model.bin")


def find_and_select(browser, qtbot, query: str) -> None:
    browser.query.setText(query)
    browser.search()
    qtbot.waitUntil(lambda: browser.search_task is None, timeout=15000)
    assert browser.table.rowCount() == 1, browser.status.text()
    browser.table.selectRow(0)
    assert browser.download_button.isEnabled()


def test_download_with_progress_cancel_resume_then_the_page_uses_it(
        browser, hub, tiny_files, qtbot) -> None:
    fixture_repos(hub, tiny_files)
    find_and_select(browser, qtbot, "tiny")
    hub.slow = 0.3  # 64 KiB every 0.3 s: a download that takes a few seconds
    qtbot.mouseClick(browser.download_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: browser.last_progress is not None
                    and browser.last_progress.done_bytes > 64 * 1024, timeout=10000)
    assert browser.progress.isVisible() and 0 < browser.progress.value() < 1000
    text = browser.download_status.text()
    assert f" of {format_size(needed(tiny_files))} · " in text, text
    assert "/s · " in text and " left · model.safetensors" in text, text
    assert browser.cancel_button.isVisible() and not browser.download_button.isEnabled()
    qtbot.mouseClick(browser.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: browser.download_task is None, timeout=3000)  # within ~1 s
    assert "Download stopped" in browser.download_status.text()
    assert browser.download_button.text() == "Resume download"
    assert not browser.progress.isVisible()
    got = len([r for r in hub.requests("GET", "model.safetensors")])

    hub.slow = 0.0
    page = browser.window().page("model")
    with qtbot.waitSignal(browser.downloaded, timeout=15000) as done:
        qtbot.mouseClick(browser.download_button, Qt.MouseButton.LeftButton)
    repo_id, folder = done.args
    assert repo_id == "tester/tiny-llama"
    resumed = hub.requests("GET", "model.safetensors")[got:]
    assert resumed and resumed[0][2].get("Range", "").startswith("bytes=")  # not from 0
    assert resumed[0][2]["Range"] != "bytes=0-"
    for name, data in tiny_files.items():  # byte-identical; the pickle copy never fetched
        assert (folder / name).is_file() == (name != "pytorch_model.bin"), name
        if name != "pytorch_model.bin":
            assert (folder / name).read_bytes() == data, name
    assert "✓ Downloaded tester/tiny-llama" in browser.download_status.text()
    assert browser.download_button.text() == "Download"
    # the model page reads it as a cached Hub model
    assert page.source_kind() == "hub" and page.hub_edit.text() == "tester/tiny-llama"
    qtbot.waitUntil(lambda: browser.window().state.model is not None, timeout=60000)
    assert browser.window().state.model.path == folder


@pytest.mark.parametrize(("token", "status"), [(None, 401), ("hf_not_granted", 403)])
def test_a_gated_model_shows_the_licence_page(browser, hub, tiny_files, qtbot, monkeypatch,
                                              token, status) -> None:
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    hub.add(FakeRepo("meta-llama/tiny-gated", dict(tiny_files), gated="manual"))
    find_and_select(browser, qtbot, "tiny-gated")
    qtbot.mouseClick(browser.download_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: browser.download_task is None, timeout=10000)
    page = f"{hub.url}/meta-llama/tiny-gated"
    text = browser.download_status.text()
    assert f'<a href="{page}">{page}</a>' in text, text
    assert f"HTTP {status}" in text and "hf auth login" in text
    assert browser.download_status.openExternalLinks()


def test_a_disk_too_small_is_refused_before_any_byte(browser, hub, tiny_files, qtbot,
                                                     monkeypatch) -> None:
    from qtapp.engine.model import hub_files

    hub.add(FakeRepo("tester/tiny-llama", dict(tiny_files)))
    find_and_select(browser, qtbot, "tiny")
    monkeypatch.setattr(hub_files, "free_bytes", lambda folder: 10 * 2**20)
    asked = len(hub.log)  # the search read config.json for the verdicts
    qtbot.mouseClick(browser.download_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: browser.download_task is None, timeout=10000)
    text = browser.download_status.text()
    assert f"Downloading 'tester/tiny-llama' needs {format_size(needed(tiny_files))} of disk" \
        in text and "10.0 MiB are free" in text, text
    assert browser.last_progress is None
    assert [r[1] for r in hub.log[asked:]] == ["/api/models/tester/tiny-llama?blobs=true"]
    # the file list was asked for, not one byte of a file
    assert browser.download_button.text() == "Download"


# ------------------------------------------------------------------ the results page


SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def gguf_run(window: MainWindow, tmp_path: Path) -> Path:
    """A finished GGUF run in the results, its output folder on disk; returns the file."""
    from qtapp.engine.config import GGUFOptions, JobSpec
    from qtapp.engine.export.model_card import write_model_card
    from qtapp.engine.results import ExportResult, GGUFDetails, JobResult, Quality, Sizes
    from qtapp.gui.results_store import RunRecord

    out = tmp_path / "SmolLM2-135M-Instruct-Q4_K_M"
    out.mkdir()
    gguf = out / "SmolLM2-135M-Instruct-Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF" + bytes(1000))
    (out / "Modelfile").write_text(f"FROM ./{gguf.name}\nPARAMETER stop <|im_end|>\n")
    result = JobResult(model="SmolLM2-135M-Instruct", source=SMOL, method="gguf",
                       export=ExportResult(format="gguf", files=[gguf.name, "Modelfile",
                                                                 "README.md"]),
                       sizes=Sizes(1004, 2000), out=str(out),
                       quality=Quality(ppl=10.83, ppl_source=10.68, kld_mean=0.0183,
                                       kld_p99=0.124, top1_agree=92.6, verdict="good"),
                       gguf=GGUFDetails(type="Q4_K_M", file=gguf.name))
    job = JobSpec(model=SMOL, method="gguf", out=str(out), gguf=GGUFOptions(type="Q4_K_M"))
    write_model_card(out, job, SimpleNamespace(name="SmolLM2-135M-Instruct", source=SMOL),
                     result)  # the card the job writes
    window.state.results.add(RunRecord.from_result(result, {}))
    window.state.results_changed.emit()
    results = window.page("results")
    window.go("results")
    results.table.selectRow(1)  # row 0 is the original
    assert results.selected()[0] == "run"
    return gguf


def test_gguf_run_without_ollama_shows_the_command(window, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    gguf = gguf_run(window, tmp_path)
    results = window.page("results")
    assert results.lmstudio_button.isEnabled() and results.publish_button.isEnabled()
    assert not results.ollama_button.isEnabled()
    text = results.share_status.text()
    assert "Ollama is not on the PATH" in text
    assert (f"ollama create smollm2-135m-instruct-q4_k_m -f {gguf.parent.resolve()}/Modelfile"
            in text), text


def test_add_to_ollama_runs_ollama_create(window, tmp_path, monkeypatch, qtbot) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    seen = tmp_path / "ollama-saw.txt"
    ollama = bin_dir / "ollama"  # records its arguments and the Modelfile it was given
    ollama.write_text(f'#!/bin/sh\necho "$@" > {seen}\ncat "$4" >> {seen}\necho success\n')
    ollama.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    gguf = gguf_run(window, tmp_path)
    results = window.page("results")
    assert results.ollama_button.isEnabled() and results.share_status.text() == ""
    qtbot.mouseClick(results.ollama_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "Added to Ollama" in results.share_status.text(), timeout=10000)
    args, *modelfile = seen.read_text().splitlines()
    assert args.startswith("create smollm2-135m-instruct-q4_k_m -f ")
    assert modelfile[0] == f"FROM {gguf.resolve()}"  # absolute: works from anywhere
    assert "PARAMETER stop <|im_end|>" in modelfile


def test_open_in_lmstudio_links_the_file_in_its_layout(window, tmp_path, monkeypatch,
                                                       qtbot) -> None:
    home = tmp_path / "home"
    (home / ".lmstudio" / "models").mkdir(parents=True)
    monkeypatch.setattr(Path, "home", lambda: home)
    gguf = gguf_run(window, tmp_path)
    results = window.page("results")
    qtbot.mouseClick(results.lmstudio_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "✓" in results.share_status.text(), timeout=10000)
    placed = home / ".lmstudio" / "models" / "quantdesk" / gguf.parent.name / gguf.name
    assert placed.is_file() and placed.stat().st_ino == gguf.stat().st_ino  # a hard link
    assert str(placed) in results.share_status.text()


def test_lmstudio_missing_says_what_to_do(window, tmp_path, monkeypatch, qtbot) -> None:
    monkeypatch.setattr(Path, "home", lambda: tmp_path / "empty-home")
    gguf = gguf_run(window, tmp_path)
    results = window.page("results")
    qtbot.mouseClick(results.lmstudio_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "⚠" in results.share_status.text(), timeout=10000)
    assert "LM Studio's models folder was not found" in results.share_status.text()
    assert f"lms import {gguf}" in results.share_status.text()


def test_publish_dialog_uploads_the_folder_with_its_card(window, hub, tmp_path, monkeypatch,
                                                         qtbot) -> None:
    monkeypatch.setenv("HF_TOKEN", GRANTED)
    gguf = gguf_run(window, tmp_path)
    results = window.page("results")
    qtbot.mouseClick(results.publish_button, Qt.MouseButton.LeftButton)
    dialog = results.publish_dialog
    assert dialog.isVisible() and dialog.private.isChecked()  # private by default
    assert dialog.repo.text() == f"USER/{gguf.parent.name}"
    assert not dialog.publish_button.isEnabled()  # USER is a placeholder
    files = dialog.files.text().splitlines()
    assert files == [f"{p.name}  ({format_size(p.stat().st_size)})"
                     for p in sorted(gguf.parent.iterdir())]
    assert len(files) == 3 and f"{gguf.name}  (1004 B)" in files
    assert "| method | GGUF" in dialog.card.toPlainText()
    assert f"name {SMOL} as the base model" in dialog.base_note.text()
    dialog.repo.setText("tester/smol-q4")
    assert dialog.publish_button.isEnabled()
    qtbot.mouseClick(dialog.publish_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dialog.url is not None or "⚠" in dialog.status.text(),
                    timeout=30000)
    assert dialog.url == f"{hub.url}/tester/smol-q4", dialog.status.text()
    assert f'<a href="{hub.url}/tester/smol-q4">' in dialog.status.text()
    repo = hub.repos["tester/smol-q4"]
    assert repo.private
    uploaded = {name for c in repo.commits for name in c["files"]}
    assert uploaded == {gguf.name, "Modelfile", "README.md"}
    assert repo.files[gguf.name] == gguf.read_bytes()
    card = repo.files["README.md"].decode()
    assert f"base_model: {SMOL}" in card and "base_model_relation: quantized" in card
    assert "KL divergence" in card and "- quantdesk" in card


def test_publish_without_a_login_says_how(window, hub, tmp_path, qtbot) -> None:
    gguf_run(window, tmp_path)
    results = window.page("results")
    results.publish()
    dialog = results.publish_dialog
    dialog.repo.setText("tester/smol-q4")
    dialog.publish()
    qtbot.waitUntil(lambda: dialog.task is None, timeout=30000)
    assert "Not logged in" in dialog.status.text() and "hf auth login" in dialog.status.text()
    assert dialog.publish_button.isEnabled() and dialog.url is None
    assert "tester/smol-q4" not in hub.repos


@pytest.mark.parametrize("language", ["en", "zh_CN"])
def test_the_browser_and_the_publish_dialog_fit_the_smallest_window(
        tmp_path, qtbot, language) -> None:
    from gui_helpers import fake_command
    from layout_check import problems
    from PySide6.QtCore import QCoreApplication

    from qtapp.gui.engine_process import EngineProcess
    from qtapp.gui.i18n import install_translator
    from qtapp.gui.widgets.hub_browser import _rows

    app = QCoreApplication.instance()
    translator = install_translator(app, language) if language != "en" else None
    try:
        window = MainWindow(engine=EngineProcess(command=fake_command("ok")), scan=False)
        qtbot.addWidget(window)
        window.show()
        window.state.set_hardware(hardware(8))
        window.go("model")
        window.page("model").radio["hub"].setChecked(True)
        browser = window.page("model").hub_browser
        browser.show_rows(_rows(MODELS, window.state.hardware), None)
        browser.table.selectRow(1)
        page = window.page("model")
        for width, height in ((1000, 680), (1366, 768)):
            window.resize(width, height)
            qtbot.wait(50)
            assert browser.table.isColumnHidden(2) == (browser.width() < 900)
            assert browser.table.isColumnHidden(4) == (browser.width() < 1150)
            assert problems(page, window) == [], (width, language)
        gguf = gguf_run(window, tmp_path)
        from qtapp.gui.widgets.publish_dialog import PublishDialog

        dialog = PublishDialog(window.state, gguf.parent, window)
        qtbot.addWidget(dialog)
        dialog.show()
        qtbot.wait(50)
        assert problems(dialog, dialog) == [], language
    finally:
        if translator is not None:
            app.removeTranslator(translator)


def test_the_hub_address_is_set_kept_and_checked(window, monkeypatch, qtbot) -> None:
    from PySide6.QtWidgets import QInputDialog

    from qtapp.engine.hub.settings import endpoint, set_endpoint
    from qtapp.gui.widgets.hub_browser import HubBrowser

    monkeypatch.setenv("HF_ENDPOINT", "https://huggingface.co")  # restored afterwards
    browser = window.page("model").hub_browser
    answers = iter([("https://hf-mirror.com/", True), ("hf-mirror", True)])
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: next(answers))
    try:
        browser.endpoint_button.click()
        assert endpoint() == "https://hf-mirror.com"
        assert browser.endpoint_button.toolTip() == "Hub address: https://hf-mirror.com"
        import os

        assert os.environ["HF_ENDPOINT"] == "https://hf-mirror.com"  # the workers' too
        set_endpoint(None)
        second = HubBrowser(window.state)  # the next start uses the saved mirror
        qtbot.addWidget(second)
        assert endpoint() == "https://hf-mirror.com"
        browser.endpoint_button.click()  # not an address: refused, the mirror stays
        assert "'hf-mirror' is not a Hub address" in browser.status.text()
        assert endpoint() == "https://hf-mirror.com"
    finally:
        set_endpoint(None)


# the engine's English templates (engine.hub.verdicts.describe): none may reach the zh_CN window
ENGLISH_VERDICT_WORDS = ("runs in RAM", "runs on the GPU", "on the GPU", "too large", "needs",
                         "fits with", "context", "supported", "unknown", "no GPU",
                         "from the parameter count", "quantizing it", "the Hub gave no")


def verdict_rows(machine) -> list:
    """Rows whose verdicts cover every kind (engine.hub.verdicts.KINDS): real ones on an
    8 GB card and on a machine without a GPU, and the kinds these models do not reach here
    (a method's refusal, a job too large to quantize) as the engine states them."""
    from qtapp.engine.hub.verdicts import FitVerdict, compat_verdict, describe, fit_verdicts
    from qtapp.gui.widgets.hub_browser import HubRow

    def made(method, label, fits, kind, **facts):
        v = FitVerdict(method, label, fits, "", kind, **facts)
        v.text = describe(v)
        return v

    models = [*MODELS, hub_model("meta-llama/Llama-3.1-70B-gated", None, 70_553_706_496),
              hub_model("tester/small-gated", None, 134_515_008),
              hub_model("someone/mamba-test", {"model_type": "mamba",
                                               "architectures": ["MambaForCausalLM"]}, None),
              hub_model("someone/nothing", None, None)]
    rows = [HubRow(m, fit_verdicts(m, hw), compat_verdict(m))
            for hw in (machine, hardware()) for m in models]
    rows.append(HubRow(models[0], [
        made("gguf", "GGUF Q4_K_M", False, "unsupported", reason="the GGUF converter refuses X"),
        made("gguf", "GGUF Q8_0", False, "cannot_quantize", size_bytes=3 << 30,
             need_bytes=40 << 30),
        made("gptq", "GPTQ W4", True, "fits_gpu", size_bytes=3 << 30, context=8192),
        made("awq", "AWQ W4", True, "runs_in_ram", size_bytes=3 << 30)],
        made("compat", "compatibility", True, "supported", family="llama",
             supported=("RTN", "GGUF"), refused=(("GPTQ", "a reason"), ("AWQ", "another")))))
    return rows


@pytest.mark.parametrize("language", ["en", "zh_CN"])
def test_fit_verdicts_are_in_the_window_language(qtbot, language) -> None:
    """Every verdict the browser shows (cell tooltips, the detail line) is composed from the
    verdict's facts through tr(): English is the engine's own text, zh_CN has none of its
    English templates (a refusal's reason from the FAMILIES table stays English inside a
    translated frame)."""
    from gui_helpers import fake_command
    from PySide6.QtCore import QCoreApplication

    from qtapp.engine.hub.verdicts import KINDS
    from qtapp.gui.engine_process import EngineProcess
    from qtapp.gui.i18n import install_translator
    from qtapp.gui.widgets.hub_browser import verdict_text

    app = QCoreApplication.instance()
    translator = install_translator(app, language) if language != "en" else None
    try:
        window = MainWindow(engine=EngineProcess(command=fake_command("ok")), scan=False)
        qtbot.addWidget(window)
        window.state.set_hardware(hardware(8))
        browser = window.page("model").hub_browser
        rows = verdict_rows(window.state.hardware)
        assert {v.kind for r in rows for v in [*r.verdicts, r.compat]} == set(KINDS)
        browser.show_rows(rows, None)
        first = browser.table.columnCount() - 5  # four methods, then Supported
        for i, row in enumerate(rows):
            browser.table.selectRow(i)
            detail = browser.detail.text()
            for j, v in enumerate([*row.verdicts, row.compat]):
                shown = browser.table.item(i, first + j).toolTip()
                assert shown == verdict_text(v) and shown in html.unescape(detail)
                if language == "en":
                    assert shown == v.text
                    continue
                frame = shown.replace(v.reason, "") if v.reason else shown
                for _, r in v.refused:
                    frame = frame.replace(r, "")
                found = [w for w in ENGLISH_VERDICT_WORDS if w in frame]
                assert found == [], (shown, v.text)
                assert shown != v.text
    finally:
        if translator is not None:
            app.removeTranslator(translator)
