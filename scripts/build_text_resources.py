"""Build qtapp/resources/text/{calibration,evaluation}.txt from openly licensed local text.

Sources (see qtapp/resources/text/LICENSES.md): the Python 3.11 standard library and its
documentation (pydoc_data.topics, IDLE help, email/architecture.rst, C headers), all under the
PSF License Version 2, plus original Chinese prose in scripts/text_sources (CC0).

The two outputs share no document and no paragraph; the script refuses to write them if any
200-character window of the evaluation text occurs in the calibration text.

    .venv/bin/python scripts/build_text_resources.py
"""

from __future__ import annotations

import html.parser
import pydoc_data.topics
import random
import re
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "qtapp" / "resources" / "text"
ZH = ROOT / "scripts" / "text_sources"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
INCLUDE = Path(sysconfig.get_paths()["include"])
WINDOW = 200

EVAL_TOPICS = ["comparisons", "execmodel", "import"]
EVAL_PY = ["graphlib.py", "colorsys.py", "bisect.py"]
EVAL_C = ["pyhash.h"]
EVAL_RST = ["email/architecture.rst"]

CAL_TOPICS_BYTES = 280_000
MIN_KEPT = 0.6
CAL_PY = ["textwrap.py", "shlex.py", "heapq.py", "fractions.py", "json/decoder.py",
          "json/encoder.py", "csv.py", "queue.py", "fnmatch.py", "glob.py"]
CAL_C = ["objimpl.h", "pymem.h", "dictobject.h", "longobject.h", "codecs.h"]
CAL_HTML = ["idlelib/help.html"]


class _HtmlText(html.parser.HTMLParser):
    """Visible text of the IDLE help page's body, paragraphs separated by blank lines."""

    BLOCKS = frozenset({"p", "h1", "h2", "h3", "h4", "li", "dt", "dd", "pre", "div", "section", "tr"})

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style", "head"):
            self.skip += 1
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head"):
            self.skip -= 1

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)

    def text(self) -> str:
        raw = "".join(self.parts)
        paragraphs = [" ".join(p.replace("\u00b6", "").split())  # drop the "¶" anchors
                      for p in re.split(r"\n\s*\n", raw)]
        return "\n\n".join(p for p in paragraphs if len(p) > 1)


def _html_text(path: Path) -> str:
    parser = _HtmlText()
    parser.feed(path.read_text(encoding="utf-8"))
    text = parser.text()
    start, end = text.find("IDLE is Python"), text.find("Table of Contents")
    return text[max(start, 0):end if end > start else None]


def _paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def _key(paragraph: str) -> str:
    return " ".join(paragraph.split())


def _zh(name: str) -> list[str]:
    """Each CC0 essay (title line + body) is one document."""
    return [d for d in re.split(r"\n\s*\n(?=\S{1,20}\n)", (ZH / name).read_text("utf-8").strip())]


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


def build() -> tuple[str, str]:
    topics = pydoc_data.topics.topics
    eval_docs = [topics[t].strip() for t in EVAL_TOPICS]
    eval_docs += [_read(STDLIB / f) for f in EVAL_RST + EVAL_PY]
    eval_docs += [_read(INCLUDE / f) for f in EVAL_C]
    eval_docs += _zh("zh_eval.txt")
    used = {_key(p) for doc in eval_docs for p in _paragraphs(doc)}

    cal_docs: list[str] = []
    prose_bytes = 0
    for name in sorted(topics):
        if name in EVAL_TOPICS or prose_bytes >= CAL_TOPICS_BYTES:
            continue
        kept = [p for p in _paragraphs(topics[name]) if _key(p) not in used]
        kept = [p for i, p in enumerate(kept) if _key(p) not in {_key(q) for q in kept[:i]}]
        doc = "\n\n".join(kept)
        # a topic that is mostly a repeat of another leaves only headings: drop it whole
        if len(doc) >= MIN_KEPT * len(topics[name].strip()):
            cal_docs.append(doc)
            used.update(_key(p) for p in kept)
            prose_bytes += len(doc.encode())
    cal_docs += [_html_text(STDLIB / f) for f in CAL_HTML]
    cal_docs += [_read(STDLIB / f) for f in CAL_PY]
    cal_docs += [_read(INCLUDE / f) for f in CAL_C]
    cal_docs += _zh("zh_calibration.txt")

    random.Random(0).shuffle(cal_docs)
    random.Random(1).shuffle(eval_docs)
    return "\n\n".join(cal_docs) + "\n", "\n\n".join(eval_docs) + "\n"


def shared_windows(evaluation: str, calibration: str, width: int = WINDOW) -> list[str]:
    """Every ``width``-character window of ``evaluation`` that occurs in ``calibration``."""
    seen = {hash(calibration[i:i + width]) for i in range(len(calibration) - width + 1)}
    return [evaluation[i:i + width] for i in range(len(evaluation) - width + 1)
            if hash(evaluation[i:i + width]) in seen and evaluation[i:i + width] in calibration]


def main() -> int:
    calibration, evaluation = build()
    shared = shared_windows(evaluation, calibration)
    if shared:
        print(f"{len(shared)} shared {WINDOW}-char windows, e.g. {shared[0]!r}", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in (("calibration.txt", calibration), ("evaluation.txt", evaluation)):
        (OUT / name).write_text(text, encoding="utf-8")
        print(f"{name}: {len(text.encode())} bytes, {len(text)} characters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
