"""The one evaluation loop: mean loss per target token over batches, and its bits per byte.

Every score microgpt reports comes from :func:`evaluate`: the trainer's periodic validation, the pipeline's
scoring of checkpoints and soups, ``microgpt eval`` and the Python API. Targets equal to ``-1`` (the loss's
``ignore_index``, used to pad the last batch) are not counted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn

from microgpt.common.errors import MicrogptError

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


@dataclass(frozen=True)
class Evaluation:
    """A model's score on some batches.

    Attributes:
        loss: Mean cross-entropy per target token (nats).
        bits_per_byte: ``loss`` per UTF-8 byte of text, in bits (comparable across tokenizers); None when the
            bytes per token of the text are unknown.
        tokens: Target tokens scored (across all ranks).
    """

    loss: float
    bits_per_byte: float | None
    tokens: int


def bits_per_byte(loss: float, tokens: int, n_bytes: int) -> float | None:
    """Convert a mean loss (nats/token) over text of ``tokens`` tokens and ``n_bytes`` bytes to bits per byte.

    Returns:
        ``loss × tokens / n_bytes / ln 2``, or None when the text has no tokens or no bytes.
    """
    if tokens <= 0 or n_bytes <= 0:
        return None
    return loss * tokens / n_bytes / math.log(2)


def model_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean loss of one batch from a model that returns ``(logits, loss)`` when given targets."""
    x, y = batch
    _, loss = model(x, y)
    assert loss is not None
    return loss  # type: ignore[no-any-return]  # nn.Module.__call__ is untyped


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    text_size: tuple[int, int] | None = None,
    loss_fn: LossFn = model_loss,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    all_ranks: bool = False,
    name: str = "the split",
) -> Evaluation:
    """Score ``model`` on ``batches``: the mean loss per target token, weighted by each batch's targets.

    Args:
        model: The model (in eval mode while scoring; its previous mode is restored).
        batches: ``(x, y)`` pairs of shape (B, T); targets of ``-1`` are ignored.
        text_size: ``(tokens, bytes)`` of the text the batches come from, for bits per byte (None: not computed).
        loss_fn: Mean loss of one batch (default: the model's own ``(logits, loss)``).
        device: Move each batch there (None: leave the batches where they are).
        dtype: Autocast to this dtype (float32: no autocast).
        all_ranks: Sum over all processes of the default process group (each scores its own batches).
        name: What the batches are, for the error message (``the val split of runs/x/data``).

    Raises:
        MicrogptError: When there is no target to score.
    """
    was_training = model.training
    model.eval()
    total: torch.Tensor | None = None  # [sum of losses × targets, targets], float64 on the loss's device
    try:
        for x, y in batches:
            if device is not None:
                x, y = x.to(device), y.to(device)
            with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not torch.float32):
                loss = loss_fn(model, (x, y))
            targets = (y != -1).sum()
            if total is None:
                total = torch.zeros(2, dtype=torch.float64, device=loss.device)
            total[0] += loss.double() * targets
            total[1] += targets
    finally:
        model.train(was_training)
    if total is None:
        total = torch.zeros(2, dtype=torch.float64, device=device)
    if all_ranks and torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.all_reduce(total)  # SUM: every rank ends with the same totals
    count = int(total[1].item())
    if count == 0:
        raise MicrogptError(f"{name} is empty: nothing to evaluate")
    mean = float((total[0] / total[1]).item())
    bpb = bits_per_byte(mean, *text_size) if text_size is not None else None
    return Evaluation(loss=mean, bits_per_byte=bpb, tokens=count)
