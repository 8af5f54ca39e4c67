from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
import torch

from microgpt.common.errors import MicrogptError
from microgpt.model.soup import Ingredient, check_soupable, greedy_soup, uniform_soup


def make(
    name: str,
    value: float,
    model_config: dict[str, int] | None = None,
    tokenizer_fingerprint: str = "tok",
    ancestor: str = "s1",
) -> Ingredient:
    state = {"w": torch.full((2, 3), value), "b": torch.full((3,), -value)}
    return Ingredient(
        name,
        state,
        model_config={"n_layer": 2} if model_config is None else model_config,
        tokenizer_fingerprint=tokenizer_fingerprint,
        ancestor=ancestor,
    )


def test_uniform_soup_is_the_mean() -> None:
    torch.manual_seed(0)
    states = [{"w": torch.randn(4, 5), "b": torch.randn(5)} for _ in range(3)]
    soup = uniform_soup(states)
    for key in ("w", "b"):
        torch.testing.assert_close(soup[key], torch.stack([s[key] for s in states]).mean(0))
        assert soup[key].dtype == torch.float32


def test_weighted_soup() -> None:
    a, b = {"w": torch.zeros(2)}, {"w": torch.ones(2)}
    torch.testing.assert_close(uniform_soup([a, b], [1.0, 3.0])["w"], torch.full((2,), 0.75))
    with pytest.raises(MicrogptError, match="2 ingredients"):
        uniform_soup([a, b], [1.0])
    with pytest.raises(MicrogptError, match="non-negative"):
        uniform_soup([a, b], [1.0, -1.0])
    with pytest.raises(MicrogptError, match="no state dicts"):
        uniform_soup([])


def quadratic_loss(target: float) -> tuple[list[float], Callable[[Mapping[str, torch.Tensor]], float]]:
    calls: list[float] = []

    def loss(state: Mapping[str, torch.Tensor]) -> float:
        value = float(((state["w"] - target) ** 2).mean())
        calls.append(value)
        return value

    return calls, loss


def test_greedy_soup_keeps_only_helpful_ingredients() -> None:
    # Loss is distance of w to 1.0. Ingredients at 0.75 and 1.25 average to exactly 1.0; 5.0 only hurts.
    ingredients = [make("far", 5.0), make("low", 0.75), make("high", 1.25)]
    _, loss = quadratic_loss(1.0)
    result = greedy_soup(ingredients, loss)
    assert result.chosen[0] in {"low", "high"}  # equal loss: tie broken by name → "high"
    assert result.chosen == ["high", "low"]
    assert result.loss == pytest.approx(0.0)
    assert [name for name, _, kept in result.trace if not kept] == ["far"]
    torch.testing.assert_close(result.state_dict["w"], torch.ones(2, 3))


def test_greedy_never_worse_than_best_ingredient() -> None:
    torch.manual_seed(1)
    for _ in range(5):
        ingredients = [make(f"i{k}", float(torch.randn(()))) for k in range(4)]
        _, loss = quadratic_loss(0.3)
        result = greedy_soup(ingredients, loss)
        best = min(loss(ing.state_dict) for ing in ingredients)
        assert result.loss <= best + 1e-12


def test_greedy_uses_given_losses_and_sorts_by_them() -> None:
    ingredients = [make("a", 1.0), make("b", 1.0)]
    calls, loss = quadratic_loss(1.0)
    result = greedy_soup(ingredients, loss, {"a": 0.5, "b": 0.1})
    assert result.trace[0][0] == "b"  # best given loss first
    assert len(calls) == 1  # only the trial soup was evaluated
    assert result.chosen == ["b", "a"]  # equal loss is kept (the paper's >= rule)


def test_soup_of_one() -> None:
    result = greedy_soup([make("only", 2.0)], quadratic_loss(0.0)[1])
    assert result.chosen == ["only"]
    torch.testing.assert_close(result.state_dict["w"], torch.full((2, 3), 2.0))


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (make("x", 1.0, model_config={"n_layer": 3}), r"different architectures \(n_layer=2 vs 3\)"),
        (make("x", 1.0, tokenizer_fingerprint="other"), "different tokenizers"),
        (make("x", 1.0, ancestor="s2"), "do not share a stage-1 parent"),
        (Ingredient("x", {"w": torch.zeros(2, 3)}, {"n_layer": 2}, "tok", "s1"), "parameter names differ"),
        (Ingredient("x", {"w": torch.zeros(3, 2), "b": torch.zeros(3)}, {"n_layer": 2}, "tok", "s1"), "shape"),
        (Ingredient("x", {"w": torch.zeros(2, 3).double(), "b": torch.zeros(3)}, {"n_layer": 2}, "tok", "s1"), "dtype"),
    ],
)
def test_refusals_name_the_mismatch(other: Ingredient, message: str) -> None:
    with pytest.raises(MicrogptError, match=message):
        check_soupable([make("a", 1.0), other])
    with pytest.raises(MicrogptError, match="cannot soup a and x"):
        greedy_soup([make("a", 1.0), other], quadratic_loss(0.0)[1])


def test_no_ingredients() -> None:
    with pytest.raises(MicrogptError, match="no ingredients"):
        check_soupable([])
