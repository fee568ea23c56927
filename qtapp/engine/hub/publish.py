"""Publish a QuantDesk output folder to the Hugging Face Hub.

    publish(out_dir, repo_id, *, private=True, token=None, on_progress=None,
            should_cancel=None, base_model=None) -> str   (the repository's URL)

The folder must be a QuantDesk output: its README.md is the model card the job wrote (method,
settings, calibration, the quality gate's figures), tagged `quantdesk`. Its metadata is
updated first with the metadata the Hub links a quantized model by (`base_model: <source id>`,
`base_model_relation: quantized`). The repository is created (private unless ``private`` is
False; an existing one of yours is reused) and the folder uploaded with
huggingface-hub's upload_folder. In huggingface-hub 2.4 that is the resumable one:
upload_large_folder is gone, and with hf_xet installed (a dependency of huggingface-hub)
upload_folder streams the files in several commits and, run again after an interruption,
skips what was committed and deduplicates what was uploaded; so a second publish goes on
from where the first stopped. ``on_progress(message)`` gets short status lines;
``should_cancel()`` is checked between the steps (the upload itself cannot be stopped
half-way from here; stopping the process leaves it resumable). Errors: not logged in →
UserError with the `hf auth login` hint; refused (401/403) → the same with the reason; not
an output folder → says so. ``base_model`` (optional) names the source model on the Hub when
the card cannot tell it (a source that was a local folder outside the Hugging Face cache).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from qtapp.engine.errors import Cancelled, UserError
from qtapp.engine.export.model_card import base_model_of
from qtapp.engine.model import hub_files

IGNORE = [".cache/*", ".*", "*.partial", "*.lock"]
LOGIN_HINT = ("log in on this machine with `hf auth login` (a token with write access, "
              "from https://huggingface.co/settings/tokens)")


def _card(out_dir: Path) -> Path:
    """README.md of a QuantDesk output folder; UserError for any other folder."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UserError(f"{out_dir} is not a folder. Give the output folder of a QuantDesk "
                        "job (the one `quantdesk quantize --out` wrote).")
    if out_dir.name.endswith(".partial"):
        raise UserError(f"{out_dir} is the unfinished folder of a job that did not complete; "
                        "run the job to the end, then publish its output folder.")
    card = out_dir / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    front = text.split("---", 2)[1] if text.startswith("---") else ""
    if not re.search(r"^- quantdesk\s*$", front, re.MULTILINE):
        raise UserError(f"{out_dir} is not a QuantDesk output: it has no model card "
                        "(README.md) written by a QuantDesk job. Publish the folder that "
                        "`quantdesk quantize --out` or the window's run wrote.")
    return card


def card_base_model(card_text: str) -> str | None:
    """The Hub id the output was quantized from, as its card tells it: base_model in the
    metadata, else the source row (export.model_card.base_model_of: a Hub id, or a folder of
    the Hugging Face cache)."""
    meta = re.search(r"^base_model:\s*(\S+)\s*$", card_text, re.MULTILINE)
    if meta:
        return meta.group(1)
    row = re.search(r"^\| source \| `([^`]+)` \|", card_text, re.MULTILINE)
    return base_model_of(row.group(1)) if row else None


def update_card(card: Path, base_model: str | None) -> str | None:
    """Set the card's Hub metadata: base_model and base_model_relation: quantized (through
    huggingface-hub's ModelCard, which keeps the rest). Returns the base model written."""
    from huggingface_hub import ModelCard

    model_card = ModelCard.load(card)
    base = base_model or card_base_model(str(model_card))
    if base:
        model_card.data.base_model = base
        model_card.data.base_model_relation = "quantized"
    tmp = card.with_name(f".{card.name}.partial")
    tmp.write_text(str(model_card), encoding="utf-8")
    os.replace(tmp, card)
    return base


def _hub_error(e: Exception, repo_id: str, base: str) -> UserError:
    from huggingface_hub.errors import HfHubHTTPError

    status = getattr(getattr(e, "response", None), "status_code", 0) \
        if isinstance(e, HfHubHTTPError) else 0
    if status in (401, 403):
        return UserError(f"{base} refused to publish '{repo_id}' (HTTP {status}): the token "
                         f"is not valid or has no write access to '{repo_id.split('/')[0]}'. "
                         f"Check the name, then {LOGIN_HINT}.")
    return hub_files.unavailable(base, e, 30.0) if status == 0 else UserError(
        f"{base} refused to publish '{repo_id}' (HTTP {status}): {str(e).splitlines()[0]}")


def publish(out_dir: Path, repo_id: str, *, private: bool = True, token: str | None = None,
            on_progress: Callable[[str], None] | None = None,
            should_cancel: Callable[[], bool] | None = None,
            base_model: str | None = None) -> str:
    """Upload the QuantDesk output ``out_dir`` to ``repo_id`` (see the module docstring) and
    return the repository's URL. ``base_model`` overrides the source id the card names."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    say = on_progress or (lambda _m: None)
    cancelled = should_cancel or (lambda: False)
    out_dir = Path(out_dir)
    card = _card(out_dir)
    try:
        if repo_id.count("/") != 1:
            raise HFValidationError("give it as USER/NAME or ORG/NAME")
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f"'{repo_id}' is not a valid repository name ({e}); use USER/NAME, "
                        "e.g. me/Qwen2.5-0.5B-Instruct-GPTQ-4bit.") from None
    base = hub_files.endpoint()
    token = token or hub_files.token()
    if not token:
        raise UserError(f"Not logged in to the Hugging Face Hub ({base}): {LOGIN_HINT}, then "
                        "publish again.")
    api = HfApi(endpoint=base, token=token)
    say(f"creating {repo_id} ({'private' if private else 'public'})")
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    except Exception as e:  # noqa: BLE001 - HTTP and network failures all end here
        raise _hub_error(e, repo_id, base) from None
    if cancelled():
        raise Cancelled(f"publishing {repo_id} cancelled")
    written = update_card(card, base_model)
    say("model card updated" + (f" (base model {written})" if written else
                                " (no base model known: the source was a local folder)"))
    if cancelled():
        raise Cancelled(f"publishing {repo_id} cancelled")
    say(f"uploading {out_dir.name}")
    try:
        api.upload_folder(repo_id=repo_id, folder_path=out_dir, repo_type="model",
                          commit_message=f"Upload {out_dir.name} (quantized with QuantDesk)",
                          ignore_patterns=IGNORE)
    except Exception as e:  # noqa: BLE001 - HTTP and network failures all end here
        raise _hub_error(e, repo_id, base) from None
    say("published")
    return f"{base}/{repo_id}"
