"""``microgpt eval CHECKPOINT``: loss and bits per byte of any checkpoint on its recorded or given data, or HellaSwag.

Any checkpoint kind works without ``--data``: a stage-1 run (its data), a fine-tuned ingredient or a soup (their
stage-2 data folder; ``--split test`` for the held-out test split); an imported model records no data and needs
``--data``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``eval`` command to ``app``."""

    @app.command("eval")
    def evaluate(
        checkpoint: Annotated[Path, typer.Argument(help="Checkpoint step directory, or a run directory (its newest).")],
        data: Annotated[
            Path | None,
            typer.Option(
                "--data",
                help="Prepared data folder (manifest.json) or YAML with a data section (default: the data the "
                "checkpoint's lineage records: a run's data, an ingredient's or a soup's stage-2 folder).",
            ),
        ] = None,
        split: Annotated[str, typer.Option("--split", help="val or test.")] = "val",
        batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sequences per batch.")] = 16,
        max_batches: Annotated[int | None, typer.Option("--max-batches", min=1, help="Stop early.")] = None,
        device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, mps.")] = "auto",
        task: Annotated[
            str, typer.Option("--task", help="loss (on --data/--split), or hellaswag (--batch-size then counts items).")
        ] = "loss",
        hellaswag_file: Annotated[
            str | None, typer.Option("--hellaswag-file", help="HellaSwag jsonl path or URL (default: val set).")
        ] = None,
        limit: Annotated[int | None, typer.Option("--limit", min=1, help="hellaswag: score the first N items.")] = None,
        harness: Annotated[
            bool,
            typer.Option(
                "--harness",
                help="hellaswag: render items as lm-evaluation-harness's official task (activity label, [title] "
                "clean-up), so acc and acc_norm_chars compare with the harness's published acc and acc_norm.",
            ),
        ] = False,
    ) -> None:
        """Print the mean loss (nats/token) and bits per byte on the split, or HellaSwag accuracy."""
        from microgpt.common.errors import MicrogptError

        if task == "hellaswag":
            from microgpt.eval.hellaswag import evaluate_hellaswag_checkpoint

            hs = evaluate_hellaswag_checkpoint(
                checkpoint,
                hellaswag_file,
                limit=limit,
                batch_size=batch_size,
                device=device,
                progress=True,
                harness=harness,
            )
            if harness:
                typer.echo(
                    f"hellaswag (lm-eval rendering): acc {hs.acc:.4f}, acc_norm {hs.acc_norm_chars:.4f} (the "
                    f"harness's definitions; nanoGPT's mean-token acc_norm {hs.acc_norm:.4f}) ({hs.n_items:,} items)"
                )
            else:
                typer.echo(
                    f"hellaswag: acc {hs.acc:.4f}, acc_norm {hs.acc_norm:.4f} (mean token loss, as nanoGPT), "
                    f"acc_norm_chars {hs.acc_norm_chars:.4f} ({hs.n_items:,} items)"
                )
            return
        if harness:
            raise MicrogptError("--harness applies to --task hellaswag only")
        if task != "loss":
            raise MicrogptError(f"--task must be loss or hellaswag, got {task!r}")
        from microgpt.eval.split_loss import evaluate_checkpoint

        if split not in ("val", "test"):
            raise MicrogptError(f"--split must be val or test, got {split!r}")
        result = evaluate_checkpoint(
            checkpoint,
            data_config=data,
            split="val" if split == "val" else "test",
            batch_size=batch_size,
            max_batches=max_batches,
            device=device,
        )
        if max_batches is not None and result.partial:
            scored = (
                f"{result.tokens:,} of the split's {result.split_tokens:,} tokens in {max_batches} batch(es); "
                f"bits/byte at the split's {result.split_bytes / result.split_tokens:.2f} bytes/token"
            )
        else:
            scored = f"{result.tokens:,} tokens scored, {result.split_bytes:,} bytes"
        typer.echo(f"{split}: loss {result.loss:.4f} nats/token, {result.bits_per_byte:.4f} bits/byte ({scored})")
