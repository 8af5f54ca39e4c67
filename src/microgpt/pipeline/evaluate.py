"""Scoring a model on a split of a prepared data folder: mean loss per token and bits per byte.

The same numbers the trainer logs for validation, computed outside a training run, so stage-1, each ingredient
and each soup are measured by one function on the same windows of the same split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from microgpt.common.checkpoint import load_model_weights
from microgpt.common.errors import MicrogptError
from microgpt.data.config import Split
from microgpt.data.manifest import Manifest
from microgpt.model.finetune import bits_per_byte, read_model_config
from microgpt.model.gpt import GPT


@dataclass(frozen=True)
class SplitScore:
    """A model's score on one split.

    Attributes:
        loss: Mean cross-entropy per target token (nats).
        bpb: Bits per byte of the split's text (comparable across tokenizers).
        tokens: Target tokens scored.
    """

    loss: float
    bpb: float
    tokens: int


def load_gpt(step_dir: Path, device: torch.device | str = "cpu") -> GPT:
    """Build the GPT of a checkpoint step directory and load its weights, in eval mode.

    Raises:
        CheckpointError: When the config or the weights are missing, corrupt or do not fit.
    """
    model = GPT(read_model_config(step_dir))
    load_model_weights(model, step_dir)
    return model.to(device).eval()


@torch.no_grad()
def evaluate_split(
    model: GPT,
    data_dir: Path,
    split: Split,
    *,
    batch_size: int = 16,
    max_batches: int | None = None,
    device: torch.device | str = "cpu",
) -> SplitScore:
    """Score ``model`` on ``split`` of ``data_dir``: all its non-overlapping windows of ``block_size`` tokens, in order.

    Args:
        model: The model (put in eval mode here).
        data_dir: A prepared data folder (``manifest.json``) made with the model's tokenizer.
        split: ``train``, ``val`` or ``test``.
        batch_size: Windows per forward pass.
        max_batches: Score only the first batches (None: the whole split).
        device: Where the batches go (the model must already be there).

    Returns:
        The mean loss per target token and bits per byte.

    Raises:
        MicrogptError: When the split is empty or too short for one window.
    """
    from microgpt.data.loader import TokenLoader

    loader = TokenLoader(
        data_dir, split, batch_size, model.config.block_size, shuffle=False, prefetch=0, device=torch.device(device)
    )
    model.eval()
    total, count = 0.0, 0
    for x, y in loader.eval_batches(max_batches):
        _, loss = model(x, y)
        assert loss is not None
        n = int(y.numel())
        total += float(loss.double()) * n
        count += n
    if count == 0:
        raise MicrogptError(f"{data_dir}: the {split} split is empty: nothing to evaluate")
    mean = total / count
    bpb = bits_per_byte(mean, Manifest.load(data_dir), split)
    return SplitScore(loss=mean, bpb=bpb if bpb is not None else float("nan"), tokens=count)


def score_state_dict(
    model: GPT,
    state: Mapping[str, torch.Tensor],
    data_dir: Path,
    split: Split,
    *,
    batch_size: int = 16,
    max_batches: int | None = None,
    device: torch.device | str = "cpu",
) -> SplitScore:
    """Load ``state`` into ``model`` (same architecture, already on ``device``) and score it on ``split``."""
    model.load_state_dict(dict(state), strict=True)
    return evaluate_split(model, data_dir, split, batch_size=batch_size, max_batches=max_batches, device=device)
