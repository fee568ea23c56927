"""Screenshots of the Hub inside the window, for docs/screenshots/: the browser with fit
verdicts, a download in progress, the publish dialog; in English and in Chinese.

    cd /tmp && PYTHONPATH=/work/main xvfb-run -a -s "-screen 0 1400x900x24" \
        /work/main/.venv/bin/python /work/main/scripts/hub_screenshots.py \
        --output OUT --out /work/main/docs/screenshots

OUT is a finished QuantDesk output folder (e.g. `quantdesk quantize --model demo --method
gguf --type Q4_K_M --out OUT`): the publish dialog lists its files and its model card. The Hub
is tests/hub_fixture.py's local server, which answers the requests huggingface-hub makes, with
repositories carrying the config.json widths and parameter counts of real models; the window,
the engine (search, verdicts from this machine's real hardware scan, download) and
huggingface-hub are the real ones. Nothing reaches the real Hub.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# config.json widths (and the Hub's parameter counts) of real models
LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
         "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
         "tie_word_embeddings": False}
REPOS = [  # repo id, config, parameters, downloads, likes, licence, gated
    ("Qwen/Qwen2.5-0.5B-Instruct",
     {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
      "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
      "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True},
     494_032_768, 2_450_000, 410, "apache-2.0", False),
    ("Qwen/Qwen2.5-7B-Instruct",
     {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
      "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
      "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False},
     7_615_616_512, 1_830_000, 820, "apache-2.0", False),
    ("meta-llama/Llama-3.1-8B-Instruct",
     {**LLAMA, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32},
     8_030_261_248, 5_120_000, 4300, "llama3.1", "manual"),
    ("mistralai/Mistral-7B-Instruct-v0.3",
     {**LLAMA, "architectures": ["MistralForCausalLM"], "model_type": "mistral",
      "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
      "vocab_size": 32768},
     7_248_023_552, 890_000, 1700, "apache-2.0", "auto"),
    ("meta-llama/Llama-3.3-70B-Instruct",
     {**LLAMA, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
      "num_attention_heads": 64},
     70_553_706_496, 760_000, 2400, "llama3.3", "manual"),
    ("HuggingFaceTB/SmolLM2-1.7B-Instruct",
     {**LLAMA, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
      "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 49152,
      "tie_word_embeddings": True},
     1_711_376_384, 310_000, 650, "apache-2.0", False),
    ("state-spaces/mamba-2.8b-hf",
     {"architectures": ["MambaForCausalLM"], "model_type": "mamba", "hidden_size": 2560,
      "num_hidden_layers": 64, "vocab_size": 50280},
     2_768_345_600, 42_000, 150, "apache-2.0", False),
]
DOWNLOAD_BYTES = 24 * 2**20  # the weights of the repository downloaded on camera


def hub_server():
    """The fixture server with REPOS, and huggingface-hub pointed at it (as the `hub` pytest
    fixture does)."""
    from hub_fixture import FakeRepo, HubServer
    from huggingface_hub import constants

    server = HubServer().start()
    os.environ["HF_ENDPOINT"] = server.url
    os.environ.pop("HF_HUB_OFFLINE", None)
    constants.ENDPOINT = server.url
    constants.HF_HUB_OFFLINE = False
    for repo_id, config, params, downloads, likes, licence, gated in REPOS:
        weights = os.urandom(DOWNLOAD_BYTES) if repo_id.endswith("0.5B-Instruct") else b"\0"
        server.add(FakeRepo(repo_id, {"config.json": json.dumps(config).encode(),
                                      "model.safetensors": weights,
                                      "tokenizer.json": b"{}"},
                            params=params, downloads=downloads, likes=likes, license=licence,
                            gated=gated))
    return server


def settle(app, seconds: float = 0.3) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def wait(app, condition, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the window did not reach the expected state in time")
        app.processEvents()
        time.sleep(0.02)
    settle(app)


def show(app, widget) -> None:
    """Scroll the page that holds ``widget`` so that it is in view."""
    from PySide6.QtWidgets import QScrollArea

    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QScrollArea):
        parent = parent.parentWidget()
    if parent is not None:
        settle(app)
        parent.ensureWidgetVisible(widget, 0, 40)


def shoot(app, widget, path: Path) -> None:
    settle(app)
    widget.grab().save(str(path))
    print(f"wrote {path}")


def take(output: Path, out: Path, language: str) -> None:
    from PySide6.QtCore import QSettings

    data = Path(tempfile.mkdtemp(prefix="quantdesk-hub-shots-"))
    os.environ["QUANTDESK_DATA_DIR"] = str(data / "user-data")
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope,
                      str(data / "settings"))
    from huggingface_hub import constants

    constants.HF_HUB_CACHE = str(data / "hf-cache")
    server = hub_server()
    from qtapp.gui.app import create_app
    from qtapp.gui.i18n import install_translator

    app = create_app(["quantdesk"])
    install_translator(app, language)
    from qtapp.gui.main_window import MainWindow
    from qtapp.gui.widgets.publish_dialog import PublishDialog

    suffix = "" if language == "en" else f"_{language}"
    out.mkdir(parents=True, exist_ok=True)
    window = MainWindow()  # the real hardware scan: the verdicts are for this machine
    window.resize(1280, 880)
    window.show()
    wait(app, lambda: window.state.advice is not None)

    page = window.page("model")
    window.go("model")
    page.radio["hub"].setChecked(True)
    browser = page.hub_browser
    browser.query.setText("instruct")
    browser.search()
    wait(app, lambda: browser.search_task is None)
    browser.select("Qwen/Qwen2.5-7B-Instruct")
    show(app, browser.detail)
    shoot(app, window, out / f"hub_browser{suffix}.png")

    browser.select("Qwen/Qwen2.5-0.5B-Instruct")
    server.slow = 0.02  # 64 KiB every 20 ms: about 3 MiB/s
    browser.download()
    wait(app, lambda: browser.last_progress is not None
         and browser.last_progress.done_bytes > DOWNLOAD_BYTES * 0.4)
    show(app, browser.download_status)
    shoot(app, window, out / f"hub_download{suffix}.png")
    browser.cancel_download()
    wait(app, lambda: browser.download_task is None)

    dialog = PublishDialog(window.state, output, window)
    dialog.repo.setText(f"tester/{output.name}")
    dialog.resize(720, 640)
    dialog.show()
    shoot(app, dialog, out / f"hub_publish{suffix}.png")
    dialog.close()
    window.close()
    server.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, required=True,
                   help="a finished QuantDesk output folder, shown in the publish dialog")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    p.add_argument("--language", choices=("en", "zh_CN"), default=None,
                   help="one language (default: both, each in its own process)")
    args = p.parse_args()
    if args.language:
        take(args.output, args.out, args.language)
        return 0
    import subprocess

    for language in ("en", "zh_CN"):  # one window per process: the translator is global
        subprocess.run([sys.executable, __file__, "--output", str(args.output), "--out",
                        str(args.out), "--language", language], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
