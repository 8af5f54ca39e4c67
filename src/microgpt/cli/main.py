"""The ``microgpt`` command: one Typer app; each command module adds itself to the table below.

Errors meant for users (:class:`~microgpt.common.errors.MicrogptError`) print one line, ``error: ...``, and
exit with the error's code (2 for config errors, 1 otherwise) — no traceback. Usage errors (an unknown option, a
missing argument, a value out of its range) print one line too, naming the command's help, and exit 2.
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
    """Run the CLI; user errors and usage errors print one line and exit non-zero."""
    setup_logging()
    _register_commands()
    try:
        code = app(args=argv, prog_name="microgpt", standalone_mode=False)  # --help/--version return 0
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        sys.exit(1)
    except typer.TyperException as error:  # click's usage errors (typer vendors click; this is their public base)
        ctx = getattr(error, "ctx", None)
        if type(error).__name__ == "NoArgsIsHelpError":  # ``microgpt data``: typer has printed the help
            sys.exit(2)
        format_message = getattr(error, "format_message", None)
        message = format_message() if callable(format_message) else str(error)
        where = f"; see '{ctx.command_path} -h'" if ctx is not None else ""  # unknown option, value out of range
        typer.echo(f"error: {message.rstrip('.')}{where}", err=True)
        sys.exit(int(getattr(error, "exit_code", 2)))
    except MicrogptError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    sys.exit(code if isinstance(code, int) else 0)  # as click's standalone mode: always exit
