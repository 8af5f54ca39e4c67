"""Model soups and merges: combine the weights of models fine-tuned from one parent.

Pure functions over state dicts (the I/O around them is :mod:`microgpt.pipeline.soups`):

- **uniform soup** (Wortsman et al., 2022) — the mean of all ingredients' weights (optionally weighted);
- **greedy soup** (same paper) — sort ingredients by held-out loss, best first; start from the best and add each
  next one only if the soup's held-out loss does not get worse (the paper keeps an ingredient when held-out
  accuracy is ``>=``; with a loss that is ``<=``). Ties in the sort are broken by name, so the result is
  deterministic;
- **Model Stock** (Jang et al., 2024) — per tensor, interpolate between the parent and the ingredients' mean by a
  ratio computed from the angle between their task vectors (no held-out data needed);
- **task arithmetic** (Ilharco et al., 2023) — parent + λ · the mean task vector;
- **TIES-merging** (Yadav et al., 2023) — trim each task vector to its largest entries, elect a sign per entry,
  average only the entries that agree with it, and add λ times that to the parent;
- **trajectory averaging** (LAWA: Kaddour, 2022; Sanyal et al., 2023) — the mean of the last checkpoints of one
  run, :func:`uniform_soup` over one run's checkpoints (:func:`check_same_run` guards it).

A *task vector* is an ingredient's weights minus the parent's (``τ_i = w_i − w_0``).

Averaging only makes sense for models that share an architecture, a tokenizer and a pre-trained parent (the
paper's "same pre-trained initialisation" condition): :func:`check_soupable` refuses anything else, loudly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from microgpt.common.errors import ConfigError, MicrogptError

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
        parent: The id of the checkpoint it was fine-tuned from directly (task vectors are taken against it).
        run: The id of the training run that wrote it (trajectory averaging needs one run).
        step: Its optimizer step within that run.
        id: Its own content id (``sha256:`` of its weights file), when read from a checkpoint.
    """

    name: str
    state_dict: StateDict
    model_config: Mapping[str, Any] = field(default_factory=dict)
    tokenizer_fingerprint: str = ""
    ancestor: str = ""
    parent: str = ""
    run: str = ""
    step: int = 0
    id: str = ""


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


# ---- merges against the parent: Model Stock, task arithmetic, TIES ---------------------------------------------


def check_parent(parent: Ingredient, ingredients: Sequence[Ingredient], recipe: str) -> None:
    """Refuse a parent that is not the checkpoint every ingredient was fine-tuned from.

    Args:
        parent: The parent checkpoint, as an :class:`Ingredient` (its ``id`` is its content id).
        ingredients: The fine-tuned models (already checked with :func:`check_soupable`).
        recipe: The recipe's name, for the message.

    Raises:
        MicrogptError: When architectures, names or shapes differ, or an ingredient records another parent.
    """
    first = ingredients[0]
    if dict(parent.model_config) and dict(parent.model_config) != dict(first.model_config):
        raise MicrogptError(f"{recipe}: the parent {parent.name} has another architecture than {first.name}")
    if parent.tokenizer_fingerprint and parent.tokenizer_fingerprint != first.tokenizer_fingerprint:
        raise MicrogptError(f"{recipe}: the parent {parent.name} has another tokenizer than {first.name}")
    for key, tensor in first.state_dict.items():
        theirs = parent.state_dict.get(key)
        if theirs is None or theirs.shape != tensor.shape:
            raise MicrogptError(
                f"{recipe}: the parent {parent.name} has no parameter {key!r} of shape {tuple(tensor.shape)}"
            )
    for ingredient in ingredients:
        if parent.id and ingredient.parent and ingredient.parent != parent.id:
            raise MicrogptError(
                f"{recipe}: {ingredient.name} was not fine-tuned from {parent.name} "
                f"(its parent is {ingredient.parent}); pass the checkpoint it started from"
            )


def _task_vectors(parent: StateDict, states: Sequence[StateDict], key: str) -> list[torch.Tensor]:
    """``w_i − w_0`` for one tensor, in float64 on the CPU."""
    base = parent[key].detach().to("cpu", torch.float64)
    return [state[key].detach().to("cpu", torch.float64) - base for state in states]


