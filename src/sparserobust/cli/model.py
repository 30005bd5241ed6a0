"""Commands on one model: train, evaluate, prune, attack, verify, compact."""

import time

import click

from sparserobust.attacks.registry import attack_names
from sparserobust.cli.common import bounded, cli, emit, parse_float_list
from sparserobust.data import dataset_names
from sparserobust.models import model_names
from sparserobust.pruning.registry import method_names
from sparserobust.verify.methods import strongest, verifier_names


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
    help="N test images (the first N, or from --start on).",
)
@click.option(
    "--start",
    type=int,
    default=0,
    show_default=True,
    callback=bounded("start"),
    help="Index of the first test image (to shard or extend a run: --start 100 --n 100).",
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
    help="Seconds per point of a complete method (milp, bab) before it counts as a timeout.",
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
    start: int,
    method: str | None,
    time_limit: float,
    norm: str,
    data_dir: str | None,
    seed: int,
    device: str,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Decide N test images of CHECKPOINT at each radius: verified,
    counterexample, timeout or error (complete methods), verified or not certified
    (bounds only). The dataset is the one the checkpoint was trained on."""
    from sparserobust.api import format_verification, verify_checkpoint_points

    result = verify_checkpoint_points(
        checkpoint,
        epsilons=parse_float_list(eps, "--eps"),
        n=limit,
        start=start,
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
