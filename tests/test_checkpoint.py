"""Checkpoint files: round trips, weights-only files, corruption errors and the atomic-write guarantee."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from anchorfree.checkpoint import FORMAT_VERSION, CheckpointError, CheckpointMetadata, load_checkpoint, save_checkpoint
from anchorfree.files import remove_stale_temporaries

METADATA = {"config": {"train": {"epochs": 3, "lr": 0.01}}, "class_names": ["cat", "dög"], "category_ids": [1, 7], "epoch": 2}


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
    assert checkpoint.metadata == CheckpointMetadata(**METADATA) and checkpoint.metadata.version == FORMAT_VERSION == 2
    assert json.loads(path.with_suffix(".json").read_text(encoding="utf-8")) == {"version": 2, **METADATA, "anchorfree_version": "", "torch_version": "", "world_size": 1}  # the mirror
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
    assert load_checkpoint(path).metadata == CheckpointMetadata(epoch=1)


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


# ------------------------------------------------------------------------------------- metadata and tensor schema


def tiny_detector_checkpoint(folder: Path, **metadata_changes: Any) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]]:
    """A weights file of a tiny FCOS as `api.load` reads it: (path, its tensors, its metadata)."""
    from anchorfree.config import apply_overrides, get_preset
    from anchorfree.models import build_model

    config = apply_overrides(
        get_preset("fcos_cpu"),
        {"model.backbone": "mobilenet_v2", "model.pretrained_backbone": False, "model.backbone_width": 0.25, "model.fcos.fpn_channels": 16, "model.fcos.head_convs": 1, "model.fcos.norm_groups": 8},
    )
    torch.manual_seed(0)
    model = build_model(config.model, 2)
    metadata = {"config": config.to_dict(), "class_names": ["a", "b"], "category_ids": [1, 2], "epoch": 1, **metadata_changes}
    path = save_checkpoint(folder / "best.safetensors", model, metadata)
    return path, model.state_dict(), metadata


def write_raw(path: Path, tensors: dict[str, torch.Tensor], metadata_text: str, **header: str) -> Path:
    """A checkpoint file with exactly these `model.*` tensors and this metadata text (crafted files)."""
    fields = {"format": "anchorfree-checkpoint", "format_version": "1", "metadata": metadata_text, **header}
    path.write_bytes(save_safetensors_bytes({f"model.{name}": tensor.contiguous() for name, tensor in tensors.items()}, metadata=fields))
    return path


def test_metadata_that_is_not_json_is_a_checkpoint_error(tmp_path: Path) -> None:
    """Issue 11.9; RELIABILITY E3: metadata that is not JSON names the file and the header entry."""
    path = write_raw(tmp_path / "bad.safetensors", {"w": torch.zeros(1)}, "{'config': not json")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value) and "'metadata' is not valid JSON" in str(error.value) and "not json" in str(error.value)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("class_names", "cat", "a list of strings"),
        ("class_names", ["cat", 7], "a list of strings"),
        ("category_ids", ["1", "7"], "a list of integers"),
        ("category_ids", [1, True], "a list of integers"),
        ("config", ["train"], "a mapping of config sections"),
        ("epoch", -1, "an integer >= 0"),
        ("loop", {"epoch": "3"}, "a mapping of numbers"),
        ("history", [1, 2], "a list of metrics rows"),
        ("version", "2", "an integer >= 1"),
        ("version", 0, "an integer >= 1"),
        ("world_size", 0, "an integer >= 1"),
        ("world_size", 1.5, "an integer >= 1"),
        ("anchorfree_version", 1, "a string"),
        ("metrics", [0.5], "a mapping"),
    ],
)
def test_metadata_of_the_wrong_type_names_the_key_and_value(tmp_path: Path, key: str, value: Any, expected: str) -> None:
    """Issue 11.9; RELIABILITY E7: each metadata key is type-checked on load, naming file, key and value."""
    metadata = {**METADATA, key: value}
    path = write_raw(tmp_path / "typed.safetensors", {"w": torch.zeros(1)}, json.dumps(metadata))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and f"metadata {key!r} must be {expected}" in message and str(value)[:20] in message


def test_metadata_that_is_not_an_object_or_has_mismatched_ids_is_refused(tmp_path: Path) -> None:
    """Issue 11.9: a JSON list as metadata, and class_names / category_ids of different lengths."""
    path = write_raw(tmp_path / "list.safetensors", {"w": torch.zeros(1)}, "[1, 2]")
    with pytest.raises(CheckpointError, match="metadata must be a JSON object, got list"):
        load_checkpoint(path)
    path = write_raw(tmp_path / "ids.safetensors", {"w": torch.zeros(1)}, json.dumps({**METADATA, "category_ids": [1]}))
    with pytest.raises(CheckpointError, match=r"2 class_names but 1 category_ids \(\[1\]\)"):
        load_checkpoint(path)


def test_a_saved_config_with_an_unknown_key_is_a_checkpoint_error(tmp_path: Path) -> None:
    """Issue 11.9: a config that is a mapping but not a Config names the checkpoint and the key."""
    import anchorfree

    path, tensors, metadata = tiny_detector_checkpoint(tmp_path)
    metadata["config"]["train"]["epoch"] = 3
    write_raw(path, tensors, json.dumps(metadata))
    with pytest.raises(CheckpointError) as error:
        anchorfree.load(path, device="cpu")
    assert str(path) in str(error.value) and "unknown key 'train.epoch'" in str(error.value)


def test_a_saved_config_holding_a_removed_key_still_loads(tmp_path: Path) -> None:
    """train.log_every is no key any more (`config.REMOVED_KEYS`): a checkpoint saved with it loads as before."""
    import anchorfree

    path, tensors, metadata = tiny_detector_checkpoint(tmp_path)
    metadata["config"]["train"]["log_every"] = 10
    write_raw(path, tensors, json.dumps(metadata))
    assert anchorfree.load(path, device="cpu").category_ids == [1, 2]


def test_a_config_naming_another_family_or_backbone_is_a_checkpoint_error(tmp_path: Path) -> None:
    """Issue 11.9; RELIABILITY C5/E7: weights of an FCOS with a config that builds a CenterNet (or a ResNet
    backbone) are refused before loading, naming the file and what the config builds."""
    import anchorfree

    path, tensors, metadata = tiny_detector_checkpoint(tmp_path)
    for model_changes, built in [({"name": "centernet"}, "centernet on mobilenet_v2"), ({"backbone": "resnet18", "backbone_width": 1.0}, "fcos on resnet18")]:
        changed = json.loads(json.dumps(metadata))
        changed["config"]["model"].update(model_changes)
        write_raw(path, tensors, json.dumps(changed))
        with pytest.raises(CheckpointError) as error:
            anchorfree.load(path, device="cpu")
        message = str(error.value)
        assert str(path) in message and f"its config builds {built}" in message and "do not fit the model" in message


@pytest.mark.parametrize("change", ["shape", "int64", "bool"])
def test_tensors_of_the_wrong_shape_or_dtype_are_refused(tmp_path: Path, change: str) -> None:
    """Issue 11.9; RELIABILITY E7: a tensor of another shape, or an int64/bool tensor where the model has floats
    (cast silently before), is a CheckpointError naming the file, the tensor and both shapes or dtypes."""
    import anchorfree

    path, tensors, metadata = tiny_detector_checkpoint(tmp_path)
    name = next(key for key, tensor in tensors.items() if tensor.dtype == torch.float32 and tensor.dim() == 4)
    original = tensors[name]
    tensors = dict(tensors)
    tensors[name] = {"shape": torch.zeros(original.shape[0] + 1, *original.shape[1:]), "int64": original.long(), "bool": original > 0}[change]
    write_raw(path, tensors, json.dumps(metadata))
    with pytest.raises(CheckpointError) as error:
        anchorfree.load(path, device="cpu")
    message = str(error.value)
    assert str(path) in message and repr(name) in message
    if change == "shape":
        assert f"has shape {tuple(tensors[name].shape)}, the model expects {tuple(original.shape)}" in message
    else:
        assert f"is {tensors[name].dtype}, the model expects torch.float32" in message


def test_a_detector_checkpoint_without_class_names_is_refused(tmp_path: Path) -> None:
    """Issue 11.9: `load` needs config, class_names and category_ids, and says which is missing."""
    import anchorfree

    path, tensors, metadata = tiny_detector_checkpoint(tmp_path)
    del metadata["class_names"]
    write_raw(path, tensors, json.dumps(metadata))
    with pytest.raises(CheckpointError, match="metadata has no 'class_names'"):
        anchorfree.load(path, device="cpu")
    assert anchorfree.load(tiny_detector_checkpoint(tmp_path / "ok")[0], device="cpu").class_names == ["a", "b"]


def test_a_bad_header_version_or_optimizer_entry_is_a_checkpoint_error(tmp_path: Path) -> None:
    """Issue 11.9: a format_version that is no number, optimizer JSON of the wrong shape, a misnamed optimizer tensor."""
    path = write_raw(tmp_path / "v.safetensors", {"w": torch.zeros(1)}, "{}", format_version="one")
    with pytest.raises(CheckpointError, match="format_version must be a whole number, got 'one'"):
        load_checkpoint(path)
    path = write_raw(tmp_path / "o.safetensors", {"w": torch.zeros(1)}, "{}", optimizer='{"param_groups": 3}')
    with pytest.raises(CheckpointError, match="header entry 'optimizer' must be"):
        load_checkpoint(path)
    fields = {"format": "anchorfree-checkpoint", "format_version": "1", "metadata": "{}", "optimizer": '{"param_groups": [], "non_tensor_state": {}}'}
    path = tmp_path / "t.safetensors"
    path.write_bytes(save_safetensors_bytes({"model.w": torch.zeros(1), "optimizer.x": torch.zeros(1)}, metadata=fields))
    with pytest.raises(CheckpointError, match=r"tensor 'optimizer.x' is not named optimizer.<parameter index>.<key>"):
        load_checkpoint(path)


def test_optimizer_state_that_does_not_fit_the_optimizer_is_refused(tmp_path: Path) -> None:
    """Issue 11.9: momentum buffers of another shape, or another number of parameters, name the file and tensor."""
    from anchorfree.checkpoint import check_optimizer_state

    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_steps(model, optimizer, 1, seed=0)
    path = save_checkpoint(tmp_path / "last.safetensors", model, METADATA, optimizer)
    state = load_checkpoint(path).optimizer_state
    check_optimizer_state(optimizer, state, path)  # fits
    state["state"][0]["momentum_buffer"] = torch.zeros(5)
    with pytest.raises(CheckpointError, match=r"optimizer tensor optimizer.0.momentum_buffer is torch.float32 \(5,\)"):
        check_optimizer_state(optimizer, state, path)
    other = torch.optim.SGD(list(model.parameters())[:2], lr=0.1, momentum=0.9)
    with pytest.raises(CheckpointError, match=r"groups of \[6\] parameters, the model's optimizer \[2\]"):
        check_optimizer_state(other, load_checkpoint(path).optimizer_state, path)


def test_resume_refuses_a_loop_state_of_the_wrong_types(tmp_path: Path) -> None:
    """Issue 11.9: `last`'s loop position is type-checked field by field before training resumes."""
    from anchorfree import engine
    from anchorfree.checkpoint import Checkpoint

    for loop, expected in [({"epoch": 1.5}, "loop.epoch must be an integer >= 0, got 1.5"), ({"epochs": 1}, "unknown keys ['epochs']"),
                           ({"elapsed": True}, "loop.elapsed must be a number, got True")]:
        with pytest.raises(CheckpointError, match=re.escape(expected)):
            engine._loop_state(Checkpoint({}, CheckpointMetadata(loop=loop), {}, tmp_path / "last.safetensors"))
    assert engine._loop_state(Checkpoint({}, CheckpointMetadata(loop={"epoch": 2, "step": 8, "elapsed": 1}), {}, tmp_path)).step == 8