def model_stock_ratio(task_vectors: Sequence[torch.Tensor]) -> float:
    """Model Stock's interpolation ratio ``t = N·cosθ / (1 + (N−1)·cosθ)`` for one tensor.

    ``cosθ`` is the mean cosine over all pairs of task vectors (the paper assumes the angle between any two
    fine-tunes is about the same, and measures it pairwise). A pair with a zero vector counts as orthogonal. A
    negative mean cosine — fine-tunes pulling apart — is clamped to 0, so the merge falls back to the parent: the
    paper's geometry (eq. 6) assumes an acute angle, and ``t`` is not an interpolation for ``cosθ < 0``.
    """
    n = len(task_vectors)
    cosines = []
    for i in range(n):
        for j in range(i + 1, n):
            a, b = task_vectors[i].flatten(), task_vectors[j].flatten()
            norms = float(a.norm() * b.norm())
            cosines.append(float(a @ b) / norms if norms > 0 else 0.0)
    cos = min(max(sum(cosines) / len(cosines), 0.0), 1.0)
    return n * cos / (1 + (n - 1) * cos)


def model_stock(parent: StateDict, states: Sequence[StateDict]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Model Stock (Jang et al., 2024): per tensor, ``w = t·mean(w_i) + (1 − t)·w_0``.

    ``t`` comes from the angle between the ingredients' task vectors (:func:`model_stock_ratio`): fine-tunes that
    agree (small angle) move the merge toward their mean, fine-tunes that disagree keep it near the parent, whose
    weights act as the anchor that denoises the mean. Layer by layer means tensor by tensor here.

    Args:
        parent: The pre-trained weights every ingredient was fine-tuned from.
        states: Two or more fine-tuned weights with the parent's names and shapes.

    Returns:
        The merged weights, and the ratio ``t`` used for each floating-point tensor.

    Raises:
        MicrogptError: With fewer than two ingredients (the angle needs a pair).

    >>> import torch
    >>> a, b = {"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([1.0, 1.0])}
    >>> merged, t = model_stock({"w": torch.zeros(2)}, [a, b])
    >>> [round(v, 4) for v in merged["w"].tolist()], round(t["w"], 4)
    ([0.8284, 0.4142], 0.8284)
    """
    if len(states) < 2:
        raise ConfigError(f"model-stock needs at least 2 fine-tuned ingredients besides the parent, got {len(states)}")
    merged: dict[str, torch.Tensor] = {}
    ratios: dict[str, float] = {}
    for key, reference in states[0].items():
        if not reference.is_floating_point():
            merged[key] = parent[key].clone()
            continue
        vectors = _task_vectors(parent, states, key)
        t = model_stock_ratio(vectors)
        mean = torch.stack(vectors).mean(dim=0)
        base = parent[key].detach().to("cpu", torch.float64)
        merged[key] = (base + t * mean).to(reference.dtype)  # t·w_avg + (1−t)·w_0 = w_0 + t·mean(τ_i)
        ratios[key] = t
    return merged, ratios


def check_lambda(value: float, setting: str = "lambda") -> None:
    """Refuse a scaling coefficient outside (0, 2] (beyond 2 the merge extrapolates past any ingredient).

    Raises:
        MicrogptError: Naming ``setting``.
    """
    if not 0.0 < value <= 2.0:
        raise ConfigError(f"{setting}: {value:g} is outside (0, 2]")


def task_arithmetic(parent: StateDict, states: Sequence[StateDict], lam: float) -> dict[str, torch.Tensor]:
    """Task arithmetic (Ilharco et al., 2023): ``w_0 + λ·mean_i(w_i − w_0)``.

    ``λ = 1`` is the uniform soup; ``λ > 1`` extrapolates along the mean task vector, which pays when each
    ingredient stopped short of where its fine-tuning was heading.

    Raises:
        MicrogptError: With no ingredients or ``λ`` outside (0, 2].
    """
    if not states:
        raise MicrogptError("task-arithmetic needs at least one fine-tuned ingredient")
    check_lambda(lam)
    merged: dict[str, torch.Tensor] = {}
    for key, reference in states[0].items():
        if not reference.is_floating_point():
            merged[key] = parent[key].clone()
            continue
        mean = torch.stack(_task_vectors(parent, states, key)).mean(dim=0)
        merged[key] = (parent[key].detach().to("cpu", torch.float64) + lam * mean).to(reference.dtype)
    return merged


def _trim_threshold(parent: StateDict, state: StateDict, keys: Sequence[str], density: float) -> float:
    """The magnitude at or below which entries of one task vector are dropped, so ``density`` of them survive.

    Computed over the whole model's entries (the paper's "top-k% of the task vector"), one ingredient at a time so
    that only one flattened float32 copy of a task vector is ever held.
    """
    flat = torch.cat(
        [(state[k].detach().float().cpu() - parent[k].detach().float().cpu()).abs().flatten() for k in keys]
    )
    drop = flat.numel() - round(density * flat.numel())
    if drop <= 0:
        return -1.0  # keep everything (zeros included; they never win a sign election anyway)
    return float(torch.kthvalue(flat, drop).values)


def ties_merge(
    parent: StateDict, states: Sequence[StateDict], *, density: float, lam: float
) -> dict[str, torch.Tensor]:
    """TIES-merging (Yadav et al., 2023): trim, elect sign, disjoint mean, then ``w_0 + λ·τ_m``.

    1. *Trim*: keep the ``density`` fraction of each task vector's entries with the largest magnitude (over the
       whole model, as the paper does), zero the rest;
    2. *elect*: per entry, the sign of the sum of the trimmed values (the sign with more total mass);
    3. *disjoint mean*: per entry, the mean of the trimmed values that have the elected sign (zeros excluded).

    Args:
        parent: The pre-trained weights.
        states: Fine-tuned weights with the parent's names and shapes.
        density: Fraction of each task vector kept, in (0, 1].
        lam: Scale of the merged task vector, in (0, 2].

    Raises:
        MicrogptError: With no ingredients, ``density`` outside (0, 1] or ``λ`` outside (0, 2].
    """
    if not states:
        raise MicrogptError("ties needs at least one fine-tuned ingredient")
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"density: {density:g} is outside (0, 1]")
    check_lambda(lam)
    keys = [key for key, tensor in states[0].items() if tensor.is_floating_point()]
    thresholds = [_trim_threshold(parent, state, keys, density) for state in states]
    merged: dict[str, torch.Tensor] = {}
    for key, reference in states[0].items():
        if not reference.is_floating_point():
            merged[key] = parent[key].clone()
            continue
        vectors = _task_vectors(parent, states, key)
        # The threshold was found on float32 magnitudes: compare in float32 so the count kept is exactly `density`.
        trimmed = torch.stack(
            [
                torch.where(tau.float().abs() > cut, tau, torch.zeros_like(tau))
                for tau, cut in zip(vectors, thresholds, strict=True)
            ]
        )  # (N, *shape)
        elected = torch.sign(trimmed.sum(dim=0))
        agrees = (torch.sign(trimmed) == elected) & (trimmed != 0)
        count = agrees.sum(dim=0)
        total = torch.where(agrees, trimmed, torch.zeros_like(trimmed)).sum(dim=0)
        tau_m = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
        merged[key] = (parent[key].detach().to("cpu", torch.float64) + lam * tau_m).to(reference.dtype)
    return merged


def check_same_run(checkpoints: Sequence[Ingredient]) -> None:
    """Refuse trajectory averaging over checkpoints that are not distinct steps of one training run.

    Raises:
        ConfigError: With fewer than two checkpoints, two runs, or a step given twice.
    """
    if len(checkpoints) < 2:
        raise ConfigError(f"recipe trajectory needs at least 2 checkpoints of one run, got {len(checkpoints)}")
    runs = {ckpt.run for ckpt in checkpoints}
    if len(runs) > 1 or "" in runs:
        names = ", ".join(f"{ckpt.name} (run {ckpt.run[:15] or 'unknown'})" for ckpt in checkpoints)
        raise ConfigError(f"recipe trajectory averages checkpoints of one training run, got several: {names}")
    steps = [ckpt.step for ckpt in checkpoints]
    if len(set(steps)) != len(steps):
        raise ConfigError(f"recipe trajectory got the same step twice: steps {sorted(steps)}")
