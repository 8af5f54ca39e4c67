"""``microgpt finetune CONFIG [key=value ...]``: fine-tune a checkpoint (stage 2) on prepared data.

The config is a :class:`~microgpt.model.finetune.FinetuneConfig` (``init_from``, ``data_dir``, ``out_dir``,
``train``); ``configs/gpt2-finetune.yaml`` fine-tunes an imported GPT-2. Rerunning the same command resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from microgpt.common.config import load_config
from microgpt.common.dist import DistInfo


def register(app: typer.Typer) -> None:
    """Add the ``finetune`` command to ``app``."""

    @app.command("finetune")
    def finetune(
        config: Annotated[Path, typer.Argument(help="Fine-tuning config YAML (e.g. configs/gpt2-finetune.yaml).")],
        overrides: Annotated[list[str] | None, typer.Argument(help="Overrides: train.lr=1e-5 ...")] = None,
    ) -> None:
        """Fine-tune a checkpoint's weights with a fresh optimizer on prepared data; rerun to resume."""
        from microgpt.model.finetune import FinetuneConfig, FinetuneTrainer

        run = load_config(FinetuneConfig, config, overrides or [])
        result = FinetuneTrainer(run).fit()
        if DistInfo.from_env().is_main:
            typer.echo(result.summary())
