"""The Hugging Face Hub inside the model page: search, fit verdicts for this machine, download.

Every Hub request runs off the UI thread (gui/tasks.py) through qtapp/engine/hub/, which is
imported inside the tasks (huggingface_hub takes a while to import). A search that has not
answered after `timeout_s` is abandoned here too, whatever the network does, and the window
says so and lists the models already in the local cache.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QT_TR_NOOP, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QProgressBar,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from qtapp.engine.errors import Cancelled, UserError
from qtapp.gui import theme
from qtapp.gui.format import format_count, format_duration, format_params, format_size
from qtapp.gui.i18n import tr
from qtapp.gui.state import AppState
from qtapp.gui.tasks import Task
from qtapp.gui.widgets.common import button, fit_columns, label, set_role

HUB_TIMEOUT_S = 5.0
ENDPOINT_SETTING = "hub/endpoint"  # a mirror chosen in the window; empty: HF_ENDPOINT or the Hub
SORTS = (("downloads", QT_TR_NOOP("Most downloaded")), ("likes", QT_TR_NOOP("Most liked")),
         ("recent", QT_TR_NOOP("Recently updated")))
# then one column per method of the fit verdicts, and the compatibility check's answer
COLUMNS = (QT_TR_NOOP("Model"), QT_TR_NOOP("Parameters"), QT_TR_NOOP("Downloads"),
           QT_TR_NOOP("Licence"), QT_TR_NOOP("Updated"))
# column -> the browser's width below which it is hidden (the detail line under the table
# still tells it): the date, then the downloads, so that model ids stay readable
NARROW_HIDDEN = {4: 1150, 2: 900}
_URL = re.compile(r"https?://[^\s<>\"')]*[^\s<>\"').,;:]")  # not the sentence's comma


@dataclass
class HubRow:
    """One search result with the planner's answers for this machine."""

    model: Any  # engine.hub.search.HubModel
    verdicts: list[Any]  # engine.hub.verdicts.FitVerdict, one per method
    compat: Any  # FitVerdict of the compatibility check


def verdict_color(fits: bool | None) -> str:
    return theme.GOOD if fits else theme.MUTED if fits is None else theme.BAD


def verdict_mark(fits: bool | None) -> str:
    return "✓" if fits else "?" if fits is None else "✗"


def verdict_text(v: Any) -> str:
    """A FitVerdict's sentence in the window's language, composed from its facts (kind, sizes,
    context); in English it is the engine's own text (engine.hub.verdicts.describe). The
    reasons a method or the FAMILIES table gives for refusing a family stay English inside
    the translated frame: they come from the engine's checks, which have no translations."""
    from qtapp.engine.hub.verdicts import ctx_label, through_transformers

    if v.method == "compat":
        if v.kind == "unknown":
            return tr("unknown: the Hub gave no model_type or architectures")
        if v.kind == "unsupported":
            return tr("{family} not supported yet: {reason}").format(family=v.family,
                                                                     reason=v.reason)
        return tr("{family}: supported ({methods})").format(
            family=v.family, methods=", ".join(v.supported)) + "".join(
            tr("; not {method}: {reason}").format(method=m, reason=r) for m, r in v.refused)
    if v.kind == "unknown":
        return tr("{label}: unknown (no config.json widths and no parameter count)").format(
            label=v.label)
    if v.kind == "unsupported":
        return tr("{label}: {reason}").format(label=v.label, reason=v.reason)
    size = format_size(v.size_bytes or 0)
    head = (tr("{label} ≈ {size} (from the parameter count)") if v.from_params
            else tr("{label} ≈ {size}")).format(label=v.label, size=size)
    need = format_size(v.need_bytes or 0)
    if v.kind == "too_large":
        return tr("{head}: too large: needs {need}").format(head=head, need=need)
    if v.kind == "cannot_quantize":
        return tr("{head}: runs here, but quantizing it needs {need} of memory, more than "
                  "this machine has").format(head=head, need=need)
    if v.kind == "fits_gpu":
        if v.context is not None:
            return tr("{head} on the GPU: fits with {context} context").format(
                head=head, context=ctx_label(v.context))
        return tr("{head}: runs on the GPU").format(head=head)
    if through_transformers(v):
        return tr("{head}: no GPU for it here; runs in RAM (slowly, through "
                  "transformers)").format(head=head)
    return tr("{head}: runs in RAM").format(head=head)


