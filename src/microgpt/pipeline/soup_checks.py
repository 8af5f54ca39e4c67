"""The checks a soup request must pass before any soup is merged or written.

The recipes microgpt knows (:data:`RECIPES`) and what each needs: a parent checkpoint (Model Stock, task arithmetic,
TIES) or a selection split to choose on (greedy, task arithmetic, TIES). Each check refuses with a message naming
the flag to fix: an unknown recipe or a setting out of range (:class:`~microgpt.common.errors.ConfigError`), an
occupied output folder, selection data of another tokenizer, or one checkpoint offered twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

from microgpt.common.errors import ConfigError, MicrogptError
from microgpt.data.manifest import Manifest
from microgpt.model.soup import Ingredient, check_lambda

Recipe = Literal["uniform", "greedy", "model-stock", "task-arithmetic", "ties", "trajectory"]
RECIPES: tuple[str, ...] = get_args(Recipe)
NEEDS_PARENT = ("model-stock", "task-arithmetic", "ties")
NEEDS_DATA = ("greedy", "task-arithmetic", "ties")  # they choose something on the val split


def check_settings(
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


def check_data(data_dir: Path, fingerprint: str) -> None:
    """Refuse a selection folder tokenized with another tokenizer than the ingredients'."""
    manifest = Manifest.load(data_dir)
    if manifest.tokenizer.fingerprint != fingerprint:
        raise MicrogptError(
            f"{data_dir} was tokenized with {manifest.tokenizer.name!r}, not the ingredients' tokenizer: "
            "prepare the selection data with the tokenizer/ saved in the ingredients' checkpoints"
        )


def check_distinct(loaded: Sequence[tuple[Ingredient, Path]]) -> None:
    """Refuse a checkpoint offered twice as an ingredient (a soup takes each one once)."""
    seen: dict[str, str] = {}
    for ingredient, _ in loaded:
        if ingredient.id in seen:
            raise MicrogptError(
                f"{ingredient.name} and {seen[ingredient.id]} are the same checkpoint: a soup takes each ingredient "
                "once (use --weights to weigh one more)"
            )
        seen[ingredient.id] = ingredient.name