def test_old_checkpoints_of_format_version_1_still_load(tmp_path: Path) -> None:
    """Issue 11.9: a file as format 1 wrote it (no history, no loop) loads and builds a Detector."""
    import anchorfree

    path, tensors, metadata = tiny_detector_checkpoint(tmp_path)
    write_raw(path, tensors, json.dumps({key: value for key, value in metadata.items() if key != "epoch"}))
    detector = anchorfree.load(path, device="cpu")
    assert detector.category_ids == [1, 2]


# ------------------------------------------------------------------------------------------ typed metadata


def test_checkpoint_metadata_round_trips_every_field(tmp_path: Path) -> None:
    metadata = CheckpointMetadata(
        config={"model": {"name": "fcos"}}, class_names=["cat", "dog"], category_ids=[3, 9], epoch=4,
        loop={"epoch": 4, "step": 40, "elapsed": 12.5, "epoch_loss_sums": {"box": 1.5}}, history=[{"epoch": 1, "loss/box": 0.7}],
        metrics={"stats": {"mAP": 0.25}}, anchorfree_version="0.1.0", torch_version="2.10.0", world_size=2,
    )
    path = save_checkpoint(tmp_path / "last.safetensors", small_model(), metadata)
    loaded = load_checkpoint(path).metadata
    assert loaded == metadata and loaded.version == 2
    assert json.loads(path.with_suffix(".json").read_text(encoding="utf-8")) == metadata.to_json()
    # Fields left None are not written: a `best` file has no loop or history, a `last` file no metrics.
    best = CheckpointMetadata(epoch=1, metrics={"stats": {}})
    assert set(best.to_json()) == {"version", "epoch", "metrics", "anchorfree_version", "torch_version", "world_size"}