def linkify(message: str) -> str:
    """A plain message as rich text whose web addresses are links."""
    return _URL.sub(lambda m: f'<a href="{m.group(0)}">{m.group(0)}</a>',
                    html.escape(message, quote=False)).replace("\n", "<br>")


def _row(model: Any, machine: Any) -> HubRow:
    from qtapp.engine.hub.verdicts import compat_verdict, fit_verdicts

    return HubRow(model, fit_verdicts(model, machine), compat_verdict(model))


def _rows(models: list[Any], machine: Any) -> list[HubRow]:
    return [_row(m, machine) for m in models]


def _this_machine(machine: Any) -> Any:
    """The scanned machine, else a quick scan without torch (on the task's thread)."""
    if machine is not None:
        return machine
    from qtapp.engine.planning.hardware import detect

    return detect(use_torch=False)


def _complete_rows(ctx: Any, rows: list[HubRow], machine: Any, timeout: float) -> None:
    """On the task's thread: each model with its full config.json, reported as ("row", i,
    HubRow) until the search is cancelled. A model whose config.json cannot be read keeps
    its unknown verdicts."""
    from qtapp.engine.hub.search import with_full_config

    for i, row in enumerate(rows):
        if ctx.cancelled.is_set():
            return
        try:
            full = with_full_config(row.model, timeout=timeout)  # no request when complete
        except UserError:
            continue
        if full.config != row.model.config:
            ctx.report(("row", i, _row(full, machine)))


