"""The ``sparserobust`` command line: parse, call the API, print, map errors to exit codes.

Every user mistake ends in one line ``error: ...`` on stderr and exit code 2;
no tracebacks for them.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from sparserobust.attacks.registry import attack_names
from sparserobust.data import dataset_names
from sparserobust.engine.executors import EXECUTOR_NAMES
from sparserobust.errors import ConfigError, SparseRobustError
from sparserobust.models import model_names
from sparserobust.pruning.registry import method_names
from sparserobust.settings import check_value
from sparserobust.verify.methods import strongest, verifier_names

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


@cli.command()
@click.option("--model", "model_name", required=True, help=f"{', '.join(model_names())}.")
@click.option("--dataset", required=True, help=f"{', '.join(dataset_names())}.")
@click.option(
    "--data-dir", default=None, help="torchvision-layout data root (or $SPARSEROBUST_DATA)."
)
@click.option(
    "--epochs",
    type=int,
    default=None,
    callback=bounded("epochs"),
    help="Epochs (default: the model's recipe).",
)
@click.option(
    "--lr",
    type=float,
    default=None,
    callback=bounded("lr"),
    help="Peak learning rate (cosine schedule).",
)
@click.option(
    "--batch-size", type=int, default=None, callback=bounded("batch_size"), help="Mini-batch size."
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    callback=bounded("seed"),
    help="Random seed.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint file to write."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def train(
    model_name: str,
    dataset: str,
    data_dir: str | None,
    epochs: int | None,
    lr: float | None,
    batch_size: int | None,
    seed: int,
    device: str,
    out: str,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Train a dense reference model and write a checkpoint."""
    from sparserobust.api import train_reference

    start = time.perf_counter()
    result = train_reference(
        model_name,
        dataset,
        data_dir=data_dir,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        device=device,
        out=out,
        progress=not no_progress,
    )
    result["seconds"] = round(time.perf_counter() - start, 2)
    emit(
        result,
        as_json,
        [
            f"trained {model_name} on {dataset}: test accuracy {result['accuracy']:.4f} "
            f"in {result['seconds']:.1f}s -> {out}"
        ],
    )


@cli.command()
@click.option(
    "--checkpoint", required=True, type=click.Path(dir_okay=False), help="Checkpoint file."
)
@click.option(
    "--data-dir", default=None, help="torchvision-layout data root (or $SPARSEROBUST_DATA)."
)
@click.option(
    "--n",
    "limit",
    type=int,
    default=None,
    callback=bounded("n"),
    help="Use only the first N test images.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def evaluate(
    checkpoint: str, data_dir: str | None, limit: int | None, device: str, as_json: bool
) -> None:
    """Print the clean test accuracy and sparsity of a checkpoint."""
    from sparserobust.api import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, data_dir=data_dir, limit=limit, device=device)
    emit(
        result,
        as_json,
        [
            f"{result['model']} on {result['dataset']}: accuracy {result['accuracy']:.4f} "
            f"({result['n']} test images), sparsity {result['sparsity']:.4f} "
            f"({result['sparsity_note']})"
        ],
    )