def test_version_1_metadata_reads_as_version_1(tmp_path: Path) -> None:
    """A header without the `version` key (format 1) reads with version 1 and one process; keys that are no field are ignored."""
    path = write_raw(tmp_path / "old.safetensors", {"w": torch.zeros(1)}, json.dumps({**METADATA, "best": None}))
    metadata = load_checkpoint(path).metadata
    assert (metadata.version, metadata.world_size, metadata.epoch, metadata.class_names) == (1, 1, 2, ["cat", "dög"])
    assert metadata.loop is None and metadata.anchorfree_version == ""


def test_metadata_of_a_newer_version_or_with_unknown_fields_is_refused(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "new.safetensors", {"w": torch.zeros(1)}, json.dumps({**METADATA, "version": 3}), format_version="2")
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {path}: metadata version 3 was written by a newer anchorfree")):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"metadata keys \['best'\] are not CheckpointMetadata fields"):
        save_checkpoint(tmp_path / "x.safetensors", small_model(), {**METADATA, "best": None})
    with pytest.raises(CheckpointError, match="metadata 'world_size' must be an integer >= 1, got 0"):
        save_checkpoint(tmp_path / "x.safetensors", small_model(), CheckpointMetadata(world_size=0))
    assert not (tmp_path / "x.safetensors").exists()


def test_require_names_the_file_and_the_missing_field(tmp_path: Path) -> None:
    metadata = CheckpointMetadata(epoch=1)
    metadata.require(tmp_path / "a.safetensors", "epoch")
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {tmp_path / 'a.safetensors'}: metadata has no 'loop'; it holds ['anchorfree_version', 'epoch',")):
        metadata.require(tmp_path / "a.safetensors", "epoch", "loop")


def test_a_checkpoint_holds_the_active_familys_section_only(tmp_path: Path) -> None:
    path, _, _ = tiny_detector_checkpoint(tmp_path)
    model_section = load_checkpoint(path).metadata.config["model"]
    assert "fcos" in model_section and "centernet" not in model_section and "cornernet" not in model_section
    assert model_section["freeze_backbone_norm"] is False
    assert "centernet" not in json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))["config"]["model"]
