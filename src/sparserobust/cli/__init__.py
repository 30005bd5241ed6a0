"""The ``sparserobust`` command line: parse, call the API, print, map errors to exit codes.

Every user mistake ends in one line ``error: ...`` on stderr and exit code 2;
no tracebacks for them. ``common`` holds the click group and what every command
shares, ``model`` the commands on one model (train, evaluate, prune, attack, verify,
compact), ``study`` those on a study (run, report, compare, export), ``app`` the entry
point.
"""

from sparserobust.cli.app import main, one_line, run_main
from sparserobust.cli.common import cli

__all__ = ["cli", "main", "one_line", "run_main"]
