"""What every command shares: the click group, logging, output, bounded flags and
number lists."""

import json
import logging
import math
import sys
from collections.abc import Callable
from typing import Any

import click

from sparserobust.errors import ConfigError
from sparserobust.settings import check_value

log = logging.getLogger("sparserobust")


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.INFO if verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)


def emit(payload: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    """Print ``payload`` as one JSON object, or ``lines`` as text."""
    if as_json:
        click.echo(json.dumps(payload, sort_keys=True))
    else:
        for line in lines:
            click.echo(line)


def bounded(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback: the flag's value meets the bound of the setting ``name``
    (:func:`sparserobust.settings.check_value`, the one place every bound lives), before
    the command runs or writes anything."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        check_value(name, value, max(param.opts, key=len))
        return value

    return check


def parse_float_list(text: str, what: str) -> list[float]:
    """``"0.1,0.2"`` -> [0.1, 0.2]; ConfigError naming ``what`` on bad input."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(t == "" for t in items):
        raise ConfigError(f"{what} needs a comma-separated list of numbers, got {text!r}")
    try:
        values = [float(t) for t in items]
    except ValueError:
        raise ConfigError(f"{what} needs numbers, got {text!r}") from None
    if any(not math.isfinite(v) for v in values):
        raise ConfigError(f"{what} must be finite numbers, got {text!r}")
    return values


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sparserobust")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
def cli(verbose: bool) -> None:
    """sparserobust: prune models to a sweep of sparsities, attack them, measure robustness."""
    _setup_logging(verbose)
