"""``microgpt soup CKPT... --out DIR``: average fine-tuned checkpoints into uniform and/or greedy soups."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from microgpt.common.errors import ConfigError


def soup(
    checkpoints: Annotated[list[Path], typer.Argument(help="Ingredient checkpoints (step or run directories).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the soups (uniform-soup/, greedy-soup/).")],
    recipe: Annotated[
        list[str] | None,
        typer.Option("--recipe", "-r", help="uniform or greedy; repeat for both (default: both)."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Prepared data folder whose val split selects the greedy soup's ingredients."),
    ] = None,
    weights: Annotated[
        str | None, typer.Option("--weights", help="Uniform soup weights, comma-separated (e.g. 1,1,2).")
    ] = None,
    max_batches: Annotated[int | None, typer.Option("--max-batches", help="Score only this many val batches.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Windows per forward pass when scoring.")] = 16,
) -> None:
    """Average fine-tuned checkpoints of one stage-1 parent into model soups (Wortsman et al. 2022)."""
    from microgpt.pipeline.soups import Recipe, make_soups

    recipes: list[Recipe] = []
    for name in recipe or ["uniform", "greedy"]:
        if name not in ("uniform", "greedy"):
            raise ConfigError(f"--recipe: unknown recipe {name!r} (uniform or greedy)")
        recipes.append("uniform" if name == "uniform" else "greedy")
    mix: list[float] | None = None
    if weights is not None:
        try:
            mix = [float(w) for w in weights.split(",")]
        except ValueError:
            raise ConfigError(f"--weights: expected comma-separated numbers, got {weights!r}") from None
    outcomes = make_soups(
        checkpoints,
        out_dir=out,
        recipes=recipes,
        weights=mix,
        data_dir=data,
        batch_size=batch_size,
        max_batches=max_batches,
    )
    for outcome in outcomes.values():
        loss = f", val loss {outcome.val_loss:.4f}" if outcome.val_loss is not None else ""
        typer.echo(f"{outcome.recipe} soup of {', '.join(outcome.chosen)}{loss}: {outcome.checkpoint}")


def register(app: typer.Typer) -> None:
    """Add ``soup`` to the CLI."""
    app.command("soup")(soup)
