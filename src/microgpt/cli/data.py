"""``microgpt data``: prepare a dataset folder (tokenizer + token shards) and describe one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from microgpt.common.config import load_config
from microgpt.data.config import SPLITS
from microgpt.data.manifest import Manifest


def _summary(manifest: Manifest, directory: Path) -> str:
    tokenizer = manifest.tokenizer
    lines = [
        f"{directory}: tokenizer {tokenizer.name} (n_vocab {tokenizer.n_vocab:,}, {tokenizer.fingerprint[:12]}), "
        f"{manifest.dtype} shards"
    ]
    for split in SPLITS:
        info = manifest.split(split)
        if info.documents:
            lines.append(
                f"  {split:5s} {info.documents:>9,} docs {info.bytes:>14,} bytes {info.tokens:>14,} tokens "
                f"{len(info.shards):>4} shards ({info.bytes / max(info.tokens, 1):.2f} bytes/token)"
            )
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to the app."""
    data_app = typer.Typer(help="Prepare token shards from text, files, URLs or HF datasets.", no_args_is_help=True)

    @data_app.command("prepare")
    def prepare(
        config: Annotated[Path, typer.Argument(help="YAML file with tokenizer, data and out_dir sections.")],
        overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. data.workers=2.")] = None,
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    ) -> None:
        """Train (or load) the tokenizer and tokenize the sources into shards; resumes when interrupted."""
        from microgpt.data.dataset import PrepareConfig, prepare_dataset

        prepare_config = load_config(PrepareConfig, config, overrides or [])
        manifest = prepare_dataset(prepare_config, progress=progress)
        typer.echo(_summary(manifest, prepare_config.out_dir))

    @data_app.command("info")
    def info(directory: Annotated[Path, typer.Argument(help="A prepared data folder.")]) -> None:
        """Describe a prepared data folder: tokenizer and per-split documents, bytes, tokens, shards."""
        typer.echo(_summary(Manifest.load(directory), directory))

    app.add_typer(data_app, name="data")
