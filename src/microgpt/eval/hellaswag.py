"""HellaSwag: pick the right ending of a short story, scored by the language model's loss on each ending.

Each item has a context and four endings; the model "answers" with the ending it finds most likely. Following
nanoGPT/llm.c (``hellaswag.py``), the text of a row is ``context + " " + ending`` tokenized as
``encode(context)`` then ``encode(" " + ending)``, and only the ending's tokens are scored:

- ``acc``: the ending with the lowest *summed* cross-entropy (highest log-likelihood) wins — the definition of
  lm-eval-harness's ``acc``.
- ``acc_norm``: the ending with the lowest *mean* cross-entropy per token wins. This is what nanoGPT and llm.c
  report as ``acc_norm``; GPT-2 124M scores ≈ 0.2955 on the full validation set with it, the figure quoted by
  the nanoGPT family. It is the default because it lets our numbers be compared with theirs.
- ``acc_norm_chars``: the summed log-likelihood divided by the ending's length in characters — the length
  normalisation of EleutherAI's lm-eval-harness (its ``acc_norm``; 0.3114 for GPT-2 124M).

The harness also rewrites the prompt. ``harness=True`` (``microgpt eval --task hellaswag --harness``) renders
items as lm-eval 0.4's official ``hellaswag`` task does (``lm_eval/tasks/hellaswag/utils.py``): the context is
``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())`` and each ending ``preprocess(ending)``,
where ``preprocess`` strips, turns ``" [title]"`` into ``". "``, drops every ``[...]`` tag and collapses double
spaces. It also tokenizes as the harness's ``hf`` model does: ``encode(context + " " + ending)`` split after
``len(encode(context))`` tokens, and an over-long row keeps its last ``block_size + 1`` tokens (the last one
scored, not fed). Then ``acc`` and ``acc_norm_chars`` are the harness's ``acc`` and ``acc_norm`` on the same model
(``tests/model/test_lm_eval.py`` runs the harness itself on an exported model and compares), so the numbers
compare with published ones.

Rows are batched: the four endings of ``batch_size`` items become ``4·batch_size`` rows, right-padded to the
longest; causal attention means padding after a row never changes the scores before it, and a mask keeps padding
out of the loss. Rows longer than the model's context keep their last ``block_size`` tokens (the context is
cut from the left; GPT-2's 1,024 tokens never need it).

The items themselves (the rowanz/hellaswag jsonl, read and checked, downloaded once and cached) come from
:mod:`microgpt.eval.hellaswag_data`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from microgpt.common.errors import MicrogptError
from microgpt.common.log import get_logger
from microgpt.eval.hellaswag_data import N_ENDINGS, HellaSwagItem, load_hellaswag, resolve_hellaswag_file

log = get_logger(__name__)


class TextEncoder(Protocol):
    """What scoring needs from a tokenizer: microgpt's :class:`~microgpt.tokenizer.Tokenizer` or tiktoken's."""

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text, treating special-token text as ordinary text."""
        ...


@dataclass(frozen=True)
class HellaSwagResult:
    """Accuracies over ``n_items`` questions (chance is 0.25 for each)."""

    n_items: int
    acc: float
    acc_norm: float
    acc_norm_chars: float

    def to_dict(self) -> dict[str, float | int]:
        """The result as a JSON-able dict (for reports and metrics files)."""
        return asdict(self)


def harness_preprocess(text: str) -> str:
    """lm-eval's ``hellaswag`` clean-up: WikiHow's ``[title]``/``[header]``/``[step]`` tags out, spaces mended."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def harness_item(item: HellaSwagItem) -> HellaSwagItem:
    """The item as lm-eval's official ``hellaswag`` task renders it (see the module docstring).

    Raises:
        MicrogptError: When the item has no ``activity_label``/``ctx_a`` (a file without them).
    """
    if item.activity_label is None:
        raise MicrogptError(
            f"HellaSwag item {item.ind} has no activity_label/ctx_a/ctx_b, which the harness rendering needs "
            "(use the rowanz/hellaswag jsonl, or drop --harness)"
        )
    context = harness_preprocess(item.activity_label + ": " + item.ctx_a + " " + item.ctx_b.capitalize())
    e0, e1, e2, e3 = (harness_preprocess(ending) for ending in item.endings)
    return HellaSwagItem(item.ind, context, (e0, e1, e2, e3), item.label, item.activity_label, item.ctx_a, item.ctx_b)


def render_item(item: HellaSwagItem, encoder: TextEncoder, joint: bool = False) -> tuple[list[int], list[list[int]]]:
    """Tokenize an item the nanoGPT way: ``encode(context)`` and, per ending, ``encode(" " + ending)``.

    Args:
        item: The question.
        encoder: The tokenizer.
        joint: Tokenize as lm-eval's ``hf`` model does instead: ``encode(context + " " + ending)``, the ending being
            what follows the first ``len(encode(context))`` tokens.

    Returns:
        ``(context_ids, [ending_ids × 4])``.
    """
    context = encoder.encode_ordinary(item.context)
    if joint:
        return context, [encoder.encode_ordinary(item.context + " " + e)[len(context) :] for e in item.endings]
    # The space belongs to the ending: GPT-2's BPE attaches a leading space to the next word (" the").
    endings = [encoder.encode_ordinary(" " + ending) for ending in item.endings]
    return context, endings


def build_batch(
    rendered: Sequence[tuple[list[int], list[list[int]]]], block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack items into padded rows: four rows per item, context then ending, cut to the last ``block_size``.

    (The harness rendering passes ``block_size + 1`` and feeds all but the last token of each row.)

    Returns:
        ``(tokens, mask)``, both (4·n_items, T) with T the longest row (≤ ``block_size``): ``tokens`` int64 padded
        with 0, ``mask`` bool, true on ending tokens.
    """
    rows: list[list[int]] = []
    masks: list[list[bool]] = []
    for context, endings in rendered:
        for ending in endings:
            row = (context + ending)[-block_size:]
            mask = ([False] * len(context) + [True] * len(ending))[-block_size:]
            rows.append(row)
            masks.append(mask)
    width = max(len(row) for row in rows)
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    mask_t = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (row, mask) in enumerate(zip(rows, masks, strict=True)):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask_t[i, : len(mask)] = torch.tensor(mask, dtype=torch.bool)
    return tokens, mask_t


