"""Soups from checkpoints: read ingredients, merge them with :mod:`microgpt.model.soup`, save the result.

The arithmetic lives in :mod:`microgpt.model.soup` (pure functions over state dicts); this module runs each recipe
and searches its settings on the **val** split (greedy selection, the λ grid of task arithmetic, TIES's density ×
λ grid). What a request must satisfy is checked first (:mod:`microgpt.pipeline.soup_checks`); ingredients are read,
and each soup saved as an ordinary checkpoint, by :mod:`microgpt.pipeline.soup_checkpoint`.

Recipes and their output folders under ``out_dir``: ``uniform-soup``, ``greedy-soup``, ``model-stock``,
``task-arithmetic``, ``ties`` (ingredients of one parent), and ``trajectory-<run>`` (the last checkpoints of one
run; :func:`make_trajectory_soup`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from microgpt.common.checkpoint import list_checkpoints
from microgpt.common.errors import ConfigError, MicrogptError
from microgpt.common.log import get_logger
from microgpt.eval.split_loss import score_state_dict
from microgpt.model.checkpoint_reader import load_gpt
from microgpt.model.soup import (
    Ingredient,
    StateDict,
    check_parent,
    check_same_run,
    check_soupable,
    greedy_soup,
    model_stock,
    task_arithmetic,
    ties_merge,
    uniform_soup,
)
from microgpt.pipeline.soup_checkpoint import load_ingredient, save_soup
from microgpt.pipeline.soup_checks import (
    NEEDS_PARENT,
    Recipe,
    check_data,
    check_distinct,
    check_outputs_free,
    check_settings,
)

log = get_logger(__name__)


def soup_dir_name(recipe: str) -> str:
    """The output folder (and report name) of a recipe: ``uniform-soup``, ``greedy-soup``, ``model-stock``, ..."""
    return f"{recipe}-soup" if recipe in ("uniform", "greedy") else recipe


def last_checkpoints(run_dir: str | Path, k: int) -> list[Path]:
    """The last ``k`` complete checkpoints of a run directory (or its ``checkpoints/`` folder), oldest first.

    Raises:
        MicrogptError: When the run holds fewer than ``k`` (say how to keep more).
    """
    root = Path(run_dir)
    root = root / "checkpoints" if (root / "checkpoints").is_dir() else root
    found = list_checkpoints(root)
    if len(found) < k:
        raise MicrogptError(
            f"{run_dir}: trajectory averaging of the last {k} checkpoints needs {k}, found {len(found)} "
            "(train with train.keep_last=0 or >= that many, and a checkpoint_interval that saves them)"
        )
    return found[-k:]


def _default_names(checkpoints: Sequence[str | Path]) -> list[str]:
    """Name each ingredient after its run directory (``runs/a/checkpoints/step-0000100`` → ``a``), made unique."""
    names = []
    for raw in checkpoints:
        path = Path(raw)
        run = path.parent.parent if path.name.startswith("step-") and path.parent.name == "checkpoints" else path
        names.append(run.name or str(path))
    if len(set(names)) < len(names):
        names = [f"{name}#{index}" for index, name in enumerate(names, start=1)]
    return names


@dataclass
class SoupOutcome:
    """A soup written to disk.

    Attributes:
        recipe: The recipe (see :data:`Recipe`).
        checkpoint: Its step directory.
        chosen: The ingredients (or checkpoints) it combines.
        val_loss: Its loss on the selection split (when a data folder was given).
        trace: Greedy only: ``(candidate, val loss of the soup with it, kept?)``, best ingredient first.
        settings: What the recipe chose or computed (``lambda``, ``density``, Model Stock's mean ratio ...).
        grid: Each setting tried on the val split and its loss (task arithmetic, TIES).
    """

    recipe: Recipe
    checkpoint: Path
    chosen: list[str]
    val_loss: float | None = None
    trace: list[tuple[str, float, bool]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    grid: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """As JSON data (the pipeline's ``steps/soups.json``)."""
        return {
            "recipe": self.recipe,
            "checkpoint": str(self.checkpoint),
            "chosen": self.chosen,
            "val_loss": self.val_loss,
            "trace": [list(t) for t in self.trace],
            "settings": self.settings,
            "grid": [list(g) for g in self.grid],
        }


def _grid_search(
    candidates: Sequence[tuple[dict[str, float], Callable[[], dict[str, Any]]]],
    held_out_loss: Callable[[StateDict], float],
) -> tuple[dict[str, Any], dict[str, float], float, list[tuple[str, float]]]:
    """Try each setting on the val split; return the best state, its setting, its loss and the whole grid."""
    best: tuple[dict[str, Any], dict[str, float], float] | None = None
    grid: list[tuple[str, float]] = []
    for setting, build in candidates:
        state = build()
        loss = held_out_loss(state)
        grid.append((", ".join(f"{k}={v:g}" for k, v in setting.items()), loss))
        if best is None or loss < best[2]:  # ties keep the earlier (smaller) setting
            best = (state, setting, loss)
    assert best is not None
    return best[0], best[1], best[2], grid


def make_soups(
    checkpoints: Sequence[str | Path],
    *,
    out_dir: Path,
    recipes: Sequence[Recipe] = ("uniform", "greedy"),
    names: Sequence[str] | None = None,
    weights: Sequence[float] | None = None,
    data_dir: Path | None = None,
    parent: Path | None = None,
    lambdas: Sequence[float] = (0.5, 1.0, 1.5, 2.0),
    densities: Sequence[float] = (0.2, 0.5, 1.0),
    batch_size: int = 16,
    max_batches: int | None = None,
    overwrite: bool = False,
    device: torch.device | str = "cpu",
) -> dict[Recipe, SoupOutcome]:
    """Merge ``checkpoints`` with each recipe and save each soup under ``out_dir/<name>`` (:func:`soup_dir_name`).

    Args:
        checkpoints: Ingredient checkpoints (step or run directories), all fine-tuned from one parent.
        out_dir: Parent folder of the soups' run directories.
        recipes: Which soups to make (``trajectory`` has its own function, :func:`make_trajectory_soup`).
        names: Ingredient names for reports (default: folder names).
        weights: Uniform soup mixing weights (default: equal).
        data_dir: Prepared data whose ``val`` split is the held-out selection split (greedy, and the grids of task
            arithmetic and TIES); with it, every soup's val loss is reported.
        parent: The checkpoint the ingredients were fine-tuned from (Model Stock, task arithmetic, TIES).
        lambdas: The λ grid of task arithmetic and TIES, each in (0, 2].
        densities: TIES's density grid, each in (0, 1].
        batch_size: Windows per forward pass when scoring.
        max_batches: Score only the first batches of the split (None: all of it).
        overwrite: Replace soups already in ``out_dir`` (otherwise an occupied folder is refused before any work).
        device: Where the val split is scored (the pipeline passes its training device).

    Returns:
        One outcome per recipe.

    Raises:
        ConfigError: For a bad setting: an unknown recipe, a recipe without what it needs (a parent, a data folder,
            two ingredients), a λ or density outside its range. Nothing is written.
        MicrogptError: When ingredients cannot be souped (naming the mismatch), a name or checkpoint repeats, the
            data folder has another tokenizer, or an output folder is occupied. Nothing is written.
    """
    check_settings(recipes, n=len(checkpoints), data_dir=data_dir, parent=parent, lambdas=lambdas, densities=densities)
    labels = list(names) if names is not None else _default_names(checkpoints)
    if len(labels) != len(checkpoints) or len(set(labels)) != len(labels):
        raise MicrogptError(f"ingredient names must be unique, one per checkpoint: {labels}")
    check_outputs_free(out_dir, [soup_dir_name(r) for r in recipes], overwrite)
    loaded = [load_ingredient(p, n) for p, n in zip(checkpoints, labels, strict=True)]
    ingredients = [ing for ing, _ in loaded]
    check_soupable(ingredients)  # before any averaging or scoring: refusals cost nothing
    check_distinct(loaded)
    anchor: Ingredient | None = None
    if parent is not None and any(r in NEEDS_PARENT for r in recipes):
        anchor = load_ingredient(parent, "parent")[0]
        for recipe in recipes:
            if recipe in NEEDS_PARENT:
                check_parent(anchor, ingredients, recipe)
                break
    if data_dir is not None:
        check_data(data_dir, ingredients[0].tokenizer_fingerprint)
    if len(ingredients) == 1:
        log.warning("a soup of one ingredient is that ingredient: the soups equal %s", labels[0])
    template = loaded[0][1]
    scorer = load_gpt(template, device) if data_dir is not None else None

    def held_out_loss(state: StateDict) -> float:
        assert scorer is not None and data_dir is not None
        return score_state_dict(
            scorer, state, data_dir, "val", batch_size=batch_size, max_batches=max_batches, device=device
        ).loss

    states = [ing.state_dict for ing in ingredients]
    outcomes: dict[Recipe, SoupOutcome] = {}

    def save(recipe: Recipe, state: dict[str, Any], chosen: list[str], loss: float | None, **extra: Any) -> None:
        settings = extra.pop("settings", {})
        path = save_soup(
            state,
            out_dir=out_dir / soup_dir_name(recipe),
            template=template,
            recipe=recipe,
            ingredients=loaded,
            chosen=chosen,
            val_loss=loss,
            settings=settings,
        )
        outcomes[recipe] = SoupOutcome(recipe, path, chosen, loss, settings=settings, **extra)

    for recipe in recipes:
        if recipe == "uniform":
            state = uniform_soup(states, weights)
            save(recipe, state, labels, held_out_loss(state) if scorer is not None else None)
        elif recipe == "greedy":
            result = greedy_soup(ingredients, held_out_loss)
            save(recipe, result.state_dict, result.chosen, result.loss, trace=result.trace)
        elif recipe == "model-stock":
            assert anchor is not None
            state, ratios = model_stock(anchor.state_dict, states)
            mean_t = sum(ratios.values()) / len(ratios)
            loss = held_out_loss(state) if scorer is not None else None
            save(recipe, state, labels, loss, settings={"mean_ratio": mean_t, "ratios": ratios})
        elif recipe == "task-arithmetic":
            assert anchor is not None
            base = anchor.state_dict
            tried = [({"lambda": lam}, _bind(task_arithmetic, base, states, lam=lam)) for lam in lambdas]
            state, setting, loss, grid = _grid_search(tried, held_out_loss)
            save(recipe, state, labels, loss, settings=setting, grid=grid)
        elif recipe == "ties":
            assert anchor is not None
            base = anchor.state_dict
            tried = [
                ({"density": d, "lambda": lam}, _bind(ties_merge, base, states, density=d, lam=lam))
                for d in densities
                for lam in lambdas
            ]
            state, setting, loss, grid = _grid_search(tried, held_out_loss)
            save(recipe, state, labels, loss, settings=setting, grid=grid)
        else:
            raise ConfigError(f"recipe {recipe!r} is not an ingredient merge (use make_trajectory_soup)")
    return outcomes


def _bind(function: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> Callable[[], dict[str, Any]]:
    return lambda: function(*args, **kwargs)


def make_trajectory_soup(
    checkpoints: Sequence[str | Path],
    *,
    out_dir: Path,
    name: str = "trajectory",
    data_dir: Path | None = None,
    batch_size: int = 16,
    max_batches: int | None = None,
    overwrite: bool = False,
    device: torch.device | str = "cpu",
) -> SoupOutcome:
    """Trajectory averaging (LAWA): the mean of several checkpoints of one run, saved as ``out_dir/<name>``.

    Args:
        checkpoints: Step directories of one training run (e.g. :func:`last_checkpoints`).
        out_dir: Parent folder of the soup's run directory.
        name: The soup's folder and report name (``trajectory-<run>`` in the pipeline).
        data_dir: With it, the soup's val loss is measured.
        batch_size: Windows per forward pass when scoring.
        max_batches: Score only the first batches of the split.
        overwrite: Replace a soup already there.
        device: Where the val split is scored.

    Raises:
        MicrogptError: When the checkpoints come from different runs, repeat a step, number fewer than 2, or the
            output folder is occupied. Nothing is written.
    """
    check_outputs_free(out_dir, [name], overwrite)
    loaded = [load_ingredient(path) for path in checkpoints]
    loaded = [(replace(ing, name=f"step {ing.step}"), path) for ing, path in loaded]
    ingredients = [ing for ing, _ in loaded]
    check_same_run(ingredients)
    check_soupable(ingredients)
    if data_dir is not None:
        check_data(data_dir, ingredients[0].tokenizer_fingerprint)
    state = uniform_soup([ing.state_dict for ing in ingredients])
    loss = None
    if data_dir is not None:
        scorer = load_gpt(loaded[0][1], device)
        loss = score_state_dict(
            scorer, state, data_dir, "val", batch_size=batch_size, max_batches=max_batches, device=device
        ).loss
    chosen = [ing.name for ing in ingredients]
    settings = {"steps": [ing.step for ing in ingredients]}
    path = save_soup(
        state,
        out_dir=out_dir / name,
        template=loaded[-1][1],
        recipe="trajectory",
        ingredients=loaded,
        chosen=chosen,
        val_loss=loss,
        settings=settings,
    )
    return SoupOutcome("trajectory", path, chosen, loss, settings=settings)
