"""The ``microgpt`` command: one Typer app; each command module adds itself to the table below.

Errors meant for users (:class:`~microgpt.common.errors.MicrogptError`) print one line, ``error: ...``, and
exit with the error's code (2 for config errors, 1 otherwise) — no traceback.
"""

from __future__ import annotations

import sys

import typer

from microgpt import __version__
from microgpt.common.errors import MicrogptError
from microgpt.common.log import setup_logging

app = typer.Typer(
    name="microgpt",
    help="microgpt: train a GPT from scratch — tokenizer, data, pretraining, fine-tuning, soups.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"microgpt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """microgpt: train a GPT from scratch — tokenizer, data, pretraining, fine-tuning, soups."""


def _register_commands() -> None:
    """Plug each command module into the app (the one table of commands)."""
    # Command modules are imported here, not at the top, so `--help` stays fast and each stays optional.
    registrations: list[str] = [
        "tokenizer",
        "data",
        "train",
        "finetune",
        "sample",
        "eval",
        "soup",
        "pipeline",
        "export",
        "checkpoint",
    ]
    for module_name in registrations:
        module = __import__(f"microgpt.cli.{module_name}", fromlist=["register"])
        module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors print one line and exit non-zero."""
    setup_logging()
    _register_commands()
    try:
        app(args=argv, prog_name="microgpt")  # standalone: usage errors exit 2, --help/--version exit 0
    except MicrogptError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
