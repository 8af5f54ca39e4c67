"""Soups from checkpoints: read ingredients, merge them with :mod:`microgpt.model.soup`, save the result.

The arithmetic lives in :mod:`microgpt.model.soup` (pure functions over state dicts); this module is the I/O
around it and the search of each recipe's settings on the **val** split (greedy selection, the λ grid of task
arithmetic, TIES's density × λ grid). A soup is written as an ordinary checkpoint step directory — weights, the
shared model config, the ingredients' tokenizer, and ``meta.json`` recording the recipe, its settings, the
ingredients and the common stage-1 ancestor — so ``sample``, ``eval`` and further fine-tuning accept it like any
other checkpoint.

Recipes and their output folders under ``out_dir``: ``uniform-soup``, ``greedy-soup``, ``model-stock``,
``task-arithmetic``, ``ties`` (ingredients of one parent), and ``trajectory-<run>`` (the last checkpoints of one
run; :func:`make_trajectory_soup`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import yaml

from microgpt.common.checkpoint import (
    CheckpointWriter,
    capture_rng_state,
    list_checkpoints,
    load_weights,
    read_meta,
    resolve_checkpoint,
)
from microgpt.common.errors import ConfigError, MicrogptError
from microgpt.common.log import get_logger
from microgpt.data.manifest import Manifest
from microgpt.eval.split_loss import score_state_dict
from microgpt.model.checkpoint_reader import (
    TOKENIZER_DIR,
    ancestor_id,
    checkpoint_id,
    load_gpt,
    read_model_config,
    tokenizer_fingerprint,
)
from microgpt.model.gpt import GPT
from microgpt.model.soup import (
    Ingredient,
    StateDict,
    check_lambda,
    check_parent,
    check_same_run,
    check_soupable,
    greedy_soup,
    model_stock,
    task_arithmetic,
    ties_merge,
    uniform_soup,
)

log = get_logger(__name__)

Recipe = Literal["uniform", "greedy", "model-stock", "task-arithmetic", "ties", "trajectory"]
RECIPES: tuple[str, ...] = get_args(Recipe)
NEEDS_PARENT = ("model-stock", "task-arithmetic", "ties")
NEEDS_DATA = ("greedy", "task-arithmetic", "ties")  # they choose something on the val split


def soup_dir_name(recipe: str) -> str:
    """The output folder (and report name) of a recipe: ``uniform-soup``, ``greedy-soup``, ``model-stock``, ..."""
    return f"{recipe}-soup" if recipe in ("uniform", "greedy") else recipe


def load_ingredient(path: str | Path, name: str | None = None) -> tuple[Ingredient, Path]:
    """Read a checkpoint (step or run directory) as a soup ingredient; return it and its step directory.

    Raises:
        CheckpointError: When the checkpoint is missing, corrupt or records no tokenizer.
    """
    step_dir = resolve_checkpoint(path)
    meta = read_meta(step_dir)
    run = meta.get("files", {}).get("run_config.yaml") if isinstance(meta.get("files"), dict) else None
    ingredient = Ingredient(
        name=name or Path(path).name,
        state_dict=load_weights(step_dir),
        model_config=read_model_config(step_dir).to_dict(),
        tokenizer_fingerprint=tokenizer_fingerprint(step_dir),
        ancestor=ancestor_id(step_dir),
        parent=str(meta.get("parent") or ""),
        # One run's checkpoints share its run config (the trainer writes the same YAML at every save).
        run=f"sha256:{run}" if isinstance(run, str) else "",
        step=int(meta.get("step") or 0),
        id=checkpoint_id(step_dir),
    )
    return ingredient, step_dir


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


def save_soup(
    state: dict[str, Any],
    *,
    out_dir: Path,
    template: Path,
    recipe: Recipe,
    ingredients: Sequence[tuple[Ingredient, Path]],
    chosen: Sequence[str],
    val_loss: float | None = None,
    settings: dict[str, Any] | None = None,
) -> Path:
    """Write a soup as a checkpoint in ``out_dir/checkpoints/`` and return its step directory.

    The folder is written under a temporary name and renamed, and an earlier soup there is replaced only then.

    Args:
        state: The soup's weights.
        out_dir: The soup's run directory.
        template: An ingredient's step directory (model config and tokenizer are copied from it).
        recipe: How the soup was made.
        ingredients: Every ingredient offered, with its step directory.
        chosen: Names of the ingredients in the soup.
        val_loss: The soup's selection-split loss, if measured.
        settings: The recipe's settings (recorded in ``meta.json``).
    """
    model = GPT(read_model_config(template))
    model.load_state_dict(state, strict=True)  # through the model, so tied weights are stored once
    meta_in = read_meta(template)
    paths = {ing.name: path for ing, path in ingredients}
    soup_info = {
        "recipe": recipe,
        "settings": settings or {},
        "chosen": list(chosen),
        "offered": [ing.name for ing, _ in ingredients],
        "ingredient_ids": {ing.name: checkpoint_id(path) for ing, path in ingredients},
        "ingredient_paths": {name: str(path) for name, path in paths.items()},
    }
    first = ingredients[0][0]
    run_config = {"soup": soup_info}
    source_tokenizer = template / TOKENIZER_DIR

    def copy_tokenizer(directory: Path) -> None:
        if source_tokenizer.is_dir():
            shutil.copytree(source_tokenizer, directory / TOKENIZER_DIR)

    step = int(meta_in.get("step", 0))
    checkpoints = Path(out_dir) / "checkpoints"
    writer = CheckpointWriter(checkpoints, keep_last=1, keep_best=False)
    path = writer.save(
        step,
        model=model,
        optimizers=[],  # a soup has no optimizer state: fine-tuning from it starts a fresh optimizer anyway
        model_config=model.config.to_dict(),
        run_config_yaml=yaml.safe_dump(run_config, sort_keys=False),
        trainer_state={"step": step, "tokens": 0, "best_val_loss": val_loss, "loader": [], "world_size": 1},
        rng_states=[capture_rng_state()],
        meta={
            "stage": "soup",
            "tokens": int(meta_in.get("tokens") or 0),
            "val_loss": val_loss,
            "val_bpb": None,
            "best_val_loss": val_loss,
            "parent": first.ancestor,  # every ingredient descends from it; the soup is one more step from it
            "ancestor": first.ancestor,
            "tokenizer_fingerprint": first.tokenizer_fingerprint,
            "soup": soup_info,
        },
        write_extra=copy_tokenizer,
    )
    for stale in list_checkpoints(checkpoints):  # a soup folder holds one soup: drop an earlier one at another step
        if stale != path:
            shutil.rmtree(stale, ignore_errors=True)
    log.info("saved the %s soup of %s to %s", recipe, ", ".join(chosen), path)
    return path


def check_outputs_free(out_dir: Path, names: Sequence[str], overwrite: bool) -> None:
    """Refuse to replace soups already in ``out_dir`` unless ``overwrite`` (checked before any work).

    Raises:
        MicrogptError: Naming the occupied folder and ``--overwrite``.
    """
    if overwrite:
        return
    for name in names:
        target = Path(out_dir) / name
        if target.exists() and any(target.iterdir()):
            raise MicrogptError(
                f"{target} already holds a soup; pass --overwrite to replace it, or choose another --out"
            )


def _check_data(data_dir: Path, fingerprint: str) -> None:
    """Refuse a selection folder tokenized with another tokenizer than the ingredients'."""
    manifest = Manifest.load(data_dir)
    if manifest.tokenizer.fingerprint != fingerprint:
        raise MicrogptError(
            f"{data_dir} was tokenized with {manifest.tokenizer.name!r}, not the ingredients' tokenizer: "
            "prepare the selection data with the tokenizer/ saved in the ingredients' checkpoints"
        )


