"""``microgpt pipeline CONFIG``: the whole two-stage job — pretrain, fine-tune ingredients, soups, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def pipeline(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML (e.g. configs/demo.yaml).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted overrides, e.g. stage1.train.max_steps=100 out_dir=runs/x.")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Validate the config, read the first document of every source, show the plan; train nothing.",
        ),
    ] = False,
) -> None:
    """Run tokenizer → stage 1 → stage-2 ingredients → uniform and greedy soups → evaluation → report.

    Every step is skipped when its output is complete, so rerunning an interrupted pipeline continues it.
    """
    from microgpt.common.config import load_config
    from microgpt.pipeline.config import PipelineConfig
    from microgpt.pipeline.run import check_inputs, describe, run_pipeline

    cfg = load_config(PipelineConfig, config, overrides or [])
    if dry_run:
        check_inputs(cfg)
        typer.echo(describe(cfg), nl=False)
        return
    report = run_pipeline(cfg)
    if report:
        typer.echo(f"report: {Path(cfg.out_dir) / 'report.md'} (wall time {report['wall_time_s']:.1f} s)")
        for model in report["models"]:
            typer.echo(f"  {model['name']:<16} test loss {model['test_loss']:.4f}  bits/byte {model['test_bpb']:.4f}")


def register(app: typer.Typer) -> None:
    """Add ``pipeline`` to the CLI."""
    app.command("pipeline")(pipeline)
