"""HellaSwag's questions: the rowanz/hellaswag jsonl file found or downloaded, read and checked line by line.

The standard file is rowanz/hellaswag's ``hellaswag_val.jsonl`` (10,042 items); pass a local path or let
:func:`resolve_hellaswag_file` download and cache it. Scoring the items is :mod:`microgpt.eval.hellaswag`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from microgpt.common.aio import download, run_sync
from microgpt.common.errors import MicrogptError
from microgpt.common.log import get_logger

log = get_logger(__name__)

HELLASWAG_VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
N_ENDINGS = 4
MAX_FILE_BYTES = 64 << 20  # the val file is ~12 MB; anything far larger is not HellaSwag


@dataclass(frozen=True)
class HellaSwagItem:
    """One question: a context, four candidate endings and the index of the right one."""

    ind: int
    context: str
    endings: tuple[str, str, str, str]
    label: int
    activity_label: str | None = None  # the parts the harness rendering needs (None: the file lacks them)
    ctx_a: str = ""
    ctx_b: str = ""


def _parse_line(line: str, where: str) -> HellaSwagItem:
    """Validate one jsonl line of the rowanz format; ``where`` is ``path:line`` for the error message."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as error:
        raise MicrogptError(f"{where}: not valid JSON ({error.msg})") from None
    if not isinstance(raw, dict):
        raise MicrogptError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    missing = [key for key in ("ctx", "endings", "label") if key not in raw]
    if missing:
        raise MicrogptError(f"{where}: missing key(s) {', '.join(missing)} (is this a HellaSwag jsonl file?)")
    context, endings, label = raw["ctx"], raw["endings"], raw["label"]
    if not isinstance(context, str):
        raise MicrogptError(f"{where}: 'ctx' must be a string")
    if not isinstance(endings, list) or len(endings) != N_ENDINGS or not all(isinstance(e, str) and e for e in endings):
        raise MicrogptError(f"{where}: 'endings' must be a list of {N_ENDINGS} non-empty strings")
    # bool is an int in Python; a label of `true` is still malformed.
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < N_ENDINGS:
        raise MicrogptError(f"{where}: 'label' must be an integer 0-{N_ENDINGS - 1}, got {label!r}")
    ind = raw.get("ind", -1)
    parts = [raw.get(key) for key in ("activity_label", "ctx_a", "ctx_b")]
    activity, ctx_a, ctx_b = (p if isinstance(p, str) else None for p in parts)
    return HellaSwagItem(
        ind=ind if isinstance(ind, int) else -1,
        context=context,
        endings=(endings[0], endings[1], endings[2], endings[3]),
        label=label,
        activity_label=activity if ctx_a is not None else None,
        ctx_a=ctx_a or "",
        ctx_b=ctx_b or "",
    )


def load_hellaswag(path: str | Path, limit: int | None = None) -> list[HellaSwagItem]:
    """Read HellaSwag items from a jsonl file in the rowanz/hellaswag format.

    Args:
        path: A ``.jsonl`` file: one object per line with ``ctx``, ``endings`` (4 strings) and ``label`` (0-3).
        limit: Read only the first ``limit`` items.

    Returns:
        The items in file order.

    Raises:
        MicrogptError: When the file is missing, unreadable, empty, or a line is malformed (the message names the
            line number).
    """
    path = Path(path)
    items: list[HellaSwagItem] = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if limit is not None and len(items) >= limit:
                    break
                if line.strip():
                    items.append(_parse_line(line, f"{path}:{number}"))
    except FileNotFoundError:
        raise MicrogptError(f"HellaSwag file not found: {path}") from None
    except UnicodeDecodeError as error:
        raise MicrogptError(f"{path}: not valid UTF-8 at byte {error.start}") from None
    except OSError as error:
        raise MicrogptError(f"cannot read {path}: {error.strerror or error}") from None
    if not items:
        raise MicrogptError(f"{path}: no HellaSwag items found")
    return items


def resolve_hellaswag_file(source: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """Return a local HellaSwag file: ``source`` itself, or a URL downloaded into microgpt's cache.

    Args:
        source: A local path, an ``http(s)://`` URL, or ``None`` for the standard validation file
            (:data:`HELLASWAG_VAL_URL`).
        cache_dir: Download cache (default ``$MICROGPT_CACHE_DIR`` or ``~/.cache/microgpt``).

    Raises:
        DownloadError: When the download fails.
    """
    if source is None:
        source = HELLASWAG_VAL_URL
    text = str(source)
    if text.startswith(("http://", "https://")):
        log.info("HellaSwag: fetching %s (cached after the first time)", text)
        return run_sync(download(text, cache_dir=cache_dir, max_bytes=MAX_FILE_BYTES))
    return Path(source)
