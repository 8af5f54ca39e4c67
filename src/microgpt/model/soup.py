"""Model soups: average the weights of models fine-tuned from one parent (Wortsman et al., 2022).

Pure functions over state dicts. The paper's two recipes:

- **uniform soup** — the mean of all ingredients' weights (optionally weighted);
- **greedy soup** — sort ingredients by held-out loss, best first; start from the best and add each next one
  only if the soup's held-out loss does not get worse (the paper keeps an ingredient when held-out accuracy is
  ``>=``; with a loss that is ``<=``). Ties in the sort are broken by name, so the result is deterministic.

Averaging only makes sense for models that share an architecture, a tokenizer and a pre-trained parent (the
paper's "same pre-trained initialisation" condition): :func:`check_soupable` refuses anything else, loudly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from microgpt.common.errors import MicrogptError

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Ingredient:
    """One fine-tuned model offered to a soup.

    Attributes:
        name: A label for reports (``ingredient-1``).
        state_dict: Its weights.
        model_config: Its architecture, as plain data (``GPTConfig.model_dump()``).
        tokenizer_fingerprint: The fingerprint of the tokenizer it was trained with.
        ancestor: The id of the stage-1 checkpoint it was fine-tuned from.
    """

    name: str
    state_dict: StateDict
    model_config: Mapping[str, Any] = field(default_factory=dict)
    tokenizer_fingerprint: str = ""
    ancestor: str = ""


def check_soupable(ingredients: Sequence[Ingredient]) -> None:
    """Refuse ingredients that cannot be averaged, naming the first mismatch.

    Raises:
        MicrogptError: With no ingredients, or when architectures, parameter names or shapes, dtypes,
            tokenizers or stage-1 ancestors differ.
    """
    if not ingredients:
        raise MicrogptError("cannot make a soup of no ingredients")
    first = ingredients[0]
    for other in ingredients[1:]:
        pair = f"{first.name} and {other.name}"
        if dict(first.model_config) != dict(other.model_config):
            keys = sorted(set(first.model_config) | set(other.model_config))
            diffs = [k for k in keys if first.model_config.get(k) != other.model_config.get(k)]
            detail = ", ".join(f"{k}={first.model_config.get(k)!r} vs {other.model_config.get(k)!r}" for k in diffs)
            raise MicrogptError(f"cannot soup {pair}: different architectures ({detail})")
        if first.tokenizer_fingerprint != other.tokenizer_fingerprint:
            raise MicrogptError(f"cannot soup {pair}: trained with different tokenizers")
        if first.ancestor != other.ancestor:
            raise MicrogptError(
                f"cannot soup {pair}: they do not share a stage-1 parent ({first.ancestor!r} vs {other.ancestor!r})"
            )
        missing = sorted(set(first.state_dict) ^ set(other.state_dict))
        if missing:
            raise MicrogptError(f"cannot soup {pair}: parameter names differ (e.g. {missing[0]!r})")
        for key, tensor in first.state_dict.items():
            theirs = other.state_dict[key]
            if tensor.shape != theirs.shape:
                shapes = f"{tuple(tensor.shape)} vs {tuple(theirs.shape)}"
                raise MicrogptError(f"cannot soup {pair}: parameter {key!r} has shape {shapes}")
            if tensor.dtype != theirs.dtype:
                raise MicrogptError(f"cannot soup {pair}: parameter {key!r} has dtype {tensor.dtype} vs {theirs.dtype}")


def uniform_soup(state_dicts: Sequence[StateDict], weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """Return the (weighted) mean of state dicts, accumulated in float64 and cast back to each tensor's dtype.

    Args:
        state_dicts: Weights with identical names and shapes.
        weights: Optional non-negative mixing weights (normalised to sum to 1); default equal.

    Raises:
        MicrogptError: With no state dicts, or weights of the wrong length, negative, or all zero.
    """
    if not state_dicts:
        raise MicrogptError("cannot average no state dicts")
    if weights is None:
        weights = [1.0] * len(state_dicts)
    if len(weights) != len(state_dicts):
        raise MicrogptError(f"got {len(weights)} soup weights for {len(state_dicts)} ingredients")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise MicrogptError("soup weights must be non-negative and not all zero")
    total = float(sum(weights))
    soup: dict[str, torch.Tensor] = {}
    for key, reference in state_dicts[0].items():
        if not reference.is_floating_point():  # integer buffers (none in GPT today): keep the first one's
            soup[key] = reference.clone()
            continue
        accumulator = torch.zeros(reference.shape, dtype=torch.float64)
        for state, weight in zip(state_dicts, weights, strict=True):
            accumulator += state[key].detach().to("cpu", torch.float64) * (weight / total)
        soup[key] = accumulator.to(reference.dtype)
    return soup


@dataclass(frozen=True)
class GreedySoupResult:
    """What the greedy recipe chose.

    Attributes:
        state_dict: The soup's weights (the mean of the chosen ingredients).
        chosen: Names of the ingredients in the soup, in the order they were added.
        loss: The soup's held-out loss.
        trace: One line per candidate: ``(name, loss of the soup with it, kept?)``.
    """

    state_dict: dict[str, torch.Tensor]
    chosen: list[str]
    loss: float
    trace: list[tuple[str, float, bool]]


def greedy_soup(
    ingredients: Sequence[Ingredient],
    held_out_loss: Callable[[StateDict], float],
    ingredient_losses: Mapping[str, float] | None = None,
) -> GreedySoupResult:
    """Build a greedy soup: add ingredients best-first, keeping each only if held-out loss does not rise.

    Args:
        ingredients: Compatible ingredients (checked with :func:`check_soupable`).
        held_out_loss: Evaluates a state dict on the held-out selection split (lower is better).
        ingredient_losses: Each ingredient's own held-out loss, if already known (saves evaluations).

    Returns:
        The soup, which by construction is never worse than the best ingredient on the selection split.
    """
    check_soupable(ingredients)
    losses = dict(ingredient_losses or {})
    for ingredient in ingredients:
        if ingredient.name not in losses:
            losses[ingredient.name] = held_out_loss(ingredient.state_dict)
    ranked = sorted(ingredients, key=lambda ing: (losses[ing.name], ing.name))
    chosen = [ranked[0]]
    best_loss = losses[ranked[0].name]
    trace = [(ranked[0].name, best_loss, True)]
    for candidate in ranked[1:]:
        trial = uniform_soup([ing.state_dict for ing in [*chosen, candidate]])
        loss = held_out_loss(trial)
        keep = loss <= best_loss
        trace.append((candidate.name, loss, keep))
        if keep:
            chosen.append(candidate)
            best_loss = loss
    state = uniform_soup([ing.state_dict for ing in chosen])
    return GreedySoupResult(state_dict=state, chosen=[ing.name for ing in chosen], loss=best_loss, trace=trace)
