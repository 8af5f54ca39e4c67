"""``microgpt soup CKPT... --out DIR``: merge fine-tuned checkpoints into soups (uniform, greedy, Model Stock, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from microgpt.common.errors import ConfigError


def _numbers(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(value) for value in text.split(",")]
    except ValueError:
        raise ConfigError(f"{option}: expected comma-separated numbers, got {text!r}") from None


def soup(
    checkpoints: Annotated[list[Path], typer.Argument(help="Ingredient checkpoints (step or run directories).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the soups (one sub-folder per recipe).")],
    recipe: Annotated[
        list[str] | None,
        typer.Option(
            "--recipe",
            "-r",
            help="uniform, greedy, model-stock, task-arithmetic, ties or trajectory; repeat for several "
            "(default: uniform and greedy).",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Prepared data folder whose val split selects (greedy, the λ/density grids)."),
    ] = None,
    parent: Annotated[
        Path | None,
        typer.Option("--parent", help="The checkpoint the ingredients were fine-tuned from (model-stock, ...)."),
    ] = None,
    weights: Annotated[
        str | None, typer.Option("--weights", help="Uniform soup weights, comma-separated (e.g. 1,1,2).")
    ] = None,
    lambdas: Annotated[
        str | None,
        typer.Option("--lambdas", help="λ grid of task arithmetic and TIES, in (0, 2] (default 0.5,1,1.5,2)."),
    ] = None,
    densities: Annotated[
        str | None, typer.Option("--densities", help="TIES density grid, in (0, 1] (default 0.2,0.5,1).")
    ] = None,
    last: Annotated[
        int | None,
        typer.Option(
            "--last", min=2, help="trajectory: average the last K checkpoints of the one run directory given."
        ),
    ] = None,
    max_batches: Annotated[
        int | None, typer.Option("--max-batches", min=1, help="Score only this many val batches.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Windows per forward pass when scoring.")] = 16,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace soups already in --out.")] = False,
) -> None:
    """Merge fine-tuned checkpoints of one stage-1 parent into model soups (Wortsman et al. 2022, and others).

    `trajectory` averages checkpoints of ONE run (LAWA): give its step directories, or one run directory and --last K.
    """
    from microgpt.pipeline.soup_checks import RECIPES, Recipe
    from microgpt.pipeline.soups import last_checkpoints, make_soups, make_trajectory_soup

    chosen = list(recipe or ["uniform", "greedy"])
    unknown = [name for name in chosen if name not in RECIPES]
    if unknown:
        raise ConfigError(f"--recipe: unknown recipe {unknown[0]!r} (one of {', '.join(RECIPES)})")
    if "trajectory" in chosen:
        if len(chosen) > 1:
            raise ConfigError("--recipe trajectory averages one run's checkpoints: run it on its own")
        if last is not None:
            if len(checkpoints) != 1:
                raise ConfigError("--last takes one run directory, whose last K checkpoints are averaged")
            checkpoints = last_checkpoints(checkpoints[0], last)
        outcome = make_trajectory_soup(
            checkpoints,
            out_dir=out,
            data_dir=data,
            batch_size=batch_size,
            max_batches=max_batches,
            overwrite=overwrite,
        )
        loss = f", val loss {outcome.val_loss:.4f}" if outcome.val_loss is not None else ""
        typer.echo(f"trajectory soup of {', '.join(outcome.chosen)}{loss}: {outcome.checkpoint}")
        return
    if last is not None:
        raise ConfigError("--last applies to --recipe trajectory only")
    recipes: list[Recipe] = [name for name in RECIPES if name in chosen]  # type: ignore[misc]
    outcomes = make_soups(
        checkpoints,
        out_dir=out,
        recipes=recipes,
        weights=_numbers(weights, "--weights"),
        data_dir=data,
        parent=parent,
        lambdas=_numbers(lambdas, "--lambdas") or (0.5, 1.0, 1.5, 2.0),
        densities=_numbers(densities, "--densities") or (0.2, 0.5, 1.0),
        batch_size=batch_size,
        max_batches=max_batches,
        overwrite=overwrite,
    )
    for outcome in outcomes.values():
        loss = f", val loss {outcome.val_loss:.4f}" if outcome.val_loss is not None else ""
        chose = ", ".join(f"{k} {v:g}" for k, v in outcome.settings.items() if isinstance(v, int | float))
        detail = f" ({chose})" if chose else ""
        typer.echo(f"{outcome.recipe} soup of {', '.join(outcome.chosen)}{detail}{loss}: {outcome.checkpoint}")


def register(app: typer.Typer) -> None:
    """Add ``soup`` to the CLI."""
    app.command("soup")(soup)
