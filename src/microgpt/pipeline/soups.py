"""Soups from checkpoints: read ingredients, average them with :mod:`microgpt.model.soup`, save the soup.

The arithmetic lives in :mod:`microgpt.model.soup` (pure functions over state dicts); this module is the I/O
around it. A soup is written as an ordinary checkpoint step directory — weights, the shared model config, the
ingredients' tokenizer, and ``meta.json`` recording the recipe, the ingredients and the common stage-1 ancestor —
so ``sample``, ``eval`` and further fine-tuning accept it like any other checkpoint.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from microgpt.common.checkpoint import (
    CheckpointWriter,
    capture_rng_state,
    load_weights,
    read_meta,
    resolve_checkpoint,
)
from microgpt.common.errors import MicrogptError
from microgpt.common.log import get_logger
from microgpt.model.finetune import (
    TOKENIZER_DIR,
    ancestor_id,
    checkpoint_id,
    read_model_config,
    tokenizer_fingerprint,
)
from microgpt.model.gpt import GPT
from microgpt.model.soup import Ingredient, check_soupable, greedy_soup, uniform_soup
from microgpt.pipeline.evaluate import load_gpt, score_state_dict

log = get_logger(__name__)

Recipe = Literal["uniform", "greedy"]


def load_ingredient(path: str | Path, name: str | None = None) -> tuple[Ingredient, Path]:
    """Read a checkpoint (step or run directory) as a soup ingredient; return it and its step directory.

    Raises:
        CheckpointError: When the checkpoint is missing, corrupt or records no tokenizer.
    """
    step_dir = resolve_checkpoint(path)
    ingredient = Ingredient(
        name=name or Path(path).name,
        state_dict=load_weights(step_dir),
        model_config=read_model_config(step_dir).to_dict(),
        tokenizer_fingerprint=tokenizer_fingerprint(step_dir),
        ancestor=ancestor_id(step_dir),
    )
    return ingredient, step_dir


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
        recipe: ``uniform`` or ``greedy``.
        checkpoint: Its step directory.
        chosen: The ingredients it averages.
        val_loss: Its loss on the selection split (greedy; uniform when a data folder was given).
        trace: Greedy only: ``(candidate, val loss of the soup with it, kept?)``, best ingredient first.
    """

    recipe: Recipe
    checkpoint: Path
    chosen: list[str]
    val_loss: float | None = None
    trace: list[tuple[str, float, bool]] = field(default_factory=list)


def save_soup(
    state: dict[str, Any],
    *,
    out_dir: Path,
    template: Path,
    recipe: Recipe,
    ingredients: Sequence[tuple[Ingredient, Path]],
    chosen: Sequence[str],
    val_loss: float | None = None,
) -> Path:
    """Write a soup as a checkpoint in ``out_dir/checkpoints/`` and return its step directory.

    Args:
        state: The soup's weights.
        out_dir: The soup's run directory.
        template: An ingredient's step directory (model config and tokenizer are copied from it).
        recipe: How the soup was made.
        ingredients: Every ingredient offered, with its step directory.
        chosen: Names of the ingredients in the soup.
        val_loss: The soup's selection-split loss, if measured.
    """
    model = GPT(read_model_config(template))
    model.load_state_dict(state, strict=True)  # through the model, so tied weights are stored once
    meta_in = read_meta(template)
    paths = {ing.name: path for ing, path in ingredients}
    soup_info = {
        "recipe": recipe,
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
    writer = CheckpointWriter(Path(out_dir) / "checkpoints", keep_last=1, keep_best=False)
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
    log.info("saved the %s soup of %s to %s", recipe, ", ".join(chosen), path)
    return path


def make_soups(
    checkpoints: Sequence[str | Path],
    *,
    out_dir: Path,
    recipes: Sequence[Recipe] = ("uniform", "greedy"),
    names: Sequence[str] | None = None,
    weights: Sequence[float] | None = None,
    data_dir: Path | None = None,
    batch_size: int = 16,
    max_batches: int | None = None,
) -> dict[Recipe, SoupOutcome]:
    """Make the uniform and/or greedy soup of ``checkpoints`` and save each under ``out_dir/<recipe>-soup``.

    Args:
        checkpoints: Ingredient checkpoints (step or run directories).
        out_dir: Parent folder of the soups' run directories.
        recipes: Which soups to make.
        names: Ingredient names for reports (default: folder names).
        weights: Uniform soup mixing weights (default: equal).
        data_dir: Prepared data whose ``val`` split is the greedy recipe's held-out selection split (required for
            greedy; for uniform it only adds the soup's val loss to the outcome).
        batch_size: Windows per forward pass when scoring.
        max_batches: Score only the first batches of the split (None: all of it).

    Returns:
        One outcome per recipe.

    Raises:
        MicrogptError: When ingredients cannot be souped (naming the mismatch), greedy has no data folder, or a
            name repeats.
    """
    if not checkpoints:
        raise MicrogptError("cannot make a soup of no ingredients")
    if "greedy" in recipes and data_dir is None:
        raise MicrogptError("the greedy soup needs a data folder whose val split selects ingredients (--data)")
    labels = list(names) if names is not None else _default_names(checkpoints)
    if len(labels) != len(checkpoints) or len(set(labels)) != len(labels):
        raise MicrogptError(f"ingredient names must be unique, one per checkpoint: {labels}")
    loaded = [load_ingredient(p, n) for p, n in zip(checkpoints, labels, strict=True)]
    ingredients = [ing for ing, _ in loaded]
    check_soupable(ingredients)  # before any averaging or scoring: refusals cost nothing
    if len(ingredients) == 1:
        log.warning("a soup of one ingredient is that ingredient: the soups equal %s", labels[0])
    template = loaded[0][1]
    scorer = load_gpt(template) if data_dir is not None else None

    def held_out_loss(state: Any) -> float:
        assert scorer is not None and data_dir is not None
        return score_state_dict(scorer, state, data_dir, "val", batch_size=batch_size, max_batches=max_batches).loss

    outcomes: dict[Recipe, SoupOutcome] = {}
    if "uniform" in recipes:
        state = uniform_soup([ing.state_dict for ing in ingredients], weights)
        loss = held_out_loss(state) if scorer is not None else None
        path = save_soup(
            state,
            out_dir=out_dir / "uniform-soup",
            template=template,
            recipe="uniform",
            ingredients=loaded,
            chosen=labels,
            val_loss=loss,
        )
        outcomes["uniform"] = SoupOutcome("uniform", path, labels, loss)
    if "greedy" in recipes:
        result = greedy_soup(ingredients, held_out_loss)
        path = save_soup(
            result.state_dict,
            out_dir=out_dir / "greedy-soup",
            template=template,
            recipe="greedy",
            ingredients=loaded,
            chosen=result.chosen,
            val_loss=result.loss,
        )
        outcomes["greedy"] = SoupOutcome("greedy", path, result.chosen, result.loss, result.trace)
    return outcomes
