"""The merge recipes beyond uniform and greedy, as pure functions: properties and hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from microgpt.common.errors import ConfigError
from microgpt.model.soup import (
    Ingredient,
    check_same_run,
    model_stock,
    model_stock_ratio,
    task_arithmetic,
    ties_merge,
    uniform_soup,
)

floats = st.floats(min_value=-4.0, max_value=4.0, allow_nan=False, width=32)


def state_from(values: list[float]) -> dict[str, torch.Tensor]:
    tensor = torch.tensor(values, dtype=torch.float32)
    return {"w": tensor.reshape(-1), "b": (tensor * 0.5 - 1.0)[:3].clone()}


@settings(max_examples=40, deadline=None)
@given(st.lists(floats, min_size=4, max_size=12), st.lists(floats, min_size=4, max_size=12), st.integers(2, 4))
def test_merging_identical_ingredients_returns_them(ingredient: list[float], parent: list[float], n: int) -> None:
    size = min(len(ingredient), len(parent))
    w, p = state_from(ingredient[:size]), state_from(parent[:size])
    same = [w] * n
    for merged in (
        uniform_soup(same),
        model_stock(p, same)[0],
        task_arithmetic(p, same, 1.0),
        ties_merge(p, same, density=1.0, lam=1.0),
    ):
        for key in w:
            torch.testing.assert_close(merged[key], w[key], atol=1e-6, rtol=1e-6)


def test_model_stock_with_two_ingredients_matches_a_hand_computed_example() -> None:
    # τ1 = (1, 0), τ2 = (1, 1): cos θ = 1/√2, t = 2 cos θ / (1 + cos θ) = 0.828427; mean τ = (1, 0.5).
    parent = {"w": torch.tensor([0.5, -1.0])}
    a = {"w": torch.tensor([1.5, -1.0])}
    b = {"w": torch.tensor([1.5, 0.0])}
    merged, ratios = model_stock(parent, [a, b])
    cos = 1 / math.sqrt(2)
    t = 2 * cos / (1 + cos)
    assert ratios["w"] == pytest.approx(t)
    torch.testing.assert_close(merged["w"], torch.tensor([0.5 + t * 1.0, -1.0 + t * 0.5]))
    # t·w_avg + (1 − t)·w_0, the paper's form, is the same point.
    w_avg = (a["w"] + b["w"]) / 2
    torch.testing.assert_close(merged["w"], t * w_avg + (1 - t) * parent["w"])


def test_model_stock_ratio_edges() -> None:
    assert model_stock_ratio([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]) == 0.0  # orthogonal: the parent
    assert model_stock_ratio([torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])]) == 0.0  # opposed: clamped
    assert model_stock_ratio([torch.tensor([2.0, 2.0])] * 3) == pytest.approx(1.0)  # aligned: their mean
    # Three ingredients, all pairwise cos = 0.5: t = 3·0.5 / (1 + 2·0.5) = 0.75.
    vectors = [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.5, math.sqrt(3) / 2, 0.0])]
    third = torch.tensor([0.5, math.sqrt(3) / 6, math.sqrt(2 / 3)])
    assert model_stock_ratio([*vectors, third]) == pytest.approx(0.75, abs=1e-6)


def test_ties_matches_a_worked_example() -> None:
    parent = {"w": torch.zeros(4)}
    tau = [[3.0, -1.0, 0.5, -2.0], [-1.0, 2.0, 0.2, -4.0], [2.0, -3.0, -0.1, 1.0]]
    states = [{"w": torch.tensor(t)} for t in tau]
    # density 0.5 keeps each vector's 2 largest magnitudes: (3,0,0,-2), (0,2,0,-4), (2,-3,0,0);
    # elected signs of their sum (5,-1,0,-6): +, −, 0, −; disjoint means: (3+2)/2, −3, 0, (−2−4)/2.
    merged = ties_merge(parent, states, density=0.5, lam=1.0)
    torch.testing.assert_close(merged["w"], torch.tensor([2.5, -3.0, 0.0, -3.0]))
    scaled = ties_merge({"w": torch.ones(4)}, [{"w": s["w"] + 1} for s in states], density=0.5, lam=0.5)
    torch.testing.assert_close(scaled["w"], 1 + 0.5 * torch.tensor([2.5, -3.0, 0.0, -3.0]))


def test_ties_trims_over_the_whole_model_not_per_tensor() -> None:
    parent = {"a": torch.zeros(2), "b": torch.zeros(2)}
    one = {"a": torch.tensor([10.0, 9.0]), "b": torch.tensor([0.1, 0.2])}
    merged = ties_merge(parent, [one], density=0.5, lam=1.0)
    torch.testing.assert_close(merged["a"], torch.tensor([10.0, 9.0]))
    torch.testing.assert_close(merged["b"], torch.zeros(2))  # the small tensor loses all its entries


def test_task_arithmetic_scales_the_mean_task_vector() -> None:
    parent = {"w": torch.tensor([1.0, 1.0])}
    states = [{"w": torch.tensor([2.0, 1.0])}, {"w": torch.tensor([1.0, 3.0])}]
    torch.testing.assert_close(task_arithmetic(parent, states, 2.0)["w"], torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(task_arithmetic(parent, states, 1.0)["w"], uniform_soup(states)["w"])


@pytest.mark.parametrize("lam", [0.0, -0.5, 2.01])
def test_lambda_outside_its_range_is_refused(lam: float) -> None:
    parent, states = {"w": torch.zeros(2)}, [{"w": torch.ones(2)}]
    with pytest.raises(ConfigError, match=r"lambda: .* is outside \(0, 2\]"):
        task_arithmetic(parent, states, lam)
    with pytest.raises(ConfigError, match="lambda"):
        ties_merge(parent, states, density=0.5, lam=lam)


@pytest.mark.parametrize("density", [0.0, 1.5, -0.1])
def test_density_outside_its_range_is_refused(density: float) -> None:
    with pytest.raises(ConfigError, match=r"density: .* is outside \(0, 1\]"):
        ties_merge({"w": torch.zeros(2)}, [{"w": torch.ones(2)}], density=density, lam=1.0)


def test_model_stock_needs_two_ingredients() -> None:
    with pytest.raises(ConfigError, match="at least 2 fine-tuned ingredients"):
        model_stock({"w": torch.zeros(2)}, [{"w": torch.ones(2)}])


def test_trajectory_checkpoints_must_be_distinct_steps_of_one_run() -> None:
    state = {"w": torch.zeros(1)}
    same_run = [Ingredient(f"s{k}", state, run="sha256:r1", step=k) for k in (10, 20)]
    check_same_run(same_run)
    with pytest.raises(ConfigError, match="one training run"):
        check_same_run([*same_run, Ingredient("other", state, run="sha256:r2", step=30)])
    with pytest.raises(ConfigError, match="same step twice"):
        check_same_run([*same_run, Ingredient("again", state, run="sha256:r1", step=20)])
    with pytest.raises(ConfigError, match="at least 2 checkpoints"):
        check_same_run(same_run[:1])
