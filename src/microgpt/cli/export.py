"""``microgpt export CHECKPOINT OUT_DIR --format hf`` and ``microgpt import SOURCE OUT_DIR`` (Hugging Face)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``export`` and ``import`` commands to ``app``."""

    @app.command("export")
    def export(
        checkpoint: Annotated[Path, typer.Argument(help="Checkpoint step directory, or a run directory (its newest).")],
        out_dir: Annotated[Path, typer.Argument(help="Folder to write (created; files in it are overwritten).")],
        fmt: Annotated[str, typer.Option("--format", "-f", help="Output format: hf (transformers).")] = "hf",
    ) -> None:
        """Write a checkpoint as a folder transformers loads with AutoModelForCausalLM (no custom code).

        RoPE models (rmsnorm, no bias) become LlamaForCausalLM (swiglu), Qwen3ForCausalLM (swiglu + qk_norm) or
        ArceeForCausalLM (relu2); learned-position models become GPT2LMHeadModel (layernorm, gelu). ReLU² with
        QK-norm has no family and is refused. The tokenizer is written as tokenizer.json with identical ids.
        """
        from microgpt.common.errors import ConfigError
        from microgpt.model.api import load_model
        from microgpt.model.hf import HF_CLASSES, export_arch, export_hf

        if fmt != "hf":
            raise ConfigError(f"unknown export format {fmt!r}; the only one is hf")
        loaded = load_model(checkpoint, device="cpu")
        out = export_hf(loaded.model, loaded.tokenizer, out_dir)
        typer.echo(f"wrote {out} ({HF_CLASSES[export_arch(loaded.model.config)]}) from {loaded.checkpoint}")

    @app.command("import")
    def import_(
        source: Annotated[str, typer.Argument(help="gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a folder.")],
        out_dir: Annotated[Path, typer.Argument(help="Run directory to write the checkpoint into (new or empty).")],
        overwrite: Annotated[
            bool, typer.Option("--overwrite", help="Replace the checkpoints already in OUT_DIR.")
        ] = False,
    ) -> None:
        """Turn GPT-2 (downloaded or cached) or a transformers GPT-2/Llama/Qwen3/Arcee folder into a checkpoint."""
        from microgpt.model.hf import import_to_checkpoint

        step_dir = import_to_checkpoint(source, out_dir, overwrite=overwrite)
        typer.echo(f"wrote {step_dir}")
