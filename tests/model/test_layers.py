from __future__ import annotations

import torch
import torch.nn.functional as F

from microgpt.model.mlp import swiglu
from microgpt.model.norm import rms_norm
from microgpt.model.rope import apply_rope, rope_tables


def test_rms_norm_matches_torch_and_gradcheck() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(8, dtype=torch.float64) + 0.5).requires_grad_()
    torch.testing.assert_close(rms_norm(x, w, 1e-5), F.rms_norm(x, (8,), w, 1e-5))
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-5), (x, w))


def test_rope_matches_rotate_half_and_gradcheck() -> None:
    torch.manual_seed(0)
    T, D = 6, 8
    x = torch.randn(2, T, 3, D, dtype=torch.float64, requires_grad=True)
    cos, sin = rope_tables(T, D, 10000.0)
    cos, sin = cos.double()[:, None, :], sin.double()[:, None, :]
    # Hugging Face's Llama formula, written independently: q * cos + rotate_half(q) * sin.
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    expected = x * emb.cos() + torch.cat((-x2, x1), dim=-1) * emb.sin()
    torch.testing.assert_close(apply_rope(x, cos, sin), expected)
    assert torch.autograd.gradcheck(lambda a: apply_rope(a, cos, sin), (x,))


def test_rope_preserves_norm_and_relative_angle() -> None:
    torch.manual_seed(0)
    cos, sin = rope_tables(16, 8, 10000.0)
    cos, sin = cos[:, None, :], sin[:, None, :]
    q = torch.randn(1, 1, 1, 8).expand(1, 16, 1, 8)
    k = torch.randn(1, 1, 1, 8).expand(1, 16, 1, 8)
    rq, rk = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    # The score depends only on the distance between positions: (3, 1) and (12, 10) agree.
    s1 = (rq[0, 3, 0] * rk[0, 1, 0]).sum()
    s2 = (rq[0, 12, 0] * rk[0, 10, 0]).sum()
    torch.testing.assert_close(s1, s2)


def test_swiglu_matches_autograd_and_gradcheck() -> None:
    torch.manual_seed(0)
    h = torch.randn(2, 3, 10, dtype=torch.float64, requires_grad=True)
    gate, up = h.chunk(2, dim=-1)
    torch.testing.assert_close(swiglu(h), F.silu(gate) * up)
    assert torch.autograd.gradcheck(swiglu, (h,))
