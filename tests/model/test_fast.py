"""The fast paths (microgpt.model.fast) against the plain functions they stand in for, and the switch between them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from microgpt.common.kernels import kernels_enabled
from microgpt.model import fast, native
from microgpt.model.attention import CausalSelfAttention
from microgpt.model.config import GPTConfig
from microgpt.model.gpt import GPT
from microgpt.model.mlp import swiglu
from microgpt.model.norm import rms_norm
from microgpt.model.rope import apply_rope, rope_tables

needs_kernel = pytest.mark.skipif(native.library() is None, reason="no C compiler to build the native kernels")

T, D = 12, 32
COS, SIN = rope_tables(T, D, 10000.0)
WEIGHT = torch.linspace(0.5, 1.5, D)

# (name, plain-or-dispatching function of one tensor, input shape)
LAYERS: list[tuple[str, Callable[[Callable[..., torch.Tensor], torch.Tensor], torch.Tensor], tuple[int, ...]]] = [
    ("rms_norm", lambda f, x: f(x, WEIGHT.to(x.dtype), 1e-5), (2, T, 3, D)),
    ("swiglu", lambda f, x: f(x), (2, T, 2 * D)),
    ("apply_rope", lambda f, x: f(x, COS[:, None].to(x.dtype), SIN[:, None].to(x.dtype)), (2, T, 3, D)),
]
FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {"rms_norm": rms_norm, "swiglu": swiglu, "apply_rope": apply_rope}


def backward_nodes(out: torch.Tensor) -> set[str]:
    """The class names of every node in ``out``'s autograd graph: which implementation computed each step."""
    names, seen, stack = set(), set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(parent for parent, _ in node.next_functions)
    return names


def test_the_dispatch_table_names_exactly_the_marked_functions() -> None:
    marked: tuple[Callable[..., torch.Tensor], ...] = (rms_norm, swiglu, apply_rope, CausalSelfAttention.attend)
    plain = [function.__wrapped__ for function in marked]  # type: ignore[attr-defined]  # set by functools.wraps
    assert {function.__qualname__ for function in plain} == set(fast.FAST_PATHS)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # hand-written backward; native kernel
@pytest.mark.parametrize(("name", "call", "shape"), LAYERS, ids=[layer[0] for layer in LAYERS])
def test_fast_path_equals_plain_function(
    name: str, call: Callable[[Callable[..., torch.Tensor], torch.Tensor], torch.Tensor], shape: tuple[int, ...],
    dtype: torch.dtype,
) -> None:  # fmt: skip
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    function = FUNCTIONS[name]
    results = []
    for implementation in (function, function.__wrapped__):  # type: ignore[attr-defined]  # dispatching, plain
        out = call(implementation, x)
        (grad_x,) = torch.autograd.grad(out, x, torch.linspace(-1, 1, out.numel(), dtype=dtype).view(out.shape))
        results.append((out, grad_x, backward_nodes(out)))
    (fast_out, fast_grad, fast_nodes), (plain_out, plain_grad, plain_nodes) = results
    atol, rtol = (1e-5, 1e-5) if dtype == torch.float32 else (None, None)  # None: torch's defaults for the dtype
    torch.testing.assert_close(fast_out, plain_out, atol=atol, rtol=rtol)
    torch.testing.assert_close(fast_grad, plain_grad, atol=atol, rtol=rtol)
    assert fast_nodes != plain_nodes  # the fast path really ran


@needs_kernel
@pytest.mark.parametrize("options", [{}, {"qk_norm": True, "n_kv_head": 2}, {"pos_encoding": "learned"}])
def test_fast_attention_equals_plain_attention(options: dict[str, object]) -> None:
    torch.manual_seed(0)
    shape = {"n_layer": 1, "n_head": 4, "n_embd": 4 * D, "block_size": T, "vocab_size": 8}
    attention = CausalSelfAttention(GPTConfig.model_validate(shape | options), 0)
    if attention.qk_norm is not None:
        attention.qk_norm.weight.data = WEIGHT.clone()
    qkv = torch.randn(2, T, 4 + 2 * attention.n_kv_head, D, requires_grad=True)
    rope = None if "pos_encoding" in options else (COS[:, None], SIN[:, None])
    grad = torch.randn(2, T, 4 * D)
    plain = CausalSelfAttention.attend.__wrapped__  # type: ignore[attr-defined]  # set by functools.wraps
    results = []
    for out in (attention.attend(qkv, rope, None), plain(attention, qkv, rope, None)):
        (grad_qkv,) = torch.autograd.grad(out, qkv, grad)
        results.append((out, grad_qkv, backward_nodes(out)))
    torch.testing.assert_close(results[0][:2], results[1][:2], atol=1e-5, rtol=1e-5)
    assert "_ShortAttentionBackward" in results[0][2] and "_ShortAttentionBackward" not in results[1][2]


def tiny_gpt(dtype: torch.dtype) -> tuple[GPT, torch.Tensor]:
    """A GPT with every fast path's layer (RMSNorm, QK-norm, RoPE, SwiGLU) and one batch."""
    config = GPTConfig(n_layer=1, n_head=2, n_embd=64, block_size=16, vocab_size=50, mlp="swiglu", qk_norm=True)
    torch.manual_seed(0)
    return GPT(config).to(dtype), torch.randint(0, 50, (2, 16))


@needs_kernel
def test_model_takes_the_native_kernels_in_float32_on_cpu() -> None:
    model, idx = tiny_gpt(torch.float32)
    _, loss = model(idx, idx)
    assert loss is not None
    nodes = backward_nodes(loss)
    assert {"_ShortAttentionBackward", "_SwiGLUBackward", "_RMSNormBackward"} <= nodes
    assert not any("ScaledDotProduct" in name for name in nodes)  # no SDPA: the kernel did the attention


def test_model_takes_the_hand_written_backward_passes_elsewhere() -> None:
    model, idx = tiny_gpt(torch.float64)  # float64: no native kernel applies
    _, loss = model(idx, idx)
    assert loss is not None
    assert {"_RMSNormFunctionBackward", "_SwiGLUFunctionBackward", "_RopeFunctionBackward"} <= backward_nodes(loss)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernels_off_runs_only_the_plain_code_with_the_same_loss(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, idx = tiny_gpt(dtype)
    _, fast_loss = model(idx, idx)
    monkeypatch.setenv("MICROGPT_KERNELS", "0")
    kernels_enabled.cache_clear()
    try:
        _, plain_loss = model(idx, idx)
    finally:
        monkeypatch.undo()
        kernels_enabled.cache_clear()
    assert fast_loss is not None and plain_loss is not None
    # Every node is one of torch's own (theirs end in "Backward0", "Backward1"...); none is microgpt's.
    assert all(name[-1].isdigit() or name == "AccumulateGrad" for name in backward_nodes(plain_loss))
    torch.testing.assert_close(fast_loss, plain_loss, atol=1e-6, rtol=1e-6)
