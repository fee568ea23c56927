"""Step 2: the model to quantize: the built-in demo, a local folder, or a Hugging Face id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QT_TR_NOOP, QSettings, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QProgressBar,
    QRadioButton,
    QWidget,
)

from qtapp.engine.errors import UserError
from qtapp.gui.format import format_params, format_size
from qtapp.gui.i18n import tr
from qtapp.gui.state import AppState
from qtapp.gui.widgets.common import (
    Card,
    KeyValues,
    PageHeader,
    button,
    label,
    page_layout,
    set_role,
)
from qtapp.gui.widgets.hub_browser import HubBrowser

# model.sources (which imports torch) is imported inside the background task that resolves a
# model: the window opens without torch.

SOURCES = ("demo", "folder", "hub")
INFO_KEYS = [QT_TR_NOOP("Name"), QT_TR_NOOP("Architecture"), QT_TR_NOOP("Parameters"),
             QT_TR_NOOP("Blocks"), QT_TR_NOOP("Hidden size"), QT_TR_NOOP("Weights"),
             QT_TR_NOOP("Size on disk"), QT_TR_NOOP("Location"), QT_TR_NOOP("Methods")]


class ModelPage(QWidget):
    loaded = Signal(object)

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        layout = page_layout(self)
        layout.addWidget(PageHeader(tr("Choose a model"), tr(
            "Start with the small built-in model to learn the steps, or pick your own.")))

        source = Card(tr("Source"))
        self.group = QButtonGroup(self)
        self.radio: dict[str, QRadioButton] = {}

        self.radio["demo"] = self._option(source, tr("Built-in demo: SmolLM2-135M-Instruct"),
                                          tr("135 M parameters, works offline; small enough "
                                             "to try every method on a laptop CPU."))
        self.radio["folder"] = self._option(source, tr("A folder on this computer"),
                                            tr("A Hugging Face model folder: config.json, "
                                               "*.safetensors and the tokenizer files."))
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText(tr("/path/to/model-folder"))
        self.folder_edit.textChanged.connect(self._check_folder)
        browse = button(tr("Browse…"))
        browse.clicked.connect(self._browse)
        folder_row = QHBoxLayout()
        folder_row.setContentsMargins(28, 0, 0, 0)
        folder_row.addWidget(self.folder_edit, 1)
        folder_row.addWidget(browse)
        source.body.addLayout(folder_row)
        self.folder_hint = label("", "Muted", wrap=True)
        self.folder_hint.setContentsMargins(28, 0, 0, 0)
        source.body.addWidget(self.folder_hint)

        self.radio["hub"] = self._option(source, tr("A Hugging Face model id"),
                                         tr("Uses the local Hugging Face cache; downloads only "
                                            "when you allow it and are online."))
        self.hub_edit = QLineEdit()
        self.hub_edit.setPlaceholderText("Qwen/Qwen2.5-0.5B-Instruct")
        self.allow_download = QCheckBox(tr("Download if it is not in the cache"))
        hub_row = QHBoxLayout()
        hub_row.setContentsMargins(28, 0, 0, 0)
        hub_row.addWidget(self.hub_edit, 1)
        hub_row.addWidget(self.allow_download)
        source.body.addLayout(hub_row)

        self.load_button = button(tr("Use this model"), "primary")
        self.load_button.clicked.connect(self.load)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.status = label("", wrap=True)
        action = QHBoxLayout()
        action.addWidget(self.load_button)
        action.addWidget(self.progress, 1)
        source.body.addSpacing(6)
        source.body.addLayout(action)
        source.body.addWidget(self.status)
        layout.addWidget(source)

        self.hub_card = Card(tr("Find a model on the Hugging Face Hub"))
        self.hub_browser = HubBrowser(state)
        self.hub_browser.chosen.connect(self._hub_chosen)
        self.hub_browser.downloaded.connect(self._hub_downloaded)
        self.hub_card.body.addWidget(self.hub_browser)
        layout.addWidget(self.hub_card, 1)

        info = Card(tr("Model"))
        self.info = KeyValues(INFO_KEYS)
        info.body.addWidget(self.info)
        layout.addWidget(info)
        layout.addStretch(1)

        self.next_button = button(tr("Next: choose a method →"), "primary")
        self.next_button.setEnabled(False)
        layout.addWidget(self.next_button)

        for widget in self.radio.values():
            widget.toggled.connect(self._update_enabled)
        settings = QSettings()
        self.folder_edit.setText(str(settings.value("model/folder", "")))
        self.hub_edit.setText(str(settings.value("model/hub", "")))
        chosen = str(settings.value("model/source", "demo"))
        self.radio[chosen if chosen in SOURCES else "demo"].setChecked(True)
        self._update_enabled()

    def _option(self, card: Card, title: str, detail: str) -> QRadioButton:
        radio = QRadioButton(title)
        self.group.addButton(radio)
        card.body.addWidget(radio)
        hint = label(detail, "Muted", wrap=True)
        hint.setContentsMargins(28, 0, 0, 0)
        card.body.addWidget(hint)
        return radio

    def source_kind(self) -> str:
        return next(k for k, r in self.radio.items() if r.isChecked())

    def source_text(self) -> str:
        kind = self.source_kind()
        if kind == "folder":
            return self.folder_edit.text().strip()
        if kind == "hub":
            return self.hub_edit.text().strip()
        return "demo"

    def _update_enabled(self) -> None:
        kind = self.source_kind()
        self.folder_edit.setEnabled(kind == "folder")
        self.hub_edit.setEnabled(kind == "hub")
        self.allow_download.setEnabled(kind == "hub")
        self.hub_card.setVisible(kind == "hub")
        self._check_folder()

    def _hub_chosen(self, repo_id: str) -> None:
        self.hub_edit.setText(repo_id)

    def _hub_downloaded(self, repo_id: str, _folder: Path) -> None:
        """A finished download is in the Hugging Face cache: read it as a cached Hub id."""
        self.radio["hub"].setChecked(True)
        self.hub_edit.setText(repo_id)
        self.load()

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, tr("Choose a model folder"),
                                                  self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)
            self.radio["folder"].setChecked(True)

    def _check_folder(self) -> None:
        """Inline feedback while typing a folder path (cheap checks only)."""
        text = self.folder_edit.text().strip()
        if self.source_kind() != "folder" or not text:
            self.folder_hint.setText("")
            return
        path = Path(text).expanduser()
        if not path.is_dir():
            hint, name = tr("⚠ This folder does not exist."), "WarnText"
        elif not (path / "config.json").is_file():
            hint, name = tr("⚠ No config.json here: choose the folder that holds the model "
                            "files."), "WarnText"
        elif not any(path.glob("*.safetensors")):
            hint, name = tr("⚠ No *.safetensors weights in this folder."), "WarnText"
        else:
            hint, name = tr("✓ Looks like a model folder."), "OkText"
        set_role(self.folder_hint, name)
        self.folder_hint.setText(hint)

    def load(self) -> None:
        source = self.source_text()
        if not source:
            self._show_error(tr("Enter a folder or a model id first."))
            return
        allow = self.source_kind() == "hub" and self.allow_download.isChecked()
        settings = QSettings()
        settings.setValue("model/source", self.source_kind())
        settings.setValue("model/folder", self.folder_edit.text())
        settings.setValue("model/hub", self.hub_edit.text())
        self.load_button.setEnabled(False)
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)
        set_role(self.status, "Muted")
        self.status.setText(tr("Reading {source}… (the demo model is prepared once, which "
                               "takes a few seconds)").format(source=source))

        def work(ctx: Any) -> Any:
            from qtapp.engine.model.sources import resolve_model

            return resolve_model(source, allow_download=allow,
                                 progress=lambda done, total: ctx.report((done, total)))

        self.state.background.run(work, self._loaded, self._failed, self._progress)

    def _progress(self, value: tuple[int, int]) -> None:
        done, total = value
        if total > 0:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * done / total))
            self.status.setText(tr("Downloading: {done} of {total}").format(
                done=format_size(done), total=format_size(total)))

    def _loaded(self, info: Any) -> None:
        self.load_button.setEnabled(True)
        self.progress.setVisible(False)
        set_role(self.status, "OkText")
        self.status.setText(tr("✓ Ready: {name}").format(name=info.name))
        self.show_info(info)
        self.state.set_model(info)
        self.next_button.setEnabled(True)
        self.loaded.emit(info)

    def _failed(self, error: BaseException) -> None:
        self.load_button.setEnabled(True)
        self.progress.setVisible(False)
        if isinstance(error, UserError):
            self._show_error(str(error))
        else:
            self._show_error(tr("Could not read the model: {kind}: {error}").format(
                kind=type(error).__name__, error=error))

    def _show_error(self, message: str) -> None:
        set_role(self.status, "ErrorText")
        self.status.setText("⚠ " + message)

    def show_info(self, info: Any) -> None:
        arch = getattr(info.arch, "name", info.arch)
        values = [info.name, str(arch), (f"{format_params(info.n_params)} "
                  f"({info.n_params:,})"), str(info.n_layers), str(info.hidden_size),
                  str(info.dtype), format_size(info.size_bytes), str(info.path),
                  methods_text(getattr(info, "config", None) or {})]
        for key, value in zip(INFO_KEYS, values):
            self.info.set(key, value)


def methods_text(config: dict) -> str:
    """The methods the model's family takes, then each one it refuses with why, a line each
    (the FAMILIES table, as `quantdesk check` answers from config.json: a family's own short
    reason, not the converter's list of architectures)."""
    from qtapp.engine.planning.compat import METHODS, refusals  # imports the gguf package

    refused = refusals(config)
    parts = [", ".join(m.upper() for m in METHODS if m not in refused)]
    parts += [tr("not {method}: {reason}").format(method=m.upper(), reason=refused[m])
              for m in METHODS if m in refused]
    return "\n".join(p for p in parts if p)
