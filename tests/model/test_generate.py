from __future__ import annotations

import pytest
import torch

from microgpt.model.config import GPTConfig
from microgpt.model.generate import generate, generate_ids, sample_next
from microgpt.model.gpt import GPT
from microgpt.model.kv_cache import KVCache


def model_with(**overrides: object) -> GPT:
    base: dict[str, object] = {"n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": 24, "vocab_size": 50}
    base.update(overrides)
    torch.manual_seed(0)
    return GPT(GPTConfig.model_validate(base)).eval()


@pytest.mark.parametrize(
    "options",
    [{}, {"n_kv_head": 2, "qk_norm": True, "mlp": "swiglu"}, {"pos_encoding": "learned", "norm": "layernorm"}],
)
def test_kv_cache_greedy_equals_no_cache(options: dict[str, object]) -> None:
    model = model_with(**options)
    prompt = [3, 1, 4, 1, 5]
    # 30 new tokens run past block_size 24, exercising the sliding window too.
    cached = generate_ids(model, prompt, 30, temperature=0.0)
    uncached = generate_ids(model, prompt, 30, temperature=0.0, use_cache=False)
    assert cached == uncached
    assert len(cached) == 30


def test_chunked_prefill_matches_full_forward() -> None:
    model = model_with(n_kv_head=2)
    idx = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(model.config, 2, 12, torch.device("cpu"))
        first, _ = model(idx[:, :5], kv_cache=cache)
        second, _ = model(idx[:, 5:9], kv_cache=cache)  # T > 1 with a non-empty cache: the explicit mask path
        third, _ = model(idx[:, 9:10], kv_cache=cache)
    torch.testing.assert_close(torch.cat([first, second, third], dim=1), full[:, :10], atol=1e-5, rtol=1e-5)
    assert cache.pos == 10


def test_seed_repeats_and_differs() -> None:
    model = model_with()
    a = generate_ids(model, [1], 20, seed=7)
    b = generate_ids(model, [1], 20, seed=7)
    c = generate_ids(model, [1], 20, seed=8)
    assert a == b
    assert a != c


def test_padded_ids_never_sampled() -> None:
    model = model_with(vocab_size=10)  # padded to 64 rows
    with torch.no_grad():
        model.lm_head.weight[10:] = 5.0  # make padding rows dominant if they were not cut
    ids = generate_ids(model, [1], 40, temperature=2.0, seed=0)
    assert max(ids) < 10


def test_stop_tokens_end_generation() -> None:
    model = model_with()
    greedy = generate_ids(model, [2, 3], 10, temperature=0.0)
    stop = greedy[3]
    stopped = generate_ids(model, [2, 3], 10, temperature=0.0, stop_tokens={stop})
    assert stopped == greedy[: greedy.index(stop) + 1]


def test_streaming_yields_one_at_a_time() -> None:
    model = model_with()
    stream = generate(model, [1, 2], 5, temperature=0.0)
    first = next(stream)
    assert isinstance(first, int)
    assert [first, *stream] == generate_ids(model, [1, 2], 5, temperature=0.0)


def test_top_k_and_top_p_filters() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    gen = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, top_k=2, generator=gen)) for _ in range(200)}
    assert picks == {1, 2}
    # softmax ≈ [0.087, 0.644, 0.237, 0.032]: p=0.7 keeps the two most likely tokens.
    picks = {int(sample_next(logits, top_p=0.7, generator=gen)) for _ in range(200)}
    assert picks == {1, 2}
    picks = {int(sample_next(logits, top_p=0.01, generator=gen)) for _ in range(50)}
    assert picks == {1}
    assert int(sample_next(logits, temperature=0.0)) == 1


def test_bad_prompt_refused() -> None:
    model = model_with()
    with pytest.raises(ValueError, match="at least one"):
        generate_ids(model, [], 3)
    with pytest.raises(ValueError, match="in \\[0, 50\\)"):
        generate_ids(model, [50], 3)


def test_training_mode_restored() -> None:
    model = model_with()
    model.train()
    generate_ids(model, [1], 2)
    assert model.training
