"""Muon's batched Newton-Schulz: the same updates as orthogonalising one matrix at a time."""

from __future__ import annotations

import torch

from microgpt.common.optim import Muon, orthogonalize
from microgpt.model.config import GPTConfig
from microgpt.model.gpt import GPT


def test_a_stack_is_orthogonalised_matrix_by_matrix() -> None:
    gen = torch.Generator().manual_seed(0)
    for shape in ((3, 24, 40), (4, 64, 16)):  # wide and tall
        stack = torch.randn(*shape, generator=gen)
        batched = orthogonalize(stack)
        single = torch.stack([orthogonalize(m) for m in stack])
        torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
        assert batched.shape == stack.shape


def _reference_muon_step(params: list[torch.nn.Parameter], buffers: list[torch.Tensor], lr: float, wd: float) -> None:
    """The per-matrix Muon step as it was before batching (Nesterov, momentum 0.95)."""
    mu = 0.95
    with torch.no_grad():
        for param, buf in zip(params, buffers, strict=True):
            assert param.grad is not None
            buf.lerp_(param.grad, 1.0 - mu)
            update = orthogonalize(param.grad.lerp(buf, mu))
            update = update * max(1.0, param.size(0) / param.size(1)) ** 0.5
            param.mul_(1.0 - lr * wd)
            param.add_(update, alpha=-lr)


def test_batched_muon_matches_the_per_matrix_step() -> None:
    config = GPTConfig(n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=64)
    torch.manual_seed(0)
    ours, ref = GPT(config), GPT(config)
    ref.load_state_dict(ours.state_dict())
    pick = [n for n, p in ours.named_parameters() if p.ndim == 2 and n.startswith("h.")]
    assert len({tuple(dict(ours.named_parameters())[n].shape) for n in pick}) >= 2, "several shapes, several layers"
    mine = [dict(ours.named_parameters())[n] for n in pick]
    theirs = [dict(ref.named_parameters())[n] for n in pick]
    before = [p.detach().clone() for p in mine]
    optimizer = Muon(mine, lr=0.02, weight_decay=0.1)
    buffers = [torch.zeros_like(p) for p in theirs]
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randint(0, 64, (2, 16), generator=gen)
        for model in (ours, ref):
            model.zero_grad()
            _, loss = model(x, x)
            assert loss is not None
            loss.backward()
        optimizer.step()
        _reference_muon_step(theirs, buffers, lr=0.02, wd=0.1)
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert all(not torch.equal(a, b) for a, b in zip(mine, before, strict=True))  # every matrix moved
