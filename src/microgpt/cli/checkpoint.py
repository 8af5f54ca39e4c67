"""``microgpt consolidate CHECKPOINT OUT``: a sharded (FSDP) checkpoint as one single-folder checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``consolidate`` command to ``app``."""

    @app.command("consolidate")
    def consolidate(
        checkpoint: Annotated[Path, typer.Argument(help="Sharded step directory, or a run directory (its newest).")],
        out: Annotated[Path, typer.Argument(help="New step directory to write (must not exist).")],
    ) -> None:
        """Join an FSDP run's sharded checkpoint into today's single-folder one (export, soups, sampling, DDP).

        The shards are concatenated tensor by tensor; the tokenizer, configs, loop and RNG state are copied, so the
        result also resumes training (under DDP, on one process, or FSDP again).
        """
        from microgpt.common.checkpoint import resolve_checkpoint
        from microgpt.common.sharded import consolidate as join

        written = join(resolve_checkpoint(checkpoint), out)
        typer.echo(f"wrote {written}")