def _check_distinct(loaded: Sequence[tuple[Ingredient, Path]]) -> None:
    seen: dict[str, str] = {}
    for ingredient, _ in loaded:
        if ingredient.id in seen:
            raise MicrogptError(
                f"{ingredient.name} and {seen[ingredient.id]} are the same checkpoint: a soup takes each ingredient "
                "once (use --weights to weigh one more)"
            )
        seen[ingredient.id] = ingredient.name


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
    _check_settings(recipes, n=len(checkpoints), data_dir=data_dir, parent=parent, lambdas=lambdas, densities=densities)
    labels = list(names) if names is not None else _default_names(checkpoints)
    if len(labels) != len(checkpoints) or len(set(labels)) != len(labels):
        raise MicrogptError(f"ingredient names must be unique, one per checkpoint: {labels}")
    check_outputs_free(out_dir, [soup_dir_name(r) for r in recipes], overwrite)
    loaded = [load_ingredient(p, n) for p, n in zip(checkpoints, labels, strict=True)]
    ingredients = [ing for ing, _ in loaded]
    check_soupable(ingredients)  # before any averaging or scoring: refusals cost nothing
    _check_distinct(loaded)
    anchor: Ingredient | None = None
    if parent is not None and any(r in NEEDS_PARENT for r in recipes):
        anchor = load_ingredient(parent, "parent")[0]
        for recipe in recipes:
            if recipe in NEEDS_PARENT:
                check_parent(anchor, ingredients, recipe)
                break
    if data_dir is not None:
        _check_data(data_dir, ingredients[0].tokenizer_fingerprint)
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


def _check_settings(
    recipes: Sequence[str],
    *,
    n: int,
    data_dir: Path | None,
    parent: Path | None,
    lambdas: Sequence[float],
    densities: Sequence[float],
) -> None:
    """Refuse a recipe that lacks what it needs, before anything is read or written."""
    if n == 0:
        raise MicrogptError("cannot make a soup of no ingredients")
    unknown = [r for r in recipes if r not in RECIPES or r == "trajectory"]
    if unknown:
        choices = ", ".join(r for r in RECIPES if r != "trajectory")
        raise ConfigError(f"--recipe: unknown recipe {unknown[0]!r} (one of {choices})")
    for recipe in recipes:
        if recipe in NEEDS_DATA and data_dir is None:
            raise ConfigError(f"the {recipe} recipe chooses on a val split: pass a prepared data folder (--data)")
        if recipe in NEEDS_PARENT and parent is None:
            raise ConfigError(
                f"the {recipe} recipe needs the checkpoint the ingredients were fine-tuned from (--parent)"
            )
    if "model-stock" in recipes and n < 2:
        raise ConfigError(f"model-stock needs at least 2 fine-tuned ingredients besides the parent, got {n}")
    if any(r in recipes for r in ("task-arithmetic", "ties")):
        if not lambdas:
            raise ConfigError("--lambdas: give at least one λ")
        for lam in lambdas:
            try:
                check_lambda(lam, "--lambdas")
            except MicrogptError as error:
                raise ConfigError(str(error)) from None
    if "ties" in recipes:
        if not densities:
            raise ConfigError("--densities: give at least one density")
        bad = [d for d in densities if not 0.0 < d <= 1.0]
        if bad:
            raise ConfigError(f"--densities: {bad[0]:g} is outside (0, 1]")


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
        _check_data(data_dir, ingredients[0].tokenizer_fingerprint)
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