def _logits_of(model: Callable[..., Any], idx: torch.Tensor) -> torch.Tensor:
    """Next-token logits (B, T, V) from microgpt's GPT (returns ``(logits, loss)``) or a transformers model."""
    out = model(idx)
    if isinstance(out, tuple):
        out = out[0]
    elif hasattr(out, "logits"):
        out = out.logits
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"model returned {type(out).__name__}; expected logits, (logits, loss) or .logits")
    return out


def score_rows(
    logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, *, shifted: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed and mean cross-entropy of the masked (ending) tokens.

    Args:
        logits: (R, T, V) next-token logits for ``tokens`` (or (R, T-1, V) for ``tokens[:, :-1]`` when
            ``shifted``: the last token was never fed).
        tokens: (R, T) token ids.
        mask: (R, T) true where the token is part of the ending.
        shifted: ``logits`` already stop before the last position.

    Returns:
        ``(sum_loss, mean_loss)``, each (R,) float32. An ending token at position 0 has no prediction and is
        skipped (only possible when truncation cut the whole context away).
    """
    R = logits.size(0)
    # Position t predicts token t+1: logits[:, t] scores tokens[:, t+1]. Only ending positions are kept before the
    # softmax, so the (R, T, V) logits are never copied (a few hundred MB for GPT-2's vocabulary).
    target_mask = mask[:, 1:]  # (R, T-1)
    picked = (logits if shifted else logits[:, :-1])[target_mask].float()  # (N, V), N = ending tokens in the batch
    losses = F.cross_entropy(picked, tokens[:, 1:][target_mask], reduction="none")  # (N,)
    rows = torch.arange(R, device=logits.device).unsqueeze(1).expand_as(target_mask)[target_mask]  # (N,) row of each
    sum_loss = torch.zeros(R, device=logits.device).index_add_(0, rows, losses)
    mean_loss = sum_loss / target_mask.sum(dim=1).clamp(min=1).float()
    return sum_loss, mean_loss


def _batches(items: Sequence[HellaSwagItem], size: int) -> Iterator[Sequence[HellaSwagItem]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.inference_mode()
def score_hellaswag(
    model: nn.Module,
    encoder: TextEncoder,
    items: Sequence[HellaSwagItem],
    *,
    block_size: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
    harness: bool = False,
) -> HellaSwagResult:
    """Score a model on HellaSwag items (see the module docstring for the three accuracy definitions).

    Args:
        model: microgpt's :class:`~microgpt.model.gpt.GPT` (or any module returning logits, ``(logits, loss)``
            or an object with ``.logits``, such as a ``transformers`` causal LM). Put in eval mode while scoring,
            then restored.
        encoder: The model's tokenizer (``encode_ordinary``).
        items: The questions (:func:`load_hellaswag`).
        block_size: Longest row the model accepts; default ``model.config.block_size``, else 1,024.
        batch_size: Items per forward pass (four rows each).
        progress: Show a progress bar.
        harness: Render, tokenize and truncate as lm-eval's official ``hellaswag`` task (module docstring).

    Returns:
        The accuracies.

    Raises:
        ValueError: When ``items`` is empty or ``batch_size`` < 1.
        MicrogptError: With ``harness``, when an item lacks the fields the harness rendering needs.
    """
    if not items:
        raise ValueError("no HellaSwag items to score")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if block_size is None:
        config = getattr(model, "config", None)
        block_size = int(getattr(config, "block_size", None) or getattr(config, "n_positions", None) or 1024)
    target = next(model.parameters()).device  # the rows go where the model is
    if harness:
        items = [harness_item(item) for item in items]
    was_training = model.training
    model.eval()
    correct = correct_norm = correct_chars = done = 0
    try:
        with tqdm(total=len(items), desc="hellaswag", unit="item", disable=not progress) as bar:
            for chunk in _batches(items, batch_size):
                rendered = [render_item(item, encoder, joint=harness) for item in chunk]
                tokens, mask = build_batch(rendered, block_size + 1 if harness else block_size)
                tokens, mask = tokens.to(target), mask.to(target)
                logits = _logits_of(model, tokens[:, :-1] if harness else tokens)
                sum_loss, mean_loss = score_rows(logits, tokens, mask, shifted=harness)
                sum_loss, mean_loss = sum_loss.view(-1, N_ENDINGS).cpu(), mean_loss.view(-1, N_ENDINGS).cpu()
                chars = torch.tensor([[len(e) for e in item.endings] for item in chunk], dtype=torch.float32)
                labels = torch.tensor([item.label for item in chunk])
                # argmin of a loss = argmax of a log-likelihood; ties go to the first ending, as in nanoGPT.
                correct += int((sum_loss.argmin(dim=1) == labels).sum())
                correct_norm += int((mean_loss.argmin(dim=1) == labels).sum())
                correct_chars += int(((sum_loss / chars).argmin(dim=1) == labels).sum())
                done += len(chunk)
                bar.update(len(chunk))
                bar.set_postfix(acc_norm=f"{correct_norm / done:.4f}")
    finally:
        model.train(was_training)
    n = len(items)
    return HellaSwagResult(n_items=n, acc=correct / n, acc_norm=correct_norm / n, acc_norm_chars=correct_chars / n)


def evaluate_hellaswag(
    model: nn.Module,
    encoder: TextEncoder,
    source: str | Path | None = None,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
    cache_dir: str | Path | None = None,
    harness: bool = False,
) -> HellaSwagResult:
    """Evaluate a model on HellaSwag from a file or URL: the one call the CLI and the pipeline report use.

    Args:
        model: The model (see :func:`score_hellaswag`).
        encoder: Its tokenizer.
        source: A local jsonl path, a URL, or ``None`` for the standard validation set (downloaded once, cached).
        limit: Score only the first ``limit`` items.
        batch_size: Items per forward pass.
        progress: Show a progress bar.
        cache_dir: Download cache folder.
        harness: Render the items as lm-eval's official ``hellaswag`` task (see :func:`score_hellaswag`).

    Returns:
        The accuracies; ``acc_norm`` is the nanoGPT definition (mean token loss of the ending).

    Raises:
        MicrogptError: On a missing or malformed file or a failed download.

    >>> from microgpt.model.hf import load_pretrained_gpt2
    >>> model, tokenizer = load_pretrained_gpt2("gpt2")  # doctest: +SKIP
    >>> evaluate_hellaswag(model, tokenizer).acc_norm  # the full val set; llm.c reports 0.2955  # doctest: +SKIP
    """
    path = resolve_hellaswag_file(source, cache_dir)
    items = load_hellaswag(path, limit=limit)
    log.info("HellaSwag: scoring %d items from %s", len(items), path)
    result = score_hellaswag(model, encoder, items, batch_size=batch_size, progress=progress, harness=harness)
    log.info(
        "HellaSwag: acc %.4f  acc_norm %.4f  acc_norm_chars %.4f  (%d items)",
        result.acc,
        result.acc_norm,
        result.acc_norm_chars,
        result.n_items,
    )
    return result


def evaluate_hellaswag_checkpoint(
    checkpoint: str | Path,
    source: str | Path | None = None,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    progress: bool = False,
    harness: bool = False,
) -> HellaSwagResult:
    """Load a checkpoint (with its tokenizer) and evaluate it on HellaSwag: ``microgpt eval CKPT --task hellaswag``.

    Args:
        checkpoint: A checkpoint step directory, or a run directory (its newest complete checkpoint).
        source: A local jsonl path, a URL, or ``None`` for the standard validation set.
        limit: Score only the first ``limit`` items.
        batch_size: Items per forward pass.
        device: ``auto`` (cuda → mps → cpu), ``cpu``, ``cuda``...
        progress: Show a progress bar.
        harness: Render the items as lm-eval's official ``hellaswag`` task (see :func:`score_hellaswag`).

    Raises:
        MicrogptError: On a missing or corrupt checkpoint, or a missing or malformed HellaSwag file.
    """
    from microgpt.model.api import load_model  # api imports the whole model stack; only this entry point needs it

    loaded = load_model(checkpoint, device=device)
    return evaluate_hellaswag(
        loaded.model, loaded.tokenizer, source, limit=limit, batch_size=batch_size, progress=progress, harness=harness
    )
