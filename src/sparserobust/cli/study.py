"""Commands on a study: run, report, compare, export."""

from pathlib import Path
from typing import Any

import click

from sparserobust.cli.common import bounded, cli, emit
from sparserobust.engine.executors import EXECUTOR_NAMES
from sparserobust.errors import ConfigError


@cli.command()
@click.argument("config_path", required=False, type=click.Path(dir_okay=False))
@click.option("--out", "run_dir", default=None, help="Run directory (default runs/<name>-<hash>).")
@click.option("--data-dir", default=None, help="Data root; overrides the config's data_dir.")
@click.option("--device", default=None, help="auto, cpu or cuda; overrides the config.")
@click.option("--force", is_flag=True, help="Start the run directory over; recompute everything.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option(
    "--jobs",
    "-j",
    type=int,
    callback=bounded("jobs"),
    default=1,
    show_default=True,
    help="Workers (one torch thread each): local processes, or the CPUs of a local Ray "
    "instance; e.g. the number of CPU cores.",
)
@click.option(
    "--executor",
    type=click.Choice(EXECUTOR_NAMES),
    default=None,
    help="Where tasks run: inline (this process), local (a pool of --jobs processes) or ray "
    "(a Ray cluster, see --address). Default: inline for -j 1, local otherwise.",
)
@click.option(
    "--address",
    default=None,
    help="Ray cluster to use with --executor ray: HOST:PORT of the head node or 'auto'; "
    "without it, Ray starts on this machine with --jobs CPUs (docs/scaling.md).",
)
@click.option(
    "--mlflow",
    "mlflow_uri",
    default=None,
    help="Also log the study to this MLflow tracking URI (e.g. sqlite:///mlflow.db; needs "
    "pip install 'sparserobust[mlflow]'): one run per study, one nested run per model.",
)
def run(
    config_path: str | None,
    run_dir: str | None,
    data_dir: str | None,
    device: str | None,
    force: bool,
    as_json: bool,
    no_progress: bool,
    jobs: int,
    executor: str | None,
    address: str | None,
    mlflow_uri: str | None,
) -> None:
    """Run a whole study from CONFIG_PATH (YAML); without one, the quick digits study."""
    import dataclasses

    from sparserobust.config import load_config, quick_config, validate
    from sparserobust.pipeline import run_study

    if mlflow_uri is not None:
        from sparserobust.tracking import check_uri

        check_uri(mlflow_uri)  # before hours of work, not after
    config = load_config(config_path) if config_path else quick_config()
    changes: dict[str, Any] = {}
    if data_dir is not None:
        changes["data_dir"] = data_dir
    if device is not None:
        changes["device"] = device
    config = validate(dataclasses.replace(config, **changes))
    result = run_study(
        config,
        run_dir,
        force=force,
        progress=not no_progress,
        jobs=jobs,
        executor=executor,
        address=address,
    )
    lines = [
        f"study {config.name}: {result['models']} models, {result['results']} results in "
        f"{result['seconds']:.1f}s; report: {result['report']}"
    ]
    if mlflow_uri is not None:
        from sparserobust.tracking import log_run

        result["mlflow_run_id"] = log_run(result["run_dir"], mlflow_uri)
        lines.append(f"logged to MLflow at {mlflow_uri}: study run {result['mlflow_run_id']}")
    emit(result, as_json, lines)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--max-accuracy-drop",
    type=float,
    callback=bounded("max_accuracy_drop"),
    default=None,
    help="Clean-accuracy budget of the best sparsity (default: the config's).",
)
@click.option(
    "--out",
    "out_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Folder for the report (default RUN_DIR/report; use it for a read-only run).",
)
@click.option(
    "--seed",
    "seeds",
    type=int,
    callback=bounded("seeds"),
    multiple=True,
    help="Report only this seed (repeatable), e.g. while the other seeds still run.",
)
def report(
    run_dir: str, max_accuracy_drop: float | None, out_dir: str | None, seeds: tuple[int, ...]
) -> None:
    """(Re)write the markdown/HTML report of RUN_DIR."""
    from sparserobust.report import write_report

    path = write_report(run_dir, max_accuracy_drop, out_dir, list(seeds) or None)
    click.echo(f"report: {path} (and {path.with_suffix('.html')})")


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True)
@click.option(
    "--out",
    "out_dir",
    default="compare",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for compare.md, compare.html and overview.png.",
)
@click.option(
    "--max-accuracy-drop",
    type=float,
    callback=bounded("max_accuracy_drop"),
    default=None,
    help="Clean-accuracy budget of the best sparsity (default: the runs' largest).",
)
def compare(run_dirs: tuple[str, ...], out_dir: str, max_accuracy_drop: float | None) -> None:
    """Put two or more run directories side by side: verdict tables and the overview
    figure, one colour per run."""
    from sparserobust.report import write_comparison

    path = write_comparison(list(run_dirs), out_dir, max_accuracy_drop)
    click.echo(f"comparison: {path} (and {path.with_suffix('.html')})")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--csv",
    "csv_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write one CSV row per (model, measurement, number).",
)
@click.option(
    "--json",
    "json_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write every model and result as JSON.",
)
@click.option(
    "--mlflow",
    "mlflow_uri",
    default=None,
    help="Log the run to this MLflow tracking URI (e.g. sqlite:///mlflow.db; needs "
    "pip install 'sparserobust[mlflow]'): one run per study, one nested run per model.",
)
def export(
    run_dir: str, csv_path: str | None, json_path: str | None, mlflow_uri: str | None
) -> None:
    """Export the results database of RUN_DIR as CSV and/or JSON, and/or log it to MLflow
    (logging the same run again replaces what was logged before)."""
    from sparserobust.export import export_run

    if csv_path is None and json_path is None and mlflow_uri is None:
        raise ConfigError("give --csv FILE, --json FILE and/or --mlflow URI")
    if mlflow_uri is not None:
        from sparserobust.tracking import check_uri

        check_uri(mlflow_uri)
    if csv_path is not None and json_path is not None:
        same = Path(csv_path).parent.resolve() / Path(csv_path).name
        if same == Path(json_path).parent.resolve() / Path(json_path).name:
            raise ConfigError("--csv and --json name the same file: give two different paths")
    if csv_path is not None or json_path is not None:
        written = export_run(run_dir, csv_path=csv_path, json_path=json_path)
        if csv_path is not None:
            click.echo(f"wrote {written['csv']} rows to {csv_path}")
        if json_path is not None:
            click.echo(f"wrote {written['json']} results to {json_path}")
    if mlflow_uri is not None:
        from sparserobust.tracking import log_run

        click.echo(f"logged to MLflow at {mlflow_uri}: study run {log_run(run_dir, mlflow_uri)}")
