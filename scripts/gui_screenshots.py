"""Screenshots of every page of the window, for docs/screenshots/, at the window's minimum
size, a laptop's and a desktop's, in one language per call:

    cd /tmp && PYTHONPATH=/work/main xvfb-run -a -s "-screen 0 2000x1200x24" \
        /work/main/.venv/bin/python /work/main/scripts/gui_screenshots.py \
        --events RUN.jsonl --language zh_CN --out /work/main/docs/screenshots

writes PAGE-WxH-LANGUAGE.png (hardware, model, method, run, results, chat) for each size of
--sizes (default 1000x680,1366x768,1920x1080), and welcome-LANGUAGE.png.

RUN.jsonl is the `--json` output of a real `quantdesk quantize` run of the demo model whose
output folder still exists. The window is the real one: a real hardware scan, the demo model
loaded through engine.sources, and the run's recorded events replayed through the real
EngineProcess by this same script in `--replay` mode (paused part-way for the live view),
then the chat page loading the original and the quantized model and answering a prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROMPT = "In one sentence, what does quantization do to a neural network?"


def replay(events: Path, pause_after_layers: int | None, delay: bool = True) -> int:
    """Worker mode: write the recorded events again; pause (until cancelled) if asked."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def watch() -> None:
        for line in sys.stdin:
            if line.strip() == "cancel":
                stop.set()

    threading.Thread(target=watch, daemon=True).start()
    layers = 0
    for line in events.read_text(encoding="utf-8").splitlines():
        kind = json.loads(line)["type"]
        if pause_after_layers is not None and layers >= pause_after_layers:
            stop.wait()
            print(json.dumps({"v": 1, "type": "cancelled", "t": time.time(),
                              "message": "cancelled by the user; no output was written"}))
            return 3
        print(line, flush=True)
        layers += kind == "layer"
        if delay:
            time.sleep(0.02 if kind == "layer" else 0.05)
    return 0


def wait(app, condition, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the window did not reach the expected state in time")
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)


def shoot(app, widget, path: Path) -> None:
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)
    widget.grab().save(str(path))
    print(f"wrote {path}")


SIZES = "1000x680,1366x768,1920x1080"


def shoot_sizes(app, window, out: Path, page: str, sizes: list[tuple[int, int]],
                language: str) -> None:
    """`page` of the window at every size, as PAGE-WxH-LANGUAGE.png."""
    for w, h in sizes:
        window.resize(w, h)
        shoot(app, window, out / f"{page}-{w}x{h}-{language}.png")


def take(events: Path, out: Path, language: str = "en", sizes_text: str = SIZES) -> None:
    sizes = [tuple(int(v) for v in size.split("x")) for size in sizes_text.split(",")]
    data = Path(tempfile.mkdtemp(prefix="quantdesk-shots-"))
    os.environ["QUANTDESK_DATA_DIR"] = str(data / "user-data")
    from PySide6.QtCore import QSettings

    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope,
                      str(data / "settings"))
    from qtapp.gui.app import create_app

    app = create_app(["quantdesk"])
    from qtapp.gui.i18n import install_translator

    if language != "en" and install_translator(app, language) is None:
        raise SystemExit(f"no translation for {language}")
    from qtapp.gui.engine_process import EngineProcess
    from qtapp.gui.main_window import MainWindow
    from qtapp.gui.welcome import WelcomeDialog

    layers = sum(json.loads(x)["type"] == "layer" for x in events.read_text().splitlines())
    pause = [int(layers * 0.6)]

    def command(job_path: str) -> list[str]:
        extra = ["--pause-after-layers", str(pause[0])] if pause[0] else []
        return [sys.executable, __file__, "--replay", str(events), *extra]

    out.mkdir(parents=True, exist_ok=True)
    window = MainWindow(engine=EngineProcess(command=command))
    window.resize(*sizes[0])
    window.show()
    welcome = WelcomeDialog(window)
    welcome.show()
    shoot(app, welcome, out / f"welcome-{language}.png")
    welcome.close()
    wait(app, lambda: window.state.advice is not None)
    shoot_sizes(app, window, out, "hardware", sizes, language)

    model = window.page("model")
    window.go("model")
    model.radio["demo"].setChecked(True)
    model.load()
    wait(app, lambda: window.state.model is not None)
    shoot_sizes(app, window, out, "model", sizes, language)

    method = window.page("method")
    window.go("method")
    method.method_radio["gptq"].setChecked(True)
    method.bits.setCurrentIndex(method.bits.findData(4))
    method.group.setCurrentIndex(method.group.findData(64))
    method.rules_table.mixed.setCurrentIndex(1)
    method.samples.setValue(16)
    method.seq_len.setValue(256)
    shoot_sizes(app, window, out, "method", sizes, language)

    run = window.page("run")
    method.rules_table.mixed.setCurrentIndex(0)
    method.start_button.click()
    wait(app, lambda: len(run.chart.points.get("down", [])) >= pause[0] // 7 - 1)
    time.sleep(1.5)
    run._tick()
    shoot_sizes(app, window, out, "run", sizes, language)
    run.cancel()
    wait(app, lambda: not window.engine.is_running())

    pause[0] = 0
    method.refresh_output_name()
    method.start_button.click()
    wait(app, lambda: run.outcome is not None and run.outcome.ok)
    window.go("results")
    shoot_sizes(app, window, out, "results", sizes, language)

    chat = window.page("chat")
    window.page("results").chat_button.click()
    wait(app, lambda: not chat.quantized.loading and not chat.original.loading, timeout_s=600)
    if chat.quantized.backend is None or chat.original.backend is None:
        raise RuntimeError(f"chat: {chat.original.status.text()} / {chat.quantized.status.text()}")
    chat.max_tokens.setValue(48)
    chat.prompt.setPlainText(PROMPT)
    chat.send()
    wait(app, lambda: chat.quantized.task is None and chat.original.task is None,
         timeout_s=600)
    chat.prompt.setPlainText("And what does it cost?")
    shoot_sizes(app, window, out, "chat", sizes, language)
    window.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=Path, help="JSON lines of a real quantize run")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    p.add_argument("--language", default="en", choices=("en", "zh_CN"))
    p.add_argument("--sizes", default=SIZES, help="window sizes WxH, comma-separated")
    p.add_argument("--replay", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--pause-after-layers", type=int, help=argparse.SUPPRESS)
    p.add_argument("--no-delay", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.replay:
        return replay(args.replay, args.pause_after_layers, delay=not args.no_delay)
    if args.events is None:
        p.error("--events is required")
    take(args.events, args.out, args.language, args.sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
