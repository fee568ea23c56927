"""Publish an output folder to the Hugging Face Hub: the repository, private by default, what
will be uploaded with the model card's preview, then the upload with progress and cancel
(qtapp/engine/hub/publish.py, off the UI thread)."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QVBoxLayout,
    QWidget,
)

from qtapp.engine.errors import Cancelled, UserError
from qtapp.engine.hub.publish import card_base_model
from qtapp.gui.format import format_size
from qtapp.gui.i18n import tr
from qtapp.gui.state import AppState
from qtapp.gui.tasks import Task
from qtapp.gui.widgets.common import button, label, set_role
from qtapp.gui.widgets.hub_browser import linkify

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MAX_LISTED = 12


def folder_files(folder: Path) -> list[tuple[str, int]]:
    """(relative name, size) of every file under `folder` but hidden ones (.cache/ holds
    the resumable upload's bookkeeping), sorted by name."""
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size)
                  for p in folder.rglob("*") if p.is_file() and not any(
                      part.startswith(".") for part in p.relative_to(folder).parts))


class PublishDialog(QDialog):
    """Asks where to publish `out_dir` and uploads it; `url` holds the repository's address
    once done."""

    def __init__(self, state: AppState, out_dir: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.out_dir = Path(out_dir)
        self.task: Task | None = None
        self.url: str | None = None
        self.setWindowTitle(tr("Publish to Hugging Face"))
        self.setMinimumWidth(560)
        layout = QVBoxLayout(self)
        layout.setSpacing(10)
        layout.addWidget(label(tr("Uploads {folder} to a model repository of your Hugging Face "
                                  "account with its model card. Sign in once with `hf auth "
                                  "login`; QuantDesk uses the token it stores.")
                               .format(folder=self.out_dir), "Muted", wrap=True))
        form = QFormLayout()
        self.repo = QLineEdit()
        self.repo.setPlaceholderText(tr("USER/NAME"))
        self.repo.setText(f"USER/{self.out_dir.name}")
        self.repo.textChanged.connect(self._validate)
        self.private = QCheckBox(tr("Private (only you can see it until you make it public)"))
        self.private.setChecked(True)
        form.addRow(tr("Repository"), self.repo)
        form.addRow("", self.private)
        layout.addLayout(form)

        files = folder_files(self.out_dir)
        total = sum(size for _, size in files)
        layout.addWidget(label(tr("What will be uploaded: {n} files, {total}").format(
            n=len(files), total=format_size(total)), wrap=True))
        shown = [f"{name}  ({format_size(size)})" for name, size in files[:MAX_LISTED]]
        if len(files) > MAX_LISTED:
            shown.append(tr("… and {n} more").format(n=len(files) - MAX_LISTED))
        self.files = label("\n".join(shown), "Muted", wrap=True)
        layout.addWidget(self.files)
        layout.addWidget(label(tr("Model card (README.md)"), "Muted"))
        preview = self._card_preview()
        base = card_base_model(preview)
        self.base_note = label(tr(
            "Its metadata will name {base} as the base model (base_model_relation: "
            "quantized), so the Hub lists it among that model's quantizations.").format(
                base=base) if base else tr(
            "No base model on the Hub is known (the source was a local folder): the card "
            "is uploaded without base_model."), "Muted", wrap=True)
        layout.addWidget(self.base_note)
        self.card = QPlainTextEdit()
        self.card.setReadOnly(True)
        self.card.setPlainText(preview)
        layout.addWidget(self.card, 1)

        self.progress = QProgressBar()
        self.progress.setVisible(False)
        layout.addWidget(self.progress)
        self.status = label("", wrap=True)
        self.status.setTextFormat(Qt.TextFormat.RichText)
        self.status.setOpenExternalLinks(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        layout.addWidget(self.status)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.cancel_button = button(tr("Cancel"))
        self.cancel_button.clicked.connect(self.cancel)
        self.publish_button = button(tr("Publish"), "primary")
        self.publish_button.clicked.connect(self.publish)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.publish_button)
        layout.addLayout(buttons)
        self._validate()

    def _card_preview(self) -> str:
        readme = self.out_dir / "README.md"
        try:
            return readme.read_text(encoding="utf-8")
        except OSError:
            return tr("(no README.md in this folder: it is not a QuantDesk output)")

    def _validate(self) -> None:
        text = self.repo.text().strip()
        ok = bool(REPO_ID.match(text)) and not text.startswith("USER/")
        self.publish_button.setEnabled(ok and self.task is None)
        if ok or self.task is not None:
            self.status.setText("")
        else:
            set_role(self.status, "Muted")
            self.status.setText(html.escape(tr("Enter the repository as your user or "
                                               "organisation name / a model name.")))

    def publish(self) -> None:
        repo_id, private, out_dir = self.repo.text().strip(), self.private.isChecked(), \
            self.out_dir

        def work(ctx: Any) -> str:
            from qtapp.engine.hub.publish import publish

            return publish(out_dir, repo_id, private=private, on_progress=ctx.report,
                           should_cancel=ctx.cancelled.is_set)

        self.repo.setEnabled(False)
        self.private.setEnabled(False)
        self.publish_button.setEnabled(False)
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)
        set_role(self.status, "Muted")
        self.status.setText(html.escape(tr("Uploading to {repo}…").format(repo=repo_id)))
        self.task = self.state.background.run(work, self._published, self._failed,
                                              self._progress)

    def _progress(self, message: str) -> None:
        """publish's status lines ("creating …", "model card updated", "uploading …")."""
        self.status.setText(html.escape(message))

    def _ended(self) -> bool:
        cancelled = self.task is not None and self.task.ctx.cancelled.is_set()
        self.task = None
        self.progress.setVisible(False)
        self.repo.setEnabled(True)
        self.private.setEnabled(True)
        self._validate()
        return cancelled

    def _published(self, url: str) -> None:
        self._ended()  # a cancel that came during the upload came too late: it is online
        self.url = url
        set_role(self.status, "OkText")
        self.status.setText("✓ " + linkify(tr("Published: {url}").format(url=url)))
        self.publish_button.setEnabled(False)
        self.cancel_button.setText(tr("Close"))

    def _stopped(self) -> None:
        set_role(self.status, "WarnText")
        self.status.setText(html.escape(tr("Upload stopped. Publish again to continue: the "
                                           "files already uploaded are not sent twice.")))

    def _failed(self, error: BaseException) -> None:
        self._ended()
        if isinstance(error, Cancelled):
            self._stopped()
            return
        message = str(error) if isinstance(error, UserError) else tr(
            "The upload failed: {kind}: {error}").format(kind=type(error).__name__, error=error)
        set_role(self.status, "ErrorText")
        self.status.setText("⚠ " + linkify(message))

    def cancel(self) -> None:
        """Stop the upload in flight, else close the dialog."""
        if self.task is not None:
            self.task.cancel()
            self.cancel_button.setEnabled(True)
            self.status.setText(html.escape(tr("Stopping after the current step…")))
        else:
            self.reject()

    def reject(self) -> None:
        if self.task is not None:  # Escape or the close box while uploading: stop it first
            self.task.cancel()
        super().reject()

