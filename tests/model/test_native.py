"""microgpt's native CPU kernels (attention, SwiGLU, RMSNorm) against torch's ops, their build cache and fallbacks."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from microgpt.model import native
from microgpt.model.config import GPTConfig
from microgpt.model.gpt import GPT
from microgpt.model.rope import apply_rope, rope_tables

needs_kernel = pytest.mark.skipif(native.library() is None, reason="no C compiler to build the native kernel")


def reference_attention(
    qkv: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor] | None,
    n_head: int,
    n_kv_head: int,
    qk_norm: tuple[torch.Tensor, float] | None = None,
) -> torch.Tensor:
    """What the kernel computes, from torch ops: QK-norm and RoPE on queries and keys, then causal SDPA."""
    B, T, _, D = qkv.shape
    qk, v = qkv.split([n_head + n_kv_head, n_kv_head], dim=2)
    if qk_norm is not None:
        qk = F.rms_norm(qk, (D,), qk_norm[0], qk_norm[1])
    if rope is not None:
        qk = apply_rope(qk, *rope)
    q, k = qk.split([n_head, n_kv_head], dim=2)
    y = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=n_head != n_kv_head
    )
    return y.transpose(1, 2).reshape(B, T, n_head * D)


@needs_kernel
@pytest.mark.parametrize(
    ("batch", "seq_len", "n_head", "n_kv_head", "head_dim", "with_rope", "with_norm"),
    [
        (3, 64, 4, 4, 32, True, False),  # the benchmark's shape
        (2, 50, 4, 2, 16, True, False),  # context not a multiple of 16, grouped-query attention
        (2, 1, 2, 1, 64, True, False),  # one token
        (1, 37, 3, 3, 32, False, False),  # learned positions: no rotation
        (2, 256, 2, 2, 64, True, False),  # the longest context that takes the kernel
        (2, 45, 4, 2, 32, True, True),  # QK-norm inside the kernel, with GQA
        (1, 20, 2, 2, 16, False, True),  # QK-norm without rotation
    ],
)
def test_kernel_matches_sdpa_forward_and_backward(  # noqa: PLR0913  # one argument per shape parameter
    batch: int, seq_len: int, n_head: int, n_kv_head: int, head_dim: int, with_rope: bool, with_norm: bool
) -> None:
    torch.manual_seed(0)
    qkv = torch.randn(batch, seq_len, n_head + 2 * n_kv_head, head_dim, dtype=torch.float64)
    cos, sin = rope_tables(seq_len, head_dim, 10000.0)
    rope64 = (cos[:, None].double(), sin[:, None].double()) if with_rope else None
    rope32 = (cos[:, None], sin[:, None]) if with_rope else None
    weight = 1.0 + 0.5 * torch.randn(head_dim, dtype=torch.float64)
    grad_y = torch.randn(batch, seq_len, n_head * head_dim, dtype=torch.float64)

    expected_in, expected_w = qkv.clone().requires_grad_(), weight.clone().requires_grad_()
    expected = reference_attention(expected_in, rope64, n_head, n_kv_head, (expected_w, 1e-6) if with_norm else None)
    expected.backward(grad_y)
    got_in, got_w = qkv.float().requires_grad_(), weight.float().requires_grad_()
    assert native.use_short_attention(got_in, head_dim, dropout=0.0)
    got = native.short_causal_attention(got_in, rope32, n_head, n_kv_head, (got_w, 1e-6) if with_norm else None)
    got.backward(grad_y.float())

    assert got.shape == expected.shape
    torch.testing.assert_close(got.double(), expected, atol=2e-6, rtol=1e-5)
    assert got_in.grad is not None and expected_in.grad is not None
    torch.testing.assert_close(got_in.grad.double(), expected_in.grad, atol=1e-5, rtol=1e-5)
    if with_norm:
        assert got_w.grad is not None and expected_w.grad is not None
        torch.testing.assert_close(got_w.grad.double(), expected_w.grad, atol=1e-4, rtol=1e-5)
    else:
        assert got_w.grad is None


@needs_kernel
def test_kernel_reads_a_strided_view_of_the_projection() -> None:
    """The model passes ``c_attn``'s output viewed as heads: batch and time strides other than contiguous."""
    torch.manual_seed(0)
    wide = torch.randn(2, 20, 8, 32)  # 6 heads used of 8: the batch and time strides of a wider buffer
    view = wide[:, :, :6]
    expected = reference_attention(view.contiguous(), None, 2, 2)
    torch.testing.assert_close(native.short_causal_attention(view, None, 2, 2), expected, atol=1e-6, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize(("rows", "hidden"), [(96, 352), (5, 13)])  # a width of whole vectors, and a ragged one
def test_swiglu_kernel_matches_torch(rows: int, hidden: int) -> None:
    torch.manual_seed(0)
    h = torch.randn(rows, 2 * hidden, dtype=torch.float64) * 4  # gates far into both tails of the sigmoid
    grad = torch.randn(rows, hidden, dtype=torch.float64)
    expected_in = h.clone().requires_grad_()
    gate, up = expected_in.chunk(2, dim=-1)
    expected = F.silu(gate) * up
    expected.backward(grad)
    got_in = h.float().requires_grad_()
    assert native.use_native_swiglu(got_in)
    got = native.native_swiglu(got_in)
    got.backward(grad.float())
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-5)
    assert got_in.grad is not None and expected_in.grad is not None
    torch.testing.assert_close(got_in.grad.double(), expected_in.grad, atol=1e-4, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize(("shape", "width"), [((4, 24), 128), ((3, 5), 13)])
def test_rms_norm_kernel_matches_torch(shape: tuple[int, ...], width: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(*shape, width, dtype=torch.float64)
    weight = torch.randn(width, dtype=torch.float64)
    grad = torch.randn(*shape, width, dtype=torch.float64)
    expected_x, expected_w = x.clone().requires_grad_(), weight.clone().requires_grad_()
    F.rms_norm(expected_x, (width,), expected_w, 1e-5).backward(grad)
    got_x, got_w = x.float().requires_grad_(), weight.float().requires_grad_()
    assert native.use_native_rms_norm(got_x, got_w)
    got = native.native_rms_norm(got_x, got_w, 1e-5)
    got.backward(grad.float())
    torch.testing.assert_close(got.double(), F.rms_norm(x, (width,), weight, 1e-5), atol=1e-5, rtol=1e-5)
    for tensor, reference in ((got_x, expected_x), (got_w, expected_w)):
        assert tensor.grad is not None and reference.grad is not None
        torch.testing.assert_close(tensor.grad.double(), reference.grad, atol=1e-4, rtol=1e-5)


@needs_kernel
def test_operator_registrations_pass_opcheck() -> None:
    """Schema and fake shapes of each operator agree with its kernel (torch's own checker; compile uses these)."""
    torch.manual_seed(0)
    qkv = torch.randn(2, 24, 6, 16)
    cos, sin = rope_tables(24, 16, 10000.0)
    weight = torch.randn(16)
    y, probs = native.short_attention_op(qkv, cos, sin, weight, 1e-6, 2, 2)
    torch.library.opcheck(native.short_attention_op, (qkv, cos, sin, weight, 1e-6, 2, 2))
    torch.library.opcheck(native.short_attention_op, (qkv, None, None, None, 0.0, 2, 2))
    backward_args = (torch.randn_like(y), qkv, cos, sin, weight, 1e-6, probs, 2, 2)
    torch.library.opcheck(native.short_attention_backward_op, backward_args)
    h = torch.randn(10, 26)
    torch.library.opcheck(native.swiglu_op, (h,))
    torch.library.opcheck(native.swiglu_backward_op, (torch.randn(10, 13), h))
    x, weight = torch.randn(10, 24), torch.randn(24)
    _, rstd = native.rms_norm_op(x, weight, 1e-5)
    torch.library.opcheck(native.rms_norm_op, (x, weight, 1e-5))
    torch.library.opcheck(native.rms_norm_backward_op, (torch.randn_like(x), x, weight, rstd))


@needs_kernel
@pytest.mark.parametrize("change", [{}, {"qk_norm": True}, {"n_kv_head": 2}, {"pos_encoding": "learned"}])
def test_model_with_kernel_matches_model_with_sdpa(change: dict[str, object]) -> None:
    """Whole GPT, float32 through the kernel against float64 through SDPA: loss and every gradient."""
    torch.manual_seed(0)
    config = GPTConfig.model_validate(
        {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 40, "vocab_size": 50, "mlp": "swiglu"} | change
    )
    model = GPT(config).double()
    idx, targets = torch.randint(0, 50, (3, 40)), torch.randint(0, 50, (3, 40))
    _, expected_loss = model(idx, targets)
    assert expected_loss is not None
    expected_loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.float()
    _, loss = model(idx, targets)
    assert loss is not None
    loss.backward()
    assert loss.item() == pytest.approx(expected_loss.item(), abs=1e-5)
    for name, param in model.named_parameters():
        assert param.grad is not None
        torch.testing.assert_close(param.grad.double(), expected[name], atol=1e-5, rtol=1e-4, msg=name)


@needs_kernel
def test_weight_gradients_are_bitwise_reproducible_with_three_threads() -> None:
    """Per-thread partial sums are added in thread order, never in finishing order (exact resume relies on it)."""
    torch.manual_seed(0)
    x, weight = torch.randn(300, 64), torch.randn(64)
    qkv, norm = torch.randn(3, 40, 6, 32), torch.randn(32)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        grads = []
        for _ in range(3):
            w, n = weight.clone().requires_grad_(), norm.clone().requires_grad_()
            native.native_rms_norm(x, w, 1e-5).sum().backward()
            native.short_causal_attention(qkv, None, 2, 2, (n, 1e-6)).square().sum().backward()
            assert w.grad is not None and n.grad is not None
            grads.append((w.grad, n.grad))
    finally:
        torch.set_num_threads(threads)
    for w_grad, n_grad in grads[1:]:
        assert torch.equal(w_grad, grads[0][0]) and torch.equal(n_grad, grads[0][1])


def test_sdpa_is_used_where_the_kernel_does_not_apply() -> None:
    qkv = torch.randn(1, 8, 3, 32)
    assert not native.use_short_attention(qkv.double(), 32, dropout=0.0)  # float64
    assert not native.use_short_attention(qkv, 32, dropout=0.1)  # dropout while training
    assert not native.use_short_attention(qkv[..., :24], 24, dropout=0.0)  # head_dim not a multiple of 16
    long = torch.randn(1, native.MAX_SHORT_CONTEXT + 1, 3, 32)
    assert not native.use_short_attention(long, 32, dropout=0.0)


@pytest.fixture
def fresh_library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """An empty kernel cache and an unloaded library; the real one is reloaded afterwards."""
    monkeypatch.setenv("MICROGPT_CACHE_DIR", str(tmp_path))
    native.library.cache_clear()
    yield tmp_path
    native.library.cache_clear()


@needs_kernel
def test_library_is_built_once_into_the_cache(fresh_library: Path) -> None:
    assert native.library() is not None
    built = list((fresh_library / "kernels").glob("native-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    native.library.cache_clear()
    assert native.library() is not None
    assert [p.stat().st_mtime_ns for p in (fresh_library / "kernels").glob("*")] == [stamp]  # reused, no temp left


def test_without_a_compiler_attention_falls_back_with_a_warning(
    fresh_library: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CC", str(fresh_library / "no-such-compiler"))
    with caplog.at_level(logging.WARNING, logger="microgpt.model.native"):
        assert native.library() is None
    assert "SDPA" in caplog.text
    assert not list(fresh_library.glob("kernels/*.so"))
