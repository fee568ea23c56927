"""'What to try': for a run whose quality verdict is degraded or broken, the changes worth a
second run (planning/remedies.py), each with the output size the planner predicts for it
when the source model is the one loaded on the model page."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QT_TR_NOOP, Qt

from qtapp.engine.config import ConfigError, JobSpec
from qtapp.engine.planning.remedies import Remedy, predicted_size, remedies
from qtapp.gui.format import format_size
from qtapp.gui.i18n import tr
from qtapp.gui.results_store import RunRecord
from qtapp.gui.widgets.common import Card, label

WORDS = {
    "group": QT_TR_NOOP("A smaller group: group size {group} instead of {was}. Finer scales "
                        "follow the weights more closely, for a little more size."),
    "awq": QT_TR_NOOP("AWQ instead of {method}: it scales up the weights that matter most "
                      "for real activations before rounding."),
    "attention8": QT_TR_NOOP("Attention at 8 bits (Method → Mixed precision → the preset): "
                             "attention is where 4-bit rounding hurts most."),
    "budget": QT_TR_NOOP("A size budget of {size} (Method → Mixed precision → size budget): "
                         "the same size, with more bits where the model is most sensitive."),
    "calibration": QT_TR_NOOP("More calibration: {samples} samples instead of {was}."),
    "gguf_type": QT_TR_NOOP("A larger GGUF type: {type} instead of {was}."),
    "imatrix": QT_TR_NOOP("An importance matrix from calibration data: llama.cpp then keeps "
                          "the weights that matter most more precisely."),
}
TITLES = {"degraded": QT_TR_NOOP("This run is degraded. What to try:"),
          "broken": QT_TR_NOOP("This run is broken. What to try:")}


SAME_SIZE = ("budget", "calibration")  # remedies that do not change the output's size


def remedy_text(remedy: Remedy, job: JobSpec, size_bytes: int, base: int | None) -> str:
    """One remedy in words, with the planner's predicted size when it is known; the change
    is against the planner's size of the run's own job (`base`), so that both figures come
    from the same model of the files."""
    c = remedy.job
    text = tr(WORDS[remedy.key]).format(
        group=c.scheme.group_size, was=_was(remedy.key, job), method=job.method.upper(),
        size=format_size(size_bytes), samples=c.calibration.samples, type=c.gguf.type)
    if remedy.size_bytes is not None and base and remedy.key not in SAME_SIZE:
        text += " " + tr("Predicted size {size} ({change:+.0%} against this run).").format(
            size=format_size(remedy.size_bytes), change=remedy.size_bytes / base - 1)
    return text


def _was(key: str, job: JobSpec) -> Any:
    return {"group": job.scheme.group_size, "calibration": job.calibration.samples,
            "gguf_type": job.gguf.type}.get(key, "")


class RemediesCard(Card):
    """Hidden unless the shown run is degraded or broken (and its job is known)."""

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("Banner")
        self.title = label("", "CardTitleLarge", wrap=True)
        self.text = label("", wrap=True)
        self.text.setTextFormat(Qt.TextFormat.RichText)
        self.body.addWidget(self.title)
        self.body.addWidget(self.text)
        self.shown: list[Remedy] = []
        self.setVisible(False)

    def show_record(self, record: RunRecord | None, info: Any = None) -> None:
        """`info`: the source's ModelInfo when at hand (then sizes are predicted)."""
        quality = record.result.quality if record is not None else None
        verdict = quality.verdict if quality is not None else ""
        self.shown = []
        if record is None or verdict not in TITLES or not record.job:
            self.setVisible(False)
            return
        try:
            job = JobSpec.from_dict(record.job)
        except (ConfigError, TypeError, ValueError, KeyError):
            self.setVisible(False)
            return
        self.shown = remedies(job, info, record.size_bytes)
        base = predicted_size(job, info)
        self.title.setText(tr(TITLES[verdict]))
        self.text.setText("<ul style='margin-left: -20px'>" + "".join(
            f"<li>{remedy_text(r, job, record.size_bytes, base)}</li>" for r in self.shown)
            + "</ul>")
        self.setVisible(bool(self.shown))
