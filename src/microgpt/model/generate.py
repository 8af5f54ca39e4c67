"""Sampling from a GPT with a KV cache: prefill the prompt once, then one token per forward, streamed as it comes.

>>> import torch
>>> from microgpt.model.config import GPTConfig
>>> from microgpt.model.gpt import GPT
>>> model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=20))
>>> ids = generate_ids(model, [1, 2, 3], max_new_tokens=5, temperature=0.0)
>>> len(ids)
5
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence

import torch
from pydantic import Field

from microgpt.common.config import ConfigBase
from microgpt.model.gpt import GPT
from microgpt.model.kv_cache import KVCache


class SamplingConfig(ConfigBase):
    """How to pick each next token."""

    max_new_tokens: int = Field(200, ge=0, description="Tokens to generate at most.")
    temperature: float = Field(1.0, ge=0.0, description="Divides the logits; 0 means greedy (argmax).")
    top_k: int | None = Field(None, ge=1, description="Sample only among the k most likely tokens.")
    top_p: float | None = Field(
        None, ge=0.0, le=1.0, description="Sample among the smallest set with mass >= p (0: the top token)."
    )
    seed: int | None = Field(None, description="Seed of the sampling generator, for repeatable samples.")


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token from the last position's logits.

    Args:
        logits: (B, vocab_size), float.
        temperature: 0 → argmax; otherwise logits are divided by it before the softmax.
        top_k: Keep the ``k`` largest logits.
        top_p: Nucleus sampling (Holtzman et al. 2019): keep the most likely tokens whose cumulative probability
            first reaches ``p`` (always at least one: ``0`` keeps only the most likely token).
        generator: Source of randomness (for seeds).

    Returns:
        (B,) int64 token ids.
    """
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach p; the first token is never dropped, so top_p = 0
        # keeps the most likely token alone (the limit of p → 0), as greedy decoding would.
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: GPT,
    prompt: Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Collection[int] = (),
    seed: int | None = None,
    use_cache: bool = True,
) -> Iterator[int]:
    """Yield new token ids one at a time (streaming), continuing ``prompt``.

    The prompt is run through the model once (prefill) filling the KV cache; each later step feeds only the
    newest token. When the sequence outgrows ``block_size`` the context becomes its last ``block_size`` tokens,
    re-run without a cache each step (exactly what the uncached path sees).

    Args:
        model: The GPT (put in eval mode for the duration, then restored).
        prompt: Token ids; at least one.
        max_new_tokens: Upper bound on tokens yielded.
        temperature: See :func:`sample_next`.
        top_k: See :func:`sample_next`.
        top_p: See :func:`sample_next`.
        stop_tokens: Generation ends after yielding one of these.
        seed: Seeds a private ``torch.Generator`` (the global RNG is untouched); ``None`` draws from the global one.
        use_cache: ``False`` re-runs the whole context each step (slow; for checking the cache).

    Yields:
        Token ids as they are sampled.

    Raises:
        ValueError: When the prompt is empty or holds ids outside the vocabulary.
    """
    if len(prompt) == 0:
        raise ValueError("prompt must hold at least one token (e.g. the end-of-text token)")
    vocab = model.config.vocab_size
    if min(prompt) < 0 or max(prompt) >= vocab:
        raise ValueError(f"prompt token ids must be in [0, {vocab})")
    device = model.wte.weight.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    block = model.config.block_size
    tokens = list(prompt)
    cache = None
    if use_cache:
        cache = KVCache(model.config, 1, min(block, len(tokens) + max_new_tokens), device, dtype=model.wte.weight.dtype)
    stops = set(stop_tokens)
    was_training = model.training
    model.eval()
    try:
        pending = tokens[-block:]  # what the next forward must see: the whole prompt first
        for _ in range(max_new_tokens):
            if cache is not None and cache.pos + len(pending) > cache.max_len:
                cache = None  # past the window: from here on, recompute the last block_size tokens each step
            if cache is None:
                pending = tokens[-block:]
            idx = torch.tensor([pending], dtype=torch.long, device=device)
            logits, _ = model(idx, kv_cache=cache)
            next_id = int(
                sample_next(logits[:, -1, :], temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            )
            tokens.append(next_id)
            pending = [next_id]
            yield next_id
            if next_id in stops:
                return
    finally:
        model.train(was_training)


def generate_ids(
    model: GPT,
    prompt: Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Collection[int] = (),
    seed: int | None = None,
    use_cache: bool = True,
) -> list[int]:
    """Generate and return the new token ids as a list (see :func:`generate` for the arguments)."""
    return list(
        generate(
            model,
            prompt,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            stop_tokens=stop_tokens,
            seed=seed,
            use_cache=use_cache,
        )
    )
