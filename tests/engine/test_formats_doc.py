"""Every `docs/formats.md#<section>` the code cites names a section that exists."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "formats.md"


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#{1,6} (.+)$", markdown, flags=re.MULTILINE)}


def test_cited_sections_exist():
    known = anchors(DOC.read_text(encoding="utf-8"))
    cited = {}
    for folder in ("qtapp", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in (".py", ".md") or not path.is_file():
                continue
            text = path.read_text(encoding="utf-8")
            # "formats.md#gptq, #awq-gemm" cites two sections
            for run in re.findall(r"formats\.md(#[\w-]+(?:, #[\w-]+)*)", text):
                for name in re.findall(r"#([\w-]+)", run):
                    cited.setdefault(name, str(path.relative_to(ROOT)))
    assert len(cited) >= 8
    missing = {name: where for name, where in cited.items() if name not in known}
    assert missing == {}
