"""The padded last evaluation batch: one shape for every batch, the same mean loss as the unpadded batches."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from microgpt.data import Manifest, TokenLoader


def test_padded_eval_batches_have_one_shape_and_ignored_padding(prepared: tuple[Path, Manifest]) -> None:
    out, _ = prepared
    loader = TokenLoader(out, "train", batch_size=7, block_size=50, shuffle=False, prefetch=0)
    assert loader.windows_per_rank % 7 != 0, "precondition: a partial last batch"
    plain = list(loader.eval_batches())
    padded = list(loader.eval_batches(pad=True))
    assert len(plain) == len(padded)
    assert plain[-1][0].shape[0] < 7
    assert {tuple(x.shape) for x, _ in padded} == {(7, 50)}  # a compiled model sees one shape
    for (x, y), (px, py) in zip(plain, padded, strict=True):
        n = x.shape[0]
        assert torch.equal(px[:n], x) and torch.equal(py[:n], y)
        assert bool((py[n:] == -1).all())  # padding rows are ignored targets only
    # A mean loss over real targets is unchanged by the padding (the loss ignores index -1).
    vocab = int(max(int(x.max()) for x, _ in plain)) + 1
    logits_of = torch.nn.Embedding(vocab, vocab)

    def total(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        loss_sum, count = 0.0, 0
        for x, y in batches:
            logits = logits_of(x)  # (B, T, vocab)
            loss = F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1), ignore_index=-1)
            n = int((y != -1).sum())
            loss_sum, count = loss_sum + float(loss) * n, count + n
        return loss_sum / count

    with torch.no_grad():
        assert abs(total(plain) - total(padded)) < 1e-6
