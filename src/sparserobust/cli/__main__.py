"""``python -m sparserobust.cli``."""

from sparserobust.cli.app import run_main

run_main()