@cli.command()
@click.option("--checkpoint", required=True, help="Dense (or less sparse) checkpoint to prune.")
@click.option(
    "--method",
    required=True,
    help=f"{', '.join(method_names())} (for structured, the sparsity is the "
    "share of neurons/channels removed).",
)
@click.option("--sparsity", "sparsity_text", required=True, help="Targets, e.g. 0.5,0.9,0.99.")
@click.option(
    "--retrain-epochs",
    type=int,
    callback=bounded("retrain_epochs"),
    default=1,
    show_default=True,
    help="Retraining epochs per level (dns: surgery epochs; 0: one-shot).",
)
@click.option(
    "--lr",
    type=float,
    default=None,
    callback=bounded("lr"),
    help="Retraining peak lr [default: the model's training lr].",
)
@click.option(
    "--steps",
    type=int,
    callback=bounded("steps"),
    default=1,
    show_default=True,
    help="Pruning+retraining steps per level (one-shot methods).",
)
@click.option(
    "--dns-finetune-epochs",
    type=int,
    callback=bounded("finetune_epochs"),
    default=1,
    show_default=True,
    help="dns: epochs with the calibrated mask fixed.",
)
@click.option("--data-dir", default=None, help="Data root (or $SPARSEROBUST_DATA).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    callback=bounded("seed"),
    help="Random seed.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def prune(
    checkpoint: str,
    method: str,
    sparsity_text: str,
    retrain_epochs: int,
    lr: float | None,
    steps: int,
    dns_finetune_epochs: int,
    data_dir: str | None,
    out: str,
    seed: int,
    device: str,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Prune a checkpoint to each sparsity (fraction of Linear/Conv weights removed);
    one checkpoint per level in OUT, each reached from the previous one. Re-running
    with the same arguments continues after the last finished level."""
    from sparserobust.pruning import DNSSettings, prune_checkpoint

    targets = parse_float_list(sparsity_text, "--sparsity")
    start = time.perf_counter()
    records = prune_checkpoint(
        checkpoint,
        method,
        targets,
        out_dir=out,
        data_dir=data_dir,
        retrain_epochs=retrain_epochs,
        lr=lr,
        steps_per_level=steps,
        seed=seed,
        settings=DNSSettings(finetune_epochs=dns_finetune_epochs) if method == "dns" else None,
        device=device,
        progress=not no_progress,
    )
    seconds = round(time.perf_counter() - start, 2)
    lines = [
        f"{r['path']}: sparsity {r['sparsity']:.4f} accuracy {r['accuracy']:.4f}"
        + (" (already done)" if r["resumed"] else f" in {r['seconds']:.1f}s")
        for r in records
    ]
    lines.append("sparsity counts Linear/Conv weights; biases and BatchNorm excluded")
    emit({"method": method, "levels": records, "seconds": seconds}, as_json, lines)


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


@cli.command()
@click.option(
    "--checkpoint", required=True, type=click.Path(dir_okay=False), help="Checkpoint file."
)
@click.option(
    "--attack",
    "attack_name",
    required=True,
    help=f"{', '.join(attack_names())}.",
)
@click.option("--norm", default=None, help="inf or 2 (default: the attack's own).")
@click.option("--eps", default=None, help="Comma-separated epsilons, e.g. 0.1,0.2.")
@click.option(
    "--n",
    "limit",
    type=int,
    default=1000,
    show_default=True,
    callback=bounded("n"),
    help="First N test images.",
)
@click.option(
    "--data-dir", default=None, help="torchvision-layout data root (or $SPARSEROBUST_DATA)."
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    callback=bounded("seed"),
    help="Attack seed.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def attack(
    checkpoint: str,
    attack_name: str,
    norm: str | None,
    eps: str | None,
    limit: int,
    data_dir: str | None,
    seed: int,
    device: str,
    as_json: bool,
) -> None:
    """Attack a checkpoint on its test images and print robustness metrics."""
    from sparserobust.attacks.api import attack_checkpoint, format_summary

    epsilons = None if eps is None else parse_float_list(eps, "--eps")
    start = time.perf_counter()
    result = attack_checkpoint(
        checkpoint,
        attack_name,
        norm=norm,
        epsilons=epsilons,
        n=limit,
        data_dir=data_dir,
        seed=seed,
        device=device,
    )
    result["seconds"] = round(time.perf_counter() - start, 2)
    emit(result, as_json, format_summary(result))


@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--eps", required=True, help="Comma-separated radii, e.g. 0.02,0.05.")
@click.option(
    "--n",
    "limit",
    type=int,
    default=100,
    show_default=True,
    callback=bounded("n"),
    help="First N test images.",
)
@click.option(
    "--method",
    default=None,
    help=f"{', '.join(verifier_names())} (weakest to strongest; default: the strongest "
    f"that handles --norm: {strongest('inf')} for inf, {strongest('2')} for 2).",
)
@click.option(
    "--time-limit",
    type=float,
    callback=bounded("time_limit"),
    default=30.0,
    show_default=True,
    help="Seconds per point of a complete method (milp) before it counts as a timeout.",
)
@click.option(
    "--norm", type=click.Choice(["inf", "2"]), default="inf", show_default=True, help="Norm."
)
@click.option(
    "--data-dir", default=None, help="torchvision-layout data root (or $SPARSEROBUST_DATA)."
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    callback=bounded("seed"),
    help="Seed of the PGD pre-check.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print a JSON object with every point's status."
)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def verify(
    checkpoint: str,
    eps: str,
    limit: int,
    method: str | None,
    time_limit: float,
    norm: str,
    data_dir: str | None,
    seed: int,
    device: str,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Decide the first N test images of CHECKPOINT at each radius: verified,
    counterexample, timeout or error (complete methods), verified or not certified
    (bounds only). The dataset is the one the checkpoint was trained on."""
    from sparserobust.api import format_verification, verify_checkpoint_points

    result = verify_checkpoint_points(
        checkpoint,
        epsilons=parse_float_list(eps, "--eps"),
        n=limit,
        method=method,
        norm=norm,
        time_limit=time_limit,
        data_dir=data_dir,
        seed=seed,
        device=device,
        progress=not no_progress,
    )
    emit(result, as_json, format_verification(result))


@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="Compact checkpoint to write."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def compact(checkpoint: str, out: str, as_json: bool) -> None:
    """Export the physically smaller model of a pruned CHECKPOINT: removed neurons
    and channels dropped, same logits. The export loads like any checkpoint
    (load_checkpoint, evaluate, attack)."""
    from sparserobust.pruning.structured import compact_checkpoint

    result = compact_checkpoint(checkpoint, out)
    emit(
        result,
        as_json,
        [
            f"{out}: {result['params_compact']} parameters (was {result['params_dense']}), "
            f"{result['flops_compact']} FLOPs per input (was {result['flops_dense']}); "
            f"{result['units_removed_share']:.4f} of neurons/channels removed, "
            f"weight sparsity {result['weight_sparsity']:.4f}",
        ],
    )


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


Command = Callable[..., None]
