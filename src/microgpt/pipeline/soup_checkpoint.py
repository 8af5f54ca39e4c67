"""Soups as checkpoints: a checkpoint read as a soup ingredient, a soup written as a checkpoint step directory.

A soup is written as an ordinary checkpoint step directory — weights, the shared model config, the ingredients'
tokenizer, and ``meta.json`` recording the recipe, its settings, the ingredients and the common stage-1 ancestor —
so ``sample``, ``eval`` and further fine-tuning accept it like any other checkpoint.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from microgpt.common.checkpoint import (
    CheckpointWriter,
    capture_rng_state,
    list_checkpoints,
    read_meta,
    resolve_checkpoint,
)
from microgpt.common.checkpoint_load import load_weights
from microgpt.common.log import get_logger
from microgpt.model.checkpoint_reader import (
    TOKENIZER_DIR,
    ancestor_id,
    checkpoint_id,
    read_model_config,
    tokenizer_fingerprint,
)
from microgpt.model.gpt import GPT
from microgpt.model.soup import Ingredient
from microgpt.pipeline.soup_checks import Recipe

log = get_logger(__name__)


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
