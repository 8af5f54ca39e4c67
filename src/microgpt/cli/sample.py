"""``microgpt sample CHECKPOINT --prompt TEXT``: stream a continuation from a checkpoint or run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``sample`` command to ``app``."""

    @app.command("sample")
    def sample(
        checkpoint: Annotated[Path, typer.Argument(help="Checkpoint step directory, or a run directory (its newest).")],
        prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text to continue.")] = "\n",
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", min=1, help="Tokens to sample.")] = 200,
        temperature: Annotated[float, typer.Option("--temperature", "-t", min=0.0, help="0 is greedy.")] = 0.8,
        top_k: Annotated[int | None, typer.Option("--top-k", min=1, help="Top-k sampling.")] = 200,
        top_p: Annotated[float | None, typer.Option("--top-p", min=0.0, max=1.0, help="Top-p sampling.")] = None,
        seed: Annotated[int | None, typer.Option("--seed", help="Seed for a reproducible sample.")] = None,
        device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, mps.")] = "auto",
    ) -> None:
        """Print the prompt and its continuation as tokens are sampled."""
        from microgpt.model.api import load_model

        model = load_model(checkpoint, device=device)
        typer.echo(prompt, nl=False)
        for piece in model.stream_text(
            prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
        ):
            typer.echo(piece, nl=False)
        typer.echo("")
