"""Hand a GGUF output to the apps that run it: LM Studio and Ollama.

    lmstudio_models_dir() -> Path | None     LM Studio's models folder, None when not found
    open_in_lmstudio(gguf, publisher, name, *, link=True) -> Path
        places the file at <models>/<publisher>/<name>/<file>.gguf (the publisher/model
        layout LM Studio lists); a hard link (no second copy) when ``link`` and the disk
        allows, else a copy
    ollama_path() -> str | None              the `ollama` program on PATH
    ollama_modelfile(gguf) -> str            the Modelfile text (FROM <absolute path>)
    ollama_command(gguf, name) -> list[str]  ["ollama", "create", name, "-f", <Modelfile>]
    add_to_ollama(gguf, name) -> str         runs it when ollama is on PATH and returns its
                                             output; else UserError with the command to run
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from qtapp.engine.errors import UserError
from qtapp.engine.gguf.llama_runtime import write_modelfile
from qtapp.engine.outputs import disk_full_error, is_disk_full

OLLAMA_TIMEOUT_S = 600


def _lmstudio_candidates() -> list[Path]:
    """Where LM Studio keeps models: the downloads folder set in its settings.json, its
    default ~/.lmstudio/models (0.3 and later), and ~/.cache/lm-studio/models (before)."""
    home = Path.home()
    out: list[Path] = []
    settings = home / ".lmstudio" / "settings.json"
    try:
        folder = json.loads(settings.read_text(encoding="utf-8")).get("downloadsFolder")
        if isinstance(folder, str) and folder:
            out.append(Path(folder).expanduser())
    except (OSError, ValueError, AttributeError):
        pass
    return out + [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]


def lmstudio_models_dir() -> Path | None:
    """LM Studio's models folder on this machine, None when LM Studio was never started
    here (none of _lmstudio_candidates exists; its parent counts: a fresh install has
    ~/.lmstudio before it has a models folder)."""
    for folder in _lmstudio_candidates():
        if folder.is_dir() or folder.parent.is_dir() and folder.parent.name == ".lmstudio":
            return folder
    return None


def _place(src: Path, dst: Path, link: bool) -> None:
    """``dst`` holds ``src``: a hard link when asked and possible, else a copy written under
    a temporary name and renamed when complete."""
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another disk, or a file system without hard links: copy
    tmp = dst.with_name(f".{dst.name}.partial")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e):
            raise disk_full_error(e, dst.parent, src.name, "Free some space there, or "
                                  "import the file from where it is with `lms import`.") from None
        raise UserError(f"Could not place {src.name} in {dst.parent}: {e}") from None


def open_in_lmstudio(gguf: Path, publisher: str, name: str, *, link: bool = True) -> Path:
    """Place ``gguf`` in LM Studio's models folder as <publisher>/<name>/<file> (the layout
    it lists under My Models) and return that path. A hard link when ``link`` (no second
    copy; LM Studio only reads it), else or across disks a copy. A file already there with
    the same size is kept. UserError when LM Studio's folder is not found."""
    gguf = Path(gguf)
    if not gguf.is_file():
        raise UserError(f"The GGUF file {gguf} does not exist; run the job again or choose "
                        "another result.")
    root = lmstudio_models_dir()
    if root is None:
        looked = ", ".join(str(p) for p in _lmstudio_candidates())
        raise UserError(f"LM Studio's models folder was not found (looked in {looked}). "
                        "Install LM Studio and start it once, or import the file yourself: "
                        f"lms import {gguf}")
    safe = [p.strip().replace("/", "-").replace("\\", "-") or "quantdesk"
            for p in (publisher, name)]
    dst = root / safe[0] / safe[1] / gguf.name
    if dst.is_file() and dst.stat().st_size == gguf.stat().st_size:
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    _place(gguf, dst, link)
    return dst


def ollama_path() -> str | None:
    """The `ollama` program on PATH, else None."""
    return shutil.which("ollama")


def _modelfile_beside(gguf: Path) -> Path:
    """The Modelfile of a QuantDesk GGUF output (the job writes it beside the file, with the
    chat template); written the same way when it is missing."""
    path = gguf.parent / "Modelfile"
    if not path.is_file():
        write_modelfile(gguf.parent, gguf.name, None)
    return path


def ollama_modelfile(gguf: Path) -> str:
    """The Modelfile text for ``gguf``: the one beside it, its FROM made absolute so that it
    works from anywhere."""
    gguf = Path(gguf).resolve()
    beside = gguf.parent / "Modelfile"
    lines = beside.read_text(encoding="utf-8").splitlines() if beside.is_file() else []
    lines = [ln for ln in lines if not ln.startswith("FROM ")]
    return "\n".join([f"FROM {gguf}", *lines]) + "\n"


def ollama_command(gguf: Path, name: str) -> list[str]:
    """The command that adds ``gguf`` to Ollama as ``name``: ollama create NAME -f
    <the Modelfile beside it>."""
    gguf = Path(gguf).resolve()
    return ["ollama", "create", name, "-f", str(_modelfile_beside(gguf))]


def add_to_ollama(gguf: Path, name: str) -> str:
    """Run ``ollama create`` for ``gguf`` (the Modelfile of ollama_modelfile) and return its
    output; UserError with the command to run when ollama is not on PATH or it fails."""
    gguf = Path(gguf)
    if not gguf.is_file():
        raise UserError(f"The GGUF file {gguf} does not exist; run the job again or choose "
                        "another result.")
    program = ollama_path()
    command = " ".join(ollama_command(gguf, name))
    if program is None:
        raise UserError(f"Ollama is not on the PATH. Install it from https://ollama.com, then "
                        f"run: {command}")
    with tempfile.TemporaryDirectory(prefix="quantdesk-ollama-") as tmp:
        modelfile = Path(tmp) / "Modelfile"
        modelfile.write_text(ollama_modelfile(gguf), encoding="utf-8")
        try:
            done = subprocess.run([program, "create", name, "-f", str(modelfile)],
                                  capture_output=True, text=True, timeout=OLLAMA_TIMEOUT_S,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise UserError(f"`ollama create` did not finish ({e}). Is the Ollama server "
                            f"running (ollama serve)? You can also run: {command}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"`ollama create {name}` failed: {tail[0]}. Is the Ollama server "
                        f"running (ollama serve)? You can also run: {command}")
    return (done.stdout or "").strip()
