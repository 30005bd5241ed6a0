"""Checkpoints: round trip, metadata, masks, atomic writes, refusal of bad files."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch.nn.utils import prune

from sparserobust import load_checkpoint, save_checkpoint
from sparserobust.checkpoint import read_metadata
from sparserobust.errors import CheckpointError
from sparserobust.models import build_model
from sparserobust.pruning import sparsity_report

META = {
    "model": "lenet300",
    "dataset": "digits",
    "input_shape": [1, 8, 8],
    "num_classes": 10,
    "mean": [0.3],
    "std": [0.4],
    "seed": 3,
    "accuracy": 0.5,
}


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("lenet300", (1, 8, 8), 10, [0.3], [0.4])


def test_round_trip_is_exact(tmp_path: Path) -> None:
    model = small_model()
    save_checkpoint(tmp_path / "m.st", model, META)
    loaded, meta = load_checkpoint(tmp_path / "m.st")
    assert not loaded.training
    for (k, a), (k2, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b)
    assert meta["seed"] == 3 and meta["sparserobust_version"] == "0.1.0"
    assert read_metadata(tmp_path / "m.st")["accuracy"] == 0.5


def test_masks_are_restored_exactly(tmp_path: Path) -> None:
    model = small_model()
    gen = torch.Generator().manual_seed(1)
    mask = (torch.rand(model[2].weight.shape, generator=gen) > 0.7).float()
    prune.custom_from_mask(model[2], "weight", mask)
    before = sparsity_report(model)
    save_checkpoint(tmp_path / "p.st", model, META)
    loaded, _ = load_checkpoint(tmp_path / "p.st")
    assert prune.is_pruned(loaded)
    assert torch.equal(loaded[2].weight_mask, mask)
    assert sparsity_report(loaded).pruned == before.pruned == int((mask == 0).sum())
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(loaded(x), model.eval()(x))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\x00" * 64])
def test_garbage_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.st"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a valid sparserobust checkpoint"):
        load_checkpoint(path)


def test_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "m.st", small_model(), META)
    data = (tmp_path / "m.st").read_bytes()
    (tmp_path / "t.st").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "t.st")


def test_pickle_payload_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": Payload()}, fh)
    torch.save({"x": Payload()}, tmp_path / "evil2.pt")
    marker.unlink(missing_ok=True)
    for p in (path, tmp_path / "evil2.pt"):
        with pytest.raises(CheckpointError):
            load_checkpoint(p)
    assert not marker.exists()


def test_other_architecture_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "m.st", small_model(), META)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(tmp_path / "m.st"), framework="pt") as fh:
        header = fh.metadata()
    header["sparserobust"] = header["sparserobust"].replace('"lenet300"', '"linear"')
    tensors = {"2.weight": torch.zeros(10, 64)}
    save_file(tensors, str(tmp_path / "x.st"), metadata=header)
    with pytest.raises(CheckpointError, match="does not fit architecture"):
        load_checkpoint(tmp_path / "x.st")


def test_same_content_gives_identical_bytes(tmp_path: Path) -> None:
    for name in ("a.st", "b.st"):
        save_checkpoint(tmp_path / name, small_model(), META)
    assert (tmp_path / "a.st").read_bytes() == (tmp_path / "b.st").read_bytes()


def test_foreign_safetensors_and_missing_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "f.st"))
    with pytest.raises(CheckpointError, match="not a sparserobust checkpoint"):
        load_checkpoint(tmp_path / "f.st")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.st")


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError):
        save_checkpoint(tmp_path / "m.st", small_model(), {"model": "lenet300"})
    assert list(tmp_path.iterdir()) == []


def test_older_format_says_so(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    old_header = {"format": "sparserobust-checkpoint", "format_version": "1", "meta": "{}"}
    save_file({"w": torch.zeros(2)}, str(tmp_path / "old.st"), metadata=old_header)
    with pytest.raises(CheckpointError, match="older sparserobust"):
        load_checkpoint(tmp_path / "old.st")
