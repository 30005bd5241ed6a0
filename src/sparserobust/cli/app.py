"""The entry point: run the command line, turning user errors into one line and an exit
code."""

from __future__ import annotations

import sys

import click

import sparserobust.cli.model  # noqa: F401  (registers train, evaluate, prune, attack, ...)
import sparserobust.cli.study  # noqa: F401  (registers run, report, compare, export)
from sparserobust.cli.common import cli
from sparserobust.errors import SparseRobustError


def one_line(message: str) -> str:
    """``message`` with line breaks written as ``\\n``: an error is always one line."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning user errors into one line and exit code 2."""
    try:
        cli.main(args=argv, prog_name="sparserobust", standalone_mode=False)
    except SparseRobustError as exc:
        click.echo(f"error: {one_line(str(exc))}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        hint = " (see --help)" if isinstance(exc, click.UsageError) else ""
        click.echo(f"error: {one_line(exc.format_message())}{hint}", err=True)
        return exc.exit_code
    except click.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("error: interrupted; finished results are kept, re-run to continue", err=True)
        return 130
    return 0


def run_main() -> None:  # pragma: no cover - console script shim
    sys.exit(main())
