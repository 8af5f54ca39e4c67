from __future__ import annotations

import math

import pytest
import torch

from microgpt.common.config import validate_config
from microgpt.common.errors import ConfigError
from microgpt.common.metrics import estimate_mfu
from microgpt.model.config import GPTConfig
from microgpt.model.gpt import GPT, Block


def tiny(**overrides: object) -> GPTConfig:
    base: dict[str, object] = {"n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": 16, "vocab_size": 50}
    base.update(overrides)
    return GPTConfig.model_validate(base)


VARIANTS = [
    {},
    {"n_kv_head": 2},
    {"n_kv_head": 1, "qk_norm": True},
    {"norm": "layernorm", "bias": True},
    {"mlp": "swiglu"},
    {"mlp": "gelu", "pos_encoding": "learned", "norm": "layernorm", "bias": True},
    {"tie_embeddings": False, "zero_init_proj": True},
]


@pytest.mark.parametrize("options", VARIANTS)
def test_causal(options: dict[str, object]) -> None:
    torch.manual_seed(0)
    model = GPT(tiny(**options)).eval()
    idx = torch.randint(0, 50, (2, 12))
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 50
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize("options", VARIANTS)
def test_loss_near_ln_vocab_at_init(options: dict[str, object]) -> None:
    torch.manual_seed(0)
    model = GPT(tiny(**options))
    idx = torch.randint(0, 50, (8, 16))
    targets = torch.randint(0, 50, (8, 16))
    logits, loss = model(idx, targets)
    assert logits.shape == (8, 16, 50)  # padded columns (50 → 64) are cut
    assert loss is not None
    assert abs(loss.item() - math.log(50)) < 0.35


@pytest.mark.parametrize("options", [{}, {"mlp": "swiglu", "n_kv_head": 2, "qk_norm": True}])
def test_overfits_one_batch(options: dict[str, object]) -> None:
    torch.manual_seed(0)
    model = GPT(tiny(**options))
    idx = torch.randint(0, 50, (4, 16))
    targets = torch.randint(0, 50, (4, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(idx, targets)
        assert loss is not None
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2


def test_ignore_index() -> None:
    torch.manual_seed(0)
    model = GPT(tiny())
    idx = torch.randint(0, 50, (2, 8))
    targets = torch.randint(0, 50, (2, 8))
    logits, _ = model(idx)
    masked = targets.clone()
    masked[:, :4] = -1
    _, loss = model(idx, masked)
    expected = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, 50), targets[:, 4:].reshape(-1))
    assert loss is not None
    torch.testing.assert_close(loss, expected)


def test_param_count_formula() -> None:
    cfg = tiny(tie_embeddings=True, bias=False)
    model = GPT(cfg)
    d, v, h = 32, cfg.padded_vocab_size, cfg.hidden_dim
    per_layer = d * 3 * d + d * d + d * h + h * d + 2 * d  # qkv, proj, fc, proj, two norm scales
    assert model.num_params() == v * d + 2 * per_layer + d
    assert model.num_params(non_embedding=True) == model.num_params()  # tied: the head's matmul counts
    untied = GPT(tiny(tie_embeddings=False, pos_encoding="learned"))
    assert untied.num_params() == model.num_params() + v * d + 16 * d
    assert untied.num_params(non_embedding=True) == model.num_params()


def test_flops_per_token_formula() -> None:
    cfg = tiny()
    model = GPT(cfg)
    n = model.num_params(non_embedding=True)
    assert model.flops_per_token() == 6 * n + 12 * 2 * 4 * 8 * 16


def test_rope_buffers_not_saved_and_names_are_plain() -> None:
    model = GPT(tiny())
    keys = set(model.state_dict())
    assert not any("rope" in k for k in keys)
    assert "wte.weight" in keys and "h.0.attn.c_attn.weight" in keys and "h.1.mlp.c_proj.weight" in keys


def test_sequence_longer_than_block_refused() -> None:
    model = GPT(tiny())
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_scaled_residual_init() -> None:
    torch.manual_seed(0)
    model = GPT(tiny(n_layer=8, n_embd=128, n_head=4))
    block = model.h[0]
    assert isinstance(block, Block)
    proj = block.attn.c_proj.weight.std().item()
    fc = block.mlp.c_fc.weight.std().item()
    assert abs(fc - 0.02) < 0.002
    assert abs(proj - 0.02 / math.sqrt(16)) < 0.001
    zero = GPT(tiny(zero_init_proj=True))
    zero_block = zero.h[0]
    assert isinstance(zero_block, Block)
    assert torch.count_nonzero(zero_block.mlp.c_proj.weight) == 0


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"n_embd": 30, "n_head": 4}, "n_embd must be divisible by n_head"),
        ({"n_head": 4, "n_kv_head": 3}, "n_head must be divisible by n_kv_head"),
        ({"n_embd": 12, "n_head": 4}, "even"),
        ({"mlp": "tanh"}, "mlp"),
        ({"n_layers": 3}, "n_layers: unknown field; did you mean n_layer"),
    ],
)
def test_invalid_config_names_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        validate_config(GPTConfig, {"vocab_size": 10, **data})


def test_config_defaults() -> None:
    cfg = GPTConfig(vocab_size=65, n_head=8, n_embd=128)
    assert cfg.n_kv_head == 8
    assert cfg.padded_vocab_size == 128
    assert GPTConfig(vocab_size=128).padded_vocab_size == 128
    assert GPTConfig(vocab_size=10, mlp="swiglu", n_embd=128).hidden_dim == 352
    # The config round-trips through JSON (it travels with checkpoints).
    assert GPTConfig.model_validate(cfg.to_dict()) == cfg


def test_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    model = GPT(tiny(dropout=0.2))
    idx = torch.randint(0, 50, (2, 8))
    a, _ = model.train()(idx)
    b, _ = model(idx)
    assert not torch.allclose(a, b)
    c, _ = model.eval()(idx)
    d, _ = model(idx)
    torch.testing.assert_close(c, d)


def test_estimate_mfu() -> None:
    model = GPT(tiny())
    per_token = model.flops_per_token()
    assert estimate_mfu(per_token, 1000.0, per_token * 4000.0) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="peak_flops"):
        estimate_mfu(per_token, 1000.0, 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("n_embd", [32, 64])  # head dim 8: SDPA and plain ops; 16: the native attention kernel
def test_compiled_step_matches_eager(n_embd: int) -> None:
    """torch.compile (inductor, CPU) traces the model as one graph and gives eager's loss and gradients."""
    config = tiny(mlp="swiglu", qk_norm=True, n_embd=n_embd)
    torch.manual_seed(0)
    eager = GPT(config)
    compiled = GPT(config)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile(fullgraph=True)  # a graph break raises instead of silently running eager
    idx = torch.randint(0, config.vocab_size, (2, 16))
    losses = []
    for model in (eager, compiled):
        _, loss = model(idx, idx)
        assert loss is not None
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1])
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(p_eager.grad, p_compiled.grad, rtol=1e-4, atol=1e-6, msg=name)
