r"""``microgpt train CONFIG [key=value ...]``: prepare the data if needed, then train or resume.

``--nproc N`` relaunches the same command under ``torchrun --standalone --nproc_per_node=N`` (one machine).
For several machines run torchrun yourself on each, e.g.::

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\
        -m microgpt train configs/big.yaml
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from microgpt.common.config import load_config
from microgpt.common.dist import DistInfo


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to ``app``."""

    @app.command("train")
    def train(
        config: Annotated[Path, typer.Argument(help="Run config YAML (e.g. configs/shakespeare.yaml).")],
        overrides: Annotated[list[str] | None, typer.Argument(help="Overrides: train.max_steps=100 ...")] = None,
        nproc: Annotated[int, typer.Option("--nproc", min=1, help="Processes (launches torchrun).")] = 1,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace another run in out_dir.")] = False,
    ) -> None:
        """Train a GPT from a run config; rerun the same command to resume from the newest checkpoint."""
        if nproc > 1 and "WORLD_SIZE" not in os.environ:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
            command += ["-m", "microgpt", "train", str(config), *(overrides or [])]
            command += ["--overwrite"] if overwrite else []
            raise typer.Exit(subprocess.call(command))
        from microgpt.model.pretrain import RunConfig
        from microgpt.pipeline.pretraining import run_pretraining

        run = load_config(RunConfig, config, overrides or [])
        result = run_pretraining(run, overwrite=overwrite)
        if DistInfo.from_env().is_main:
            typer.echo(result.summary())
