"""Loss on a split of prepared data: of a model in memory, of a state dict, or of a checkpoint on disk.

The pipeline scores stage 1, each ingredient and each soup with :func:`evaluate_split` on the same windows of the
same split; ``microgpt eval`` and the API call :func:`evaluate_checkpoint`, which finds the data a checkpoint's
lineage records. All of them count with the one loop, :func:`microgpt.common.loss_eval.evaluate`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from microgpt.common.config import load_yaml, validate_config
from microgpt.common.errors import MicrogptError
from microgpt.common.loss_eval import Evaluation, evaluate
from microgpt.data.config import Split
from microgpt.data.manifest import Manifest
from microgpt.model.api import LoadedModel, load_model
from microgpt.model.gpt import GPT


@torch.no_grad()
def evaluate_split(
    model: GPT,
    data_dir: Path,
    split: Split,
    *,
    batch_size: int = 16,
    max_batches: int | None = None,
    device: torch.device | str = "cpu",
) -> Evaluation:
    """Score ``model`` on ``split`` of ``data_dir``: all its non-overlapping windows of ``block_size`` tokens, in order.

    Args:
        model: The model (put in eval mode here).
        data_dir: A prepared data folder (``manifest.json``) made with the model's tokenizer.
        split: ``train``, ``val`` or ``test``.
        batch_size: Windows per forward pass.
        max_batches: Score only the first batches (None: the whole split).
        device: Where the batches go (the model must already be there).

    Returns:
        The mean loss per target token, bits per byte (None when the split records no bytes) and tokens scored.

    Raises:
        MicrogptError: When the split is empty or too short for one window (from :func:`loss_eval.evaluate`).
    """
    from microgpt.data.loader import TokenLoader

    loader = TokenLoader(
        data_dir, split, batch_size, model.config.block_size, shuffle=False, prefetch=0, device=torch.device(device)
    )
    return evaluate(
        model,
        loader.eval_batches(max_batches),
        text_size=Manifest.load(data_dir).text_size(split),
        name=f"{data_dir}: the {split} split",
    )


def score_state_dict(
    model: GPT,
    state: Mapping[str, torch.Tensor],
    data_dir: Path,
    split: Split,
    *,
    batch_size: int = 16,
    max_batches: int | None = None,
    device: torch.device | str = "cpu",
) -> Evaluation:
    """Load ``state`` into ``model`` (same architecture, already on ``device``) and score it on ``split``."""
    model.load_state_dict(dict(state), strict=True)
    return evaluate_split(model, data_dir, split, batch_size=batch_size, max_batches=max_batches, device=device)


def eval_data_dir(loaded: LoadedModel, data: str | Path | None = None) -> Path:
    """The prepared data folder to evaluate a checkpoint on.

    Args:
        loaded: The checkpoint (its tokenizer prepares data when shards must be made).
        data: A prepared data folder (used as is), a YAML with a ``data:`` section or a bare data config
            (prepared once into microgpt's cache), or ``None`` for what the checkpoint's lineage records
            (:func:`~microgpt.eval.lineage.recorded_data`: a stage-1 run's data, a fine-tune's or a soup's stage-2
            folder).

    Raises:
        MicrogptError: When ``data`` is a folder without ``manifest.json``, or nothing is given or recorded.
    """
    from microgpt.common.aio import default_cache_dir
    from microgpt.data import DataConfig, prepare_data
    from microgpt.data.manifest import MANIFEST
    from microgpt.eval.lineage import recorded_data

    if data is not None and Path(data).is_dir():
        if not (Path(data) / MANIFEST).is_file():
            raise MicrogptError(
                f"{data}: not a prepared data folder (no {MANIFEST}): pass a folder `microgpt data prepare` wrote, "
                "or a YAML with a data section"
            )
        return Path(data)
    if data is not None:
        raw = load_yaml(data)
        config = validate_config(DataConfig, raw["data"] if isinstance(raw.get("data"), dict) else raw)
    else:
        record = recorded_data(loaded.checkpoint)
        if record.folder is not None:
            return record.folder
        assert record.config is not None  # a stage-1 record without its shards
        config = record.config
    key = json.dumps([config.to_dict(), loaded.tokenizer.fingerprint], sort_keys=True)
    data_dir = default_cache_dir() / "eval-data" / hashlib.sha256(key.encode()).hexdigest()[:16]
    prepare_data(config, loaded.tokenizer, data_dir)
    return data_dir


@dataclass
class EvalResult:
    """Validation loss of a checkpoint on a split (or its first batches).

    Attributes:
        loss: Mean loss over the scored target tokens, nats/token.
        bits_per_byte: ``loss`` converted with the split's bytes per token.
        tokens: Target tokens scored (fewer than the split's with ``max_batches``).
        split_tokens: Tokens in the whole split.
        split_bytes: UTF-8 bytes of the whole split.
    """

    loss: float
    bits_per_byte: float
    tokens: int
    split_tokens: int
    split_bytes: int

    @property
    def partial(self) -> bool:
        """Whether fewer targets were scored than the split has (``max_batches`` stopped early)."""
        return self.tokens < self.split_tokens - 1  # a split of n tokens has n - 1 targets at most


@torch.no_grad()
def evaluate_checkpoint(
    path: str | Path,
    *,
    data_config: Path | None = None,
    split: Literal["val", "test"] = "val",
    batch_size: int = 16,
    max_batches: int | None = None,
    device: str = "auto",
) -> EvalResult:
    """Mean loss (nats/token) and bits per byte of a checkpoint on a split of a data config.

    Args:
        path: Checkpoint or run directory.
        data_config: A prepared data folder (``manifest.json``), or a YAML with a ``data:`` section (a run or
            prepare config) or a bare data config; default: the data the checkpoint's lineage records
            (:func:`eval_data_dir`).
        split: ``val`` or ``test``.
        batch_size: Sequences per batch.
        max_batches: Evaluate only this many batches (None: the whole split).
        device: Where to run.

    Raises:
        MicrogptError: When no data is given or recorded, the config has no data section, or the split is empty.
    """
    if split not in {"val", "test"}:
        raise MicrogptError(f"split must be val or test, got {split!r}")
    loaded = load_model(path, device=device)
    data_dir = eval_data_dir(loaded, data_config)
    manifest = Manifest.load(data_dir)
    if manifest.tokenizer.fingerprint != loaded.tokenizer.fingerprint:
        raise MicrogptError(f"{data_dir}: shards were made by another tokenizer than the checkpoint's")
    score = evaluate_split(
        loaded.model, data_dir, split, batch_size=batch_size, max_batches=max_batches, device=loaded.device
    )
    tokens, nbytes = manifest.text_size(split)
    bpb = score.bits_per_byte if score.bits_per_byte is not None else float("nan")
    return EvalResult(loss=score.loss, bits_per_byte=bpb, tokens=score.tokens, split_tokens=tokens, split_bytes=nbytes)
