"""Which data a checkpoint's lineage records, so any checkpoint can be evaluated where it was made.

Four kinds of checkpoint record their data differently:

- a **stage-1 run** (``microgpt train``, a pipeline's ``stage1/``): ``run_config.yaml`` has a ``data:`` section and
  the run folder its prepared shards (``<run>/data``);
- a **fine-tuned ingredient** (``microgpt finetune``, a pipeline's ``stage2/<name>``): ``run_config.yaml`` is a
  fine-tuning config (``data_dir``, ``eval_data_dir``), bare or under ``finetune:``; its data is the stage-2
  evaluation folder (``eval_data_dir``, else ``data_dir``), the documents its validation loss was measured on;
- a **soup** (``microgpt soup``, a pipeline's ``soups/``): ``meta.json`` lists its ingredients
  (``soup.ingredient_paths``); its data is theirs, found by following them (chosen ingredients first);
- an **import** (``microgpt import``): records nothing, and evaluation needs ``--data``.

Recorded folders are paths as the run was given them; a relative one is looked up from the working directory,
then from each folder above the checkpoint (the run may have been started one level up, or moved whole).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from microgpt.common.checkpoint import read_meta, resolve_checkpoint
from microgpt.common.config import validate_config
from microgpt.common.errors import MicrogptError
from microgpt.data.config import DataConfig
from microgpt.data.manifest import MANIFEST

_NO_DATA_FIX = "pass --data with a prepared data folder (manifest.json) or a YAML with a data section"


@dataclass(frozen=True)
class RecordedData:
    """The data a checkpoint's lineage points to: a prepared folder, or a data config to prepare.

    Attributes:
        kind: ``stage1``, ``finetune`` or ``soup`` (the checkpoint whose record was used is ``source``).
        folder: A prepared data folder (``manifest.json``), or ``None`` when only ``config`` is known.
        config: The stage-1 data config (to prepare when its shards are gone), else ``None``.
        source: The step directory that recorded it (for a soup: the ingredient).
    """

    kind: str
    folder: Path | None
    config: DataConfig | None
    source: Path


def _read_run_config(step_dir: Path) -> dict[str, Any]:
    path = step_dir / "run_config.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise MicrogptError(f"{path}: unreadable ({str(error).splitlines()[0]}); {_NO_DATA_FIX}") from None
    return data if isinstance(data, dict) else {}


def _find_folder(recorded: str, step_dir: Path) -> Path | None:
    """The recorded data folder as it exists now (see the module docstring), or ``None``."""
    path = Path(recorded)
    candidates = [path]
    if not path.is_absolute():
        candidates += [parent / path for parent in step_dir.resolve().parents]
    return next((c for c in candidates if (c / MANIFEST).is_file()), None)


def recorded_data(checkpoint: str | Path) -> RecordedData:
    """The data a checkpoint's lineage records (see the module docstring).

    Args:
        checkpoint: A step directory, or a run directory (its newest checkpoint).

    Raises:
        MicrogptError: When nothing is recorded (an import), or the recorded folder is gone; the message names
            the checkpoint, what is missing and the ``--data`` fix.
    """
    step_dir = resolve_checkpoint(checkpoint)
    return _recorded_data(step_dir, seen=set())


def _recorded_data(step_dir: Path, seen: set[Path]) -> RecordedData:
    seen.add(step_dir.resolve())
    meta = read_meta(step_dir)
    soup = meta.get("soup")
    if isinstance(soup, dict):
        return _soup_data(step_dir, soup, seen)
    run = _read_run_config(step_dir)
    nested = run.get("finetune")
    finetune: dict[str, Any] = nested if isinstance(nested, dict) else run
    recorded = finetune.get("eval_data_dir") or finetune.get("data_dir")
    if isinstance(recorded, str):
        folder = _find_folder(recorded, step_dir)
        if folder is None:
            gone = f"its stage-2 data folder {recorded} is gone (no {MANIFEST})"
            raise MicrogptError(f"{step_dir}: {gone}; {_NO_DATA_FIX}")
        return RecordedData("finetune", folder, None, step_dir)
    if isinstance(run.get("data"), dict):
        config = validate_config(DataConfig, run["data"])
        own = step_dir.parent.parent / "data"  # <run>/checkpoints/step-N → <run>/data
        return RecordedData("stage1", own if (own / MANIFEST).is_file() else None, config, step_dir)
    source = meta.get("source")
    what = f"imported from {source}" if source else "no data section, no data_dir, no soup ingredients"
    raise MicrogptError(f"{step_dir}: the checkpoint records no data ({what}); {_NO_DATA_FIX}")


def _soup_data(step_dir: Path, soup: dict[str, Any], seen: set[Path]) -> RecordedData:
    paths = soup.get("ingredient_paths")
    if not isinstance(paths, dict) or not paths:
        raise MicrogptError(f"{step_dir}: the soup records no ingredient paths; {_NO_DATA_FIX}")
    chosen = [name for name in soup.get("chosen") or [] if name in paths]
    missing: list[str] = []
    for name in [*chosen, *(n for n in paths if n not in chosen)]:
        path = Path(str(paths[name]))
        found = next((p for p in (path, *(a / path for a in step_dir.resolve().parents)) if p.is_dir()), None)
        if found is None or found.resolve() in seen:
            missing.append(str(path))
            continue
        record = _recorded_data(resolve_checkpoint(found), seen)
        return RecordedData("soup", record.folder, record.config, record.source)
    raise MicrogptError(
        f"{step_dir}: the soup's ingredients are gone ({', '.join(missing[:3])}), so its data is unknown; "
        f"{_NO_DATA_FIX}"
    )
