"""Checkpoint files: round trips, weights-only files, corruption errors and the atomic-write guarantee."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from anchorfree.checkpoint import CheckpointError, load_checkpoint, remove_stale_temporaries, save_checkpoint

METADATA = {"config": {"train": {"epochs": 3, "lr": 0.01}}, "class_names": ["cat", "dög"], "category_ids": [1, 7], "epoch": 2, "best": None}


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = model(torch.randn(2, 3, 8, 8, generator=generator)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def temporaries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


def test_weights_and_metadata_round_trip(tmp_path: Path) -> None:
    model = small_model()
    train_steps(model, torch.optim.SGD(model.parameters(), lr=0.1), 2, seed=0)  # moves the BN running stats
    path = save_checkpoint(tmp_path / "weights" / "best.safetensors", model, METADATA)
    assert path == tmp_path / "weights" / "best.safetensors"
    checkpoint = load_checkpoint(path)
    assert checkpoint.path == path
    assert checkpoint.metadata == METADATA
    assert json.loads(path.with_suffix(".json").read_text(encoding="utf-8")) == METADATA  # the human-readable mirror
    state = model.state_dict()
    assert checkpoint.model_state.keys() == state.keys()
    for name, tensor in state.items():
        assert checkpoint.model_state[name].dtype == tensor.dtype and torch.equal(checkpoint.model_state[name], tensor), name
    assert checkpoint.optimizer_state is None  # weights only
    fresh = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    fresh.load_state_dict(checkpoint.model_state)  # strict


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda parameters: torch.optim.SGD(parameters, lr=0.1, momentum=0.9, weight_decay=1e-4),
        lambda parameters: torch.optim.AdamW(parameters, lr=0.01, weight_decay=0.05),
    ],
    ids=["sgd_momentum", "adamw"],
)
def test_optimizer_state_round_trip_resumes_identically(tmp_path: Path, make_optimizer) -> None:
    model = small_model()
    optimizer = make_optimizer(model.parameters())
    train_steps(model, optimizer, 3, seed=0)
    path = save_checkpoint(tmp_path / "last.safetensors", model, METADATA, optimizer)

    checkpoint = load_checkpoint(path)
    assert checkpoint.optimizer_state is not None
    restored_model = small_model()
    restored_model.load_state_dict(checkpoint.model_state)
    restored = make_optimizer(restored_model.parameters())
    restored.load_state_dict(checkpoint.optimizer_state)

    original_state, loaded_state = optimizer.state_dict(), restored.state_dict()
    assert loaded_state["state"].keys() == original_state["state"].keys() and len(original_state["state"]) == 6
    for index, values in original_state["state"].items():
        assert loaded_state["state"][index].keys() == values.keys()
        for key, value in values.items():
            loaded = loaded_state["state"][index][key]
            if isinstance(value, torch.Tensor):
                assert torch.equal(loaded, value), (index, key)
            else:
                assert loaded == value, (index, key)
    # param_groups survive JSON (tuples come back as lists).
    assert json.loads(json.dumps(loaded_state["param_groups"])) == json.loads(json.dumps(original_state["param_groups"]))

    # The next steps are bit-identical.
    train_steps(model, optimizer, 2, seed=1)
    train_steps(restored_model, restored, 2, seed=1)
    for (name, expected), actual in zip(model.state_dict().items(), restored_model.state_dict().values()):
        assert torch.equal(actual, expected), name


@pytest.mark.parametrize("keep", ["empty", "4 bytes", "header only", "half", "all but the last byte"])
def test_truncated_file_raises_checkpoint_error_naming_the_path(tmp_path: Path, keep: str) -> None:
    model = small_model()
    path = save_checkpoint(tmp_path / "last.safetensors", model, METADATA, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    payload = path.read_bytes()
    header_end = 8 + int.from_bytes(payload[:8], "little")
    length = {"empty": 0, "4 bytes": 4, "header only": header_end, "half": len(payload) // 2, "all but the last byte": len(payload) - 1}[keep]
    path.write_bytes(payload[:length])
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)
    assert "corrupt or incomplete" in str(error.value)
    assert f"size {length} bytes" in str(error.value)


def test_missing_and_foreign_files_raise_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    foreign.write_bytes(save_safetensors_bytes({"weight": torch.zeros(2)}, metadata={"format": "pt"}))
    with pytest.raises(CheckpointError, match="is not an anchorfree checkpoint"):
        load_checkpoint(foreign)


def test_run_folder_resolves_to_its_last_checkpoint(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "run" / "weights" / "last.safetensors", small_model(), {"epoch": 5})
    assert load_checkpoint(tmp_path / "run").path == path
    assert load_checkpoint(tmp_path / "run" / "weights").path == path


def test_module_prefix_from_data_parallel_is_stripped(tmp_path: Path) -> None:
    header = {"format": "anchorfree-checkpoint", "format_version": "1", "metadata": json.dumps({"epoch": 1})}
    tensors = {"model.module.0.weight": torch.ones(2, 3), "model.module.0.bias": torch.zeros(2)}
    path = tmp_path / "ddp.safetensors"
    path.write_bytes(save_safetensors_bytes(tensors, metadata=header))
    checkpoint = load_checkpoint(path)
    assert sorted(checkpoint.model_state) == ["0.bias", "0.weight"]
    nn.Sequential(nn.Linear(3, 2)).load_state_dict(checkpoint.model_state)
    # save_checkpoint itself unwraps `.module`, so wrapped models save plain names.
    wrapped = nn.DataParallel(nn.Sequential(nn.Linear(3, 2)))
    saved = load_checkpoint(save_checkpoint(tmp_path / "wrapped.safetensors", wrapped, {}))
    assert sorted(saved.model_state) == ["0.bias", "0.weight"]


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    header = {"format": "anchorfree-checkpoint", "format_version": "99", "metadata": "{}"}
    path = tmp_path / "future.safetensors"
    path.write_bytes(save_safetensors_bytes({"model.w": torch.zeros(1)}, metadata=header))
    with pytest.raises(CheckpointError, match="newer anchorfree"):
        load_checkpoint(path)


def _fail_replace(*args, **kwargs):
    raise OSError(28, "No space left on device")


def _interrupt_fsync(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("target, replacement, error", [("replace", _fail_replace, OSError), ("fsync", _interrupt_fsync, KeyboardInterrupt)])
def test_failed_write_leaves_previous_checkpoint_intact_and_no_temporary(tmp_path: Path, monkeypatch, target, replacement, error) -> None:
    model = small_model()
    path = save_checkpoint(tmp_path / "last.safetensors", model, {"epoch": 1}, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    before, before_json = path.read_bytes(), path.with_suffix(".json").read_bytes()
    newer = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in newer.parameters():
            parameter.add_(1.0)
    monkeypatch.setattr(os, target, replacement)
    with pytest.raises(error):
        save_checkpoint(path, newer, {"epoch": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert path.with_suffix(".json").read_bytes() == before_json
    assert temporaries(tmp_path) == []
    assert load_checkpoint(path).metadata == {"epoch": 1}


def test_not_enough_disk_space_is_refused_before_writing(tmp_path: Path, monkeypatch) -> None:
    path = save_checkpoint(tmp_path / "last.safetensors", small_model(), {"epoch": 1})
    before = path.read_bytes()
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(total=10**9, used=10**9 - 1000, free=1000))
    with pytest.raises(OSError, match="not enough disk space"):
        save_checkpoint(path, small_model(), {"epoch": 2})
    assert path.read_bytes() == before
    assert temporaries(tmp_path) == []


def test_remove_stale_temporaries_removes_only_hidden_tmp_files(tmp_path: Path) -> None:
    for name in (".x.tmp", ".last.safetensors.k2j3.tmp", "keep.tmp", "last.safetensors", ".hidden"):
        (tmp_path / name).write_bytes(b"data")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(path.name for path in removed) == [".last.safetensors.k2j3.tmp", ".x.tmp"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [".hidden", "keep.tmp", "last.safetensors"]
    assert remove_stale_temporaries(tmp_path / "missing") == []