class HubBrowser(QWidget):
    """Search box, results with verdicts, and the download of the chosen model."""

    chosen = Signal(str)  # a repo id, when a row is selected
    downloaded = Signal(str, object)  # repo id, the local snapshot folder (Path)

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.timeout_s = HUB_TIMEOUT_S
        self.rows: list[HubRow] = []
        self.offline: str | None = None
        self.search_task: Task | None = None
        self.download_task: Task | None = None
        self.download_repo: str | None = None
        self.interrupted: set[str] = set()  # repos with partial files kept for a resume
        self.last_progress: Any = None
        self._search_id = 0
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(8)

        self.query = QLineEdit()
        self.query.setPlaceholderText(tr("Search the Hub, e.g. qwen"))
        self.query.returnPressed.connect(self.search)
        self.author = QLineEdit()
        self.author.setPlaceholderText(tr("Author (optional)"))
        self.author.returnPressed.connect(self.search)
        self.sort = QComboBox()
        for key, text in SORTS:
            self.sort.addItem(tr(text), key)
        self.search_button = button(tr("Search"), "primary")
        self.search_button.clicked.connect(self.search)
        bar = QHBoxLayout()
        bar.addWidget(self.query, 3)
        bar.addWidget(self.author, 2)
        bar.addWidget(self.sort)
        bar.addWidget(self.search_button)
        self.endpoint_button = button(tr("Hub address…"))
        self.endpoint_button.clicked.connect(self.ask_endpoint)
        bar.addWidget(self.endpoint_button)
        layout.addLayout(bar)
        self.status = label("", "Muted", wrap=True)
        layout.addWidget(self.status)

        self.table = QTableWidget(0, 0)
        self._set_columns([])
        self.table.setWordWrap(False)
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.setShowGrid(False)
        self.table.setAlternatingRowColors(True)
        self.table.setMinimumHeight(160)
        fit_columns(self.table, stretch=0)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        layout.addWidget(self.table, 1)
        self.detail = label("", wrap=True)
        self.detail.setTextFormat(Qt.TextFormat.RichText)
        layout.addWidget(self.detail)

        self.download_button = button(tr("Download"), "primary")
        self.download_button.setEnabled(False)
        self.download_button.clicked.connect(self.download)
        self.cancel_button = button(tr("Cancel"))
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel_download)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setVisible(False)
        actions = QHBoxLayout()
        actions.addWidget(self.download_button)
        actions.addWidget(self.cancel_button)
        actions.addWidget(self.progress, 1)
        layout.addLayout(actions)
        self.download_status = label("", "Muted", wrap=True)
        self.download_status.setTextFormat(Qt.TextFormat.RichText)
        self.download_status.setOpenExternalLinks(True)
        self.download_status.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextBrowserInteraction)
        layout.addWidget(self.download_status)

        saved = str(QSettings().value(ENDPOINT_SETTING, "") or "")
        if saved:
            self.set_endpoint(saved)
        self._show_endpoint()
        self.watchdog = QTimer(self)
        self.watchdog.setSingleShot(True)
        self.watchdog.timeout.connect(self._search_timed_out)

    # -- the Hub's address ---------------------------------------------------------------

    def ask_endpoint(self) -> None:
        from qtapp.engine.hub.settings import endpoint

        text, ok = QInputDialog.getText(
            self, tr("Hub address"), tr("The Hugging Face Hub or a mirror of it, e.g. "
                                        "https://hf-mirror.com (empty: huggingface.co):"),
            text=endpoint())
        if ok:
            self.set_endpoint(text)

    def set_endpoint(self, url: str) -> bool:
        """Use ``url`` for every Hub request of this process and the workers it starts
        (engine.hub.settings.set_endpoint) and keep it for the next start."""
        from qtapp.engine.hub.settings import set_endpoint
        from qtapp.engine.model.hub_files import DEFAULT_ENDPOINT

        try:
            used = set_endpoint(url)
        except UserError as e:
            self._show_error(self.status, e)
            return False
        QSettings().setValue(ENDPOINT_SETTING, "" if used == DEFAULT_ENDPOINT else used)
        self._show_endpoint()
        return True

    def _show_endpoint(self) -> None:
        from qtapp.engine.hub.settings import endpoint

        self.endpoint_button.setToolTip(tr("Hub address: {url}").format(url=endpoint()))

    def resizeEvent(self, event: Any) -> None:
        super().resizeEvent(event)
        self._hide_narrow_columns()

    def _hide_narrow_columns(self) -> None:
        for column, width in NARROW_HIDDEN.items():
            self.table.setColumnHidden(column, self.width() < width)

    # -- search ------------------------------------------------------------------------

    def search(self) -> None:
        """Search the Hub off the UI thread; a search in flight is superseded. The list comes
        first; each model's config.json (one small request each) then turns its verdicts
        from unknown into the planner's answers, row by row."""
        query, author = self.query.text().strip(), self.author.text().strip() or None
        sort, timeout = self.sort.currentData(), self.timeout_s
        machine = self.state.hardware
        self._search_id += 1
        search_id = self._search_id
        if self.search_task is not None:
            self.search_task.cancel()

        def work(ctx: Any) -> None:
            from qtapp.engine.hub.search import HubUnavailable, cached_models, search_models

            try:
                models = search_models(query, author=author, sort=sort, timeout=timeout)
            except HubUnavailable as e:
                ctx.report(("answered",))
                ctx.report(("list", _rows(cached_models(), _this_machine(machine)), str(e)))
                return
            ctx.report(("answered",))  # the verdicts below take no request
            hw = _this_machine(machine)
            rows = _rows(models, hw)
            ctx.report(("list", rows, None))
            _complete_rows(ctx, rows, hw, timeout)

        set_role(self.status, "Muted")
        self.status.setText(tr("Searching the Hub…"))
        self.search_task = self.state.background.run(
            work, lambda _none: self._search_ended(search_id),
            lambda error: self._search_failed(search_id, error),
            lambda value: self._search_progress(search_id, value))
        self.watchdog.start(int(timeout * 1000) + 500)

    def _search_progress(self, search_id: int, value: tuple) -> None:
        if search_id != self._search_id:
            return  # superseded, or abandoned after the timeout
        if value[0] == "answered":
            self.watchdog.stop()
            self.status.setText(tr("Checking what fits this machine…"))
        elif value[0] == "list":
            self.watchdog.stop()
            self.show_rows(value[1], value[2])
            if value[2] is None and self.rows:
                self.status.setText(tr("{n} models. Reading each model's config.json to see "
                                       "what fits this machine…").format(n=len(self.rows)))
        else:
            _, i, row = value
            self.rows[i] = row
            self._fill(i, row)
            if self.selected() is row:
                self._selection_changed()

    def _search_ended(self, search_id: int) -> None:
        if search_id != self._search_id:
            return
        self.search_task = None
        self.watchdog.stop()
        if self.offline is None:
            set_role(self.status, "Muted")
            self.status.setText(tr("{n} models. Select one to see what fits this machine.")
                                .format(n=len(self.rows)) if self.rows else
                                tr("No model matches."))

    def _search_failed(self, search_id: int, error: BaseException) -> None:
        if search_id != self._search_id:
            return
        self.watchdog.stop()
        self.search_task = None
        self._show_error(self.status, error)

    def _search_timed_out(self) -> None:
        """The Hub did not answer in time: abandon that search, list the local cache."""
        if self.search_task is not None:
            self.search_task.cancel()
            self.search_task = None
        self._search_id += 1
        search_id = self._search_id
        reason = tr("The Hub did not answer in {s:g} s. Check the connection, the proxy or "
                    "the Hub address (HF_ENDPOINT), or search again later.").format(
                        s=self.timeout_s)
        machine = self.state.hardware

        def work(ctx: Any) -> None:
            from qtapp.engine.hub.search import cached_models

            ctx.report(("list", _rows(cached_models(), _this_machine(machine)), reason))

        self.show_rows([], reason)
        self.search_task = self.state.background.run(
            work, lambda _none: self._search_ended(search_id),
            lambda error: self._search_failed(search_id, error),
            lambda value: self._search_progress(search_id, value))

    def show_rows(self, rows: list[HubRow], offline: str | None = None) -> None:
        self.rows, self.offline = rows, offline
        self._set_columns(rows)
        self.table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            self._fill(i, row)
        self.table.resizeRowsToContents()
        if offline is not None:
            set_role(self.status, "WarnText")
            self.status.setText("⚠ " + tr("{reason} Showing the {n} models in the local "
                                          "cache.").format(reason=offline, n=len(rows)))
        else:
            set_role(self.status, "Muted")
            self.status.setText(tr("{n} models. Select one to see what fits this machine.")
                                .format(n=len(rows)) if rows else tr("No model matches."))
        self._selection_changed()

    def _set_columns(self, rows: list[HubRow]) -> None:
        """The fixed columns, one per method the verdicts answer for, then Supported."""
        verdicts = rows[0].verdicts if rows else []
        labels = [tr(c) for c in COLUMNS] + [_short(v) for v in verdicts] + [tr("Supported")]
        self.table.setColumnCount(len(labels))
        self.table.setHorizontalHeaderLabels(labels)
        self._hide_narrow_columns()
        for j, v in enumerate(verdicts):
            self.table.horizontalHeaderItem(len(COLUMNS) + j).setToolTip(
                tr("Fits this machine: {method}").format(method=v.label))

    def _fill(self, i: int, row: HubRow) -> None:
        m = row.model
        updated = m.last_modified.strftime("%Y-%m-%d") if m.last_modified else "—"
        licence = m.license or "—"
        if m.gated:
            licence += " · " + tr("gated")
        name = m.repo_id + ("  ·  " + tr("in the cache") if m.cached else "")
        cells = [name, format_params(m.params) if m.params else "—",
                 format_count(m.downloads) if m.downloads is not None else "—",
                 licence, updated]
        for c, text in enumerate(cells):
            item = QTableWidgetItem(text)
            item.setToolTip(m.repo_id if c == 0 else "")
            self.table.setItem(i, c, item)
        answer = {True: tr("yes"), False: tr("no"), None: tr("unknown")}[row.compat.fits]
        marks = [(verdict_mark(v.fits), v) for v in row.verdicts]
        marks.append((f"{verdict_mark(row.compat.fits)} {answer}", row.compat))
        for j, (text, v) in enumerate(marks):
            item = QTableWidgetItem(text)
            item.setForeground(QColor(verdict_color(v.fits)))
            item.setToolTip(verdict_text(v))
            item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
            self.table.setItem(i, len(COLUMNS) + j, item)

    def selected(self) -> HubRow | None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        return self.rows[min(rows)] if rows else None

    def select(self, repo_id: str) -> None:
        for i, row in enumerate(self.rows):
            if row.model.repo_id == repo_id:
                self.table.selectRow(i)

    def _selection_changed(self) -> None:
        row = self.selected()
        busy = self.download_task is not None
        self.download_button.setEnabled(row is not None and not busy)
        if row is None:
            self.detail.setText("")
            return
        m = row.model
        facts = [tr("{n} parameters").format(n=format_params(m.params)) if m.params else "",
                 tr("{n} downloads").format(n=format_count(m.downloads))
                 if m.downloads is not None else "",
                 m.license or "", _gated_text(m.gated),
                 tr("updated {date}").format(date=m.last_modified.strftime("%Y-%m-%d"))
                 if m.last_modified else ""]
        lines = [f'<b>{html.escape(m.repo_id)}</b> &nbsp; '
                 + html.escape(" · ".join(f for f in facts if f))]
        for v in [*row.verdicts, row.compat]:
            lines.append(f'<span style="color:{verdict_color(v.fits)}">'
                         f'{verdict_mark(v.fits)} {html.escape(verdict_text(v))}</span>')
        self.detail.setText("<br>".join(lines))
        if not busy:
            self.download_button.setText(
                tr("Resume download") if row.model.repo_id in self.interrupted
                else tr("Download"))
        self.chosen.emit(row.model.repo_id)

    # -- download ----------------------------------------------------------------------

    def download(self) -> None:
        """Plan the files, check the disk, then download with progress; cancel keeps the
        partial files so that Resume continues where it stopped."""
        row = self.selected()
        if row is None or self.download_task is not None:
            return
        repo_id, timeout = row.model.repo_id, self.timeout_s

        def work(ctx: Any) -> Path:
            from qtapp.engine.hub.download import check_disk, download, plan_download

            plan = plan_download(repo_id, timeout=timeout)
            check_disk(plan)  # refuses before the first byte
            ctx.report(plan)
            return download(plan, on_progress=ctx.report, should_cancel=ctx.cancelled.is_set)

        self.download_repo = repo_id
        self.last_progress = None
        self.download_button.setEnabled(False)
        self.cancel_button.setVisible(True)
        self.cancel_button.setEnabled(True)
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)
        set_role(self.download_status, "Muted")
        self.download_status.setText(html.escape(
            tr("Listing the files of {repo} and checking the disk…").format(repo=repo_id)))
        self.download_task = self.state.background.run(
            work, self._downloaded, self._download_failed, self._download_progress)

    def _download_progress(self, value: Any) -> None:
        if hasattr(value, "total_bytes") and hasattr(value, "files"):  # the plan
            self.progress.setRange(0, 1000)
            self.progress.setValue(0)
            skipped = len(value.skipped)
            self.download_status.setText(html.escape(
                tr("Downloading {n} files, {total}; {skipped} files quantizing does not need "
                   "are skipped.").format(n=len(value.files), total=format_size(value.total_bytes),
                                      skipped=skipped)))
            return
        self.last_progress = value
        total = max(value.total_bytes, 1)
        self.progress.setRange(0, 1000)
        self.progress.setValue(int(1000 * value.done_bytes / total))
        eta = (format_duration(value.eta_s) if value.eta_s is not None else "—")
        self.download_status.setText(html.escape(
            tr("{done} of {total} · {speed}/s · {eta} left · {file}").format(
                done=format_size(value.done_bytes), total=format_size(value.total_bytes),
                speed=format_size(value.speed_bps or 0), eta=eta,
                file=value.current_file or "")))

    def cancel_download(self) -> None:
        if self.download_task is not None:
            self.download_task.cancel()
            self.cancel_button.setEnabled(False)
            self.download_status.setText(html.escape(tr("Stopping the download…")))

    def _download_ended(self) -> str:
        repo_id = self.download_repo or ""
        self.download_task = None
        self.cancel_button.setVisible(False)
        self.progress.setVisible(False)
        self._selection_changed()
        return repo_id

    def _downloaded(self, folder: Path) -> None:
        """Complete (a cancel raises Cancelled; one that came too late changes nothing)."""
        repo_id = self._download_ended()
        self.interrupted.discard(repo_id)
        self._selection_changed()
        set_role(self.download_status, "OkText")
        self.download_status.setText(html.escape(
            tr("✓ Downloaded {repo} to {folder}").format(repo=repo_id, folder=folder)))
        self.downloaded.emit(repo_id, Path(folder))

    def _paused(self, repo_id: str) -> None:
        self.interrupted.add(repo_id)
        self._selection_changed()
        set_role(self.download_status, "WarnText")
        done = self.last_progress.done_bytes if self.last_progress is not None else 0
        self.download_status.setText(html.escape(
            tr("Download stopped; the {done} already fetched are kept, and Resume continues "
               "from there.").format(done=format_size(done))))

    def _download_failed(self, error: BaseException) -> None:
        repo_id = self._download_ended()
        if isinstance(error, Cancelled):
            self._paused(repo_id)
            return
        if self.last_progress is not None and self.last_progress.done_bytes:
            self.interrupted.add(repo_id)  # partial files stay for the resume
            self._selection_changed()
        self._show_error(self.download_status, error, rich=True)

    # -- shared ------------------------------------------------------------------------

    def _show_error(self, target: QLabel, error: BaseException, rich: bool = False) -> None:
        message = str(error) if isinstance(error, UserError) else tr(
            "The Hub request failed: {kind}: {error}").format(kind=type(error).__name__,
                                                            error=error)
        set_role(target, "ErrorText")
        target.setText("⚠ " + (linkify(message) if rich else message))

    def table_text(self) -> list[list[str]]:
        """The header and each row's cells, as text."""
        columns = range(self.table.columnCount())
        return [[self.table.horizontalHeaderItem(c).text() for c in columns]] + [
            [self.table.item(r, c).text() for c in columns] for r in range(self.table.rowCount())]


def _short(verdict: Any) -> str:
    """'Q4_K_M', 'GPTQ', 'AWQ': a verdict's GGUF type or method, short enough for a column
    header."""
    if verdict.method == "gguf":
        return str(verdict.label).split()[-1]
    return str(verdict.method).upper()


def _gated_text(gated: bool | str) -> str:
    """'' for an open model; 'gated (manual approval)' / 'gated (automatic approval)'."""
    if not gated:
        return ""
    if gated == "manual":
        return tr("gated: the authors approve each request")
    return tr("gated: accept the licence on its page first")
