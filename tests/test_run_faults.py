"""Training runs under faults: offline resume, splits with no usable image, kills between the files of an epoch,
relative paths, and a disk that is full or cannot take a name.

Every run trains the tiny model of `tiny_overrides` on the 16-image `tiny_dataset` (4 batches of 4 per epoch).
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
import torch
import yaml

import anchorfree
from anchorfree import checkpoint as checkpoint_module
from anchorfree import engine
from anchorfree import files as files_module
from anchorfree.checkpoint import Checkpoint, CheckpointMetadata, load_checkpoint, save_checkpoint
from anchorfree.files import atomic_write_bytes
from anchorfree.run_folder import RunFolder
from anchorfree.config import ConfigError
from anchorfree.data.records import InvalidAnnotation
from anchorfree.models import backbones

pytestmark = pytest.mark.filterwarnings("ignore:no detections on the evaluated images")

CONSTANT_LR = {"train__warmup_iters": 0, "train__final_lr_ratio": 1.0}


def read_rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def assert_mirror_matches(run: Path) -> None:
    last = run / "weights" / "last.safetensors"
    assert json.loads(last.with_suffix(".json").read_text(encoding="utf-8")) == load_checkpoint(last).metadata.to_json()


class Killed(Exception):
    """Stands for a `kill -9` at one point of an epoch's writes."""


# ------------------------------------------------------------------------------------------- offline resume


def test_resume_of_a_pretrained_run_fetches_no_imagenet_weights(tmp_path: Path, tiny_overrides, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11.4: `--resume` of a pretrained preset works offline; `last` holds every weight."""
    original = backbones._build_classifier_backbone
    fetches: list[str] = []

    def fake_fetch(name: str, pretrained: bool, width: float) -> torch.nn.Module:
        # The tiny run "downloads" by building a random backbone: no network in tests.
        if pretrained:
            fetches.append(name)
        return original(name, False, width)

    monkeypatch.setattr(backbones, "_build_classifier_backbone", fake_fetch)
    run = anchorfree.train("fcos_cpu", tiny_overrides(tmp_path, model__pretrained_backbone=True, data__val=""), progress=False)
    assert fetches == ["mobilenet_v2"]
    assert any(name.startswith("backbone.body.") for name in load_checkpoint(run).model_state)  # the FrozenNorm structure

    def offline(name: str, pretrained: bool, width: float) -> torch.nn.Module:
        if pretrained:
            fetches.append(name)
            raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
        return original(name, False, width)

    monkeypatch.setattr(backbones, "_build_classifier_backbone", offline)
    resumed = anchorfree.train(resume=run, overrides={"train.epochs": 2}, progress=False)
    assert resumed == run
    assert fetches == ["mobilenet_v2"]  # no call on resume
    last = load_checkpoint(run)
    assert last.metadata.loop["step"] == 8 and last.metadata.config["model"]["pretrained_backbone"] is True
    assert [row["epoch"] for row in read_rows(run)] == ["1", "2"]


# ---------------------------------------------------------------------------------------- no usable images


def corrupt_copy(tiny_dataset: Path, folder: Path, split: str) -> Path:
    """The tiny dataset with every `split` image replaced by bytes that are no image."""
    copy = shutil.copytree(tiny_dataset, folder / "shapes")
    for image in (copy / "images" / split).glob("*.jpg"):
        image.write_bytes(b"not a jpeg " + image.name.encode())
    return copy


@pytest.mark.parametrize("split, role", [("train", "training"), ("val", "validation")])
def test_a_split_without_one_usable_image_stops_before_training(
    split: str, role: str, tmp_path: Path, tiny_dataset: Path, tiny_overrides, recwarn: pytest.WarningsRecorder
) -> None:
    """Issue 11.5; RELIABILITY B2: no usable training (or validation) image is an error naming the count and why,
    before any step: not 0 steps, an untrained `best` and success, nor a NaN mAP."""
    copy = corrupt_copy(tiny_dataset, tmp_path, split)
    overrides = tiny_overrides(
        tmp_path / "runs", data__train=str(copy / "instances_train.json"), data__val=str(copy / "instances_val.json")
    )
    count = len(list((copy / "images" / split).glob("*.jpg")))
    with pytest.raises(InvalidAnnotation) as error:
        anchorfree.train("fcos_cpu", overrides, progress=False)
    message = str(error.value)
    assert f"no usable {role} images in {copy / f'instances_{split}.json'}" in message
    assert f"unusable image: {count}" in message
    names = [image.name for image in (copy / "images" / split).glob("*.jpg")]
    assert any(name in message for name in names), message  # the first examples name their files
    assert not (tmp_path / "runs").exists()  # no run folder, no untrained `best`


# ----------------------------------------------------------------------------------- kills between writes


@pytest.fixture
def kill_at(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, int], None]:
    """kill_at(point, epoch): raise Killed at `point` of the `epoch`-th epoch's writes ("metrics": just before
    metrics.csv is written; "mirror": after the checkpoint file, before its .json mirror)."""

    def arm(point: str, epoch: int) -> None:
        if point == "metrics":
            real_write = RunFolder.write_metrics

            def write_metrics(run: RunFolder, rows: list[dict[str, Any]]) -> None:
                if len(rows) == epoch:
                    raise Killed(point)
                real_write(run, rows)

            monkeypatch.setattr(RunFolder, "write_metrics", write_metrics)
        else:
            real_text = checkpoint_module.atomic_write_text

            def write_text(path: Path, text: str) -> None:
                if Path(path).name == "last.json" and json.loads(text).get("epoch") == epoch:
                    raise Killed(point)
                real_text(path, text)

            monkeypatch.setattr(checkpoint_module, "atomic_write_text", write_text)

    return arm


def test_a_kill_after_last_before_metrics_leaves_one_row_per_epoch(tmp_path: Path, tiny_overrides, kill_at, monkeypatch) -> None:
    """Issue 11.6; RELIABILITY E1/E4: `last` of epoch 2 saved, metrics.csv not: the resume rebuilds it from `last`."""
    kill_at("metrics", 1)
    with pytest.raises(Killed):
        anchorfree.train("fcos_cpu", tiny_overrides(tmp_path, train__epochs=2, data__val="", **CONSTANT_LR), progress=False)
    run = tmp_path / "fcos_cpu"
    assert not (run / "metrics.csv").exists() and load_checkpoint(run).metadata.epoch == 1
    monkeypatch.undo()
    anchorfree.train(resume=run, progress=False)
    rows = read_rows(run)
    assert [(row["epoch"], row["step"]) for row in rows] == [("1", "4"), ("2", "8")]
    assert_mirror_matches(run)


def test_a_kill_after_metrics_before_last_leaves_no_duplicate_row(tmp_path: Path, tiny_overrides) -> None:
    """Issue 11.6; RELIABILITY E1: metrics.csv a row ahead of `last` (a kill between them, or a file written by an
    older version that wrote metrics.csv first), and last.json missing: the resume keeps one row per epoch and
    rebuilds last.json."""
    run = anchorfree.train("fcos_cpu", tiny_overrides(tmp_path, train__epochs=1, data__val="", **CONSTANT_LR), progress=False)
    rows = read_rows(run)
    with (run / "metrics.csv").open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writerow({**rows[0], "epoch": "2", "step": "8"})  # the row of an epoch whose `last` never landed
        writer.writerow(rows[0])  # and a duplicate, as 12 kills left them
    (run / "weights" / "last.json").unlink()
    assert load_checkpoint(run).metadata.epoch == 1
    assert_mirror_matches(run)  # rebuilt on load
    anchorfree.train(resume=run, overrides={"train.epochs": 2}, progress=False)
    resumed = read_rows(run)
    assert [(row["epoch"], row["step"]) for row in resumed] == [("1", "4"), ("2", "8")]
    assert resumed[0] == rows[0]
    assert_mirror_matches(run)


def test_a_kill_between_last_and_its_mirror_is_repaired_on_load(tmp_path: Path, tiny_overrides, kill_at, monkeypatch) -> None:
    """Issue 11.6; RELIABILITY E1: last.json one epoch stale after a kill is rewritten from the checkpoint, and the
    resume that follows has one metrics row per epoch."""
    kill_at("mirror", 2)
    with pytest.raises(Killed):
        anchorfree.train("fcos_cpu", tiny_overrides(tmp_path, train__epochs=2, data__val="", **CONSTANT_LR), progress=False)
    monkeypatch.undo()
    run = tmp_path / "fcos_cpu"
    assert json.loads((run / "weights" / "last.json").read_text())["epoch"] == 1  # one epoch stale
    assert load_checkpoint(run).metadata.epoch == 2
    assert_mirror_matches(run)
    assert [row["epoch"] for row in read_rows(run)] == ["1"]  # the kill came before metrics.csv's second row


def test_stale_mirror_is_rewritten_when_loaded(tmp_path: Path, tiny_overrides) -> None:
    """Issue 11.6: load_checkpoint rewrites a last.json that differs from the checkpoint's own metadata."""
    model = torch.nn.Linear(2, 1)
    path = save_checkpoint(tmp_path / "weights" / "last.safetensors", model, {"epoch": 2})
    path.with_suffix(".json").write_text(json.dumps({"epoch": 1}))
    assert load_checkpoint(path).metadata.epoch == 2
    assert json.loads(path.with_suffix(".json").read_text()) == CheckpointMetadata(epoch=2).to_json()


def test_metrics_of_an_older_checkpoint_are_deduplicated_up_to_its_epoch(tmp_path: Path) -> None:
    """Issue 11.6: without a history in `last` (older files), metrics.csv's rows up to last's epoch, one each."""
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,step,lr\n1,4,0.1\n2,8,0.1\n2,8,0.2\n3,12,0.1\n", encoding="utf-8")
    old = Checkpoint({}, CheckpointMetadata(loop={"epoch": 2}), {}, tmp_path / "last.safetensors")
    rows = RunFolder(tmp_path).resumed_history(old, 2)
    assert [(row["epoch"], row["lr"]) for row in rows] == [("1", "0.1"), ("2", "0.2")]


# ------------------------------------------------------------------------------------------- relative paths


@pytest.mark.slow
def test_a_run_with_relative_paths_evaluates_and_resumes_from_another_directory(
    tmp_path: Path, tiny_dataset: Path, tiny_overrides, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11.8: data.train, data.val and train.project are saved absolute, so val and --resume work anywhere."""
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(start)
    relative = Path(os.path.relpath(tiny_dataset, start))
    overrides = tiny_overrides(
        Path("runs"), data__train=str(relative / "instances_train.json"), data__val=str(relative / "instances_val.json"), **CONSTANT_LR
    )
    run = anchorfree.train("fcos_cpu", overrides, progress=False)
    assert Path(os.path.abspath(run)) == start / "runs" / "fcos_cpu"
    saved = yaml.safe_load((start / "runs" / "fcos_cpu" / "config.yaml").read_text())
    assert saved["data"]["train"] == str(tiny_dataset / "instances_train.json")
    assert saved["data"]["val"] == str(tiny_dataset / "instances_val.json")
    assert saved["train"]["project"] == str(start / "runs")

    monkeypatch.chdir(elsewhere)
    run = start / "runs" / "fcos_cpu"
    result = anchorfree.val(run / "weights" / "best.safetensors", device="cpu", progress=False)
    assert 0.0 <= result.stats["AP50"] <= 1.0
    assert anchorfree.train(resume=run, overrides={"train.epochs": 2}, progress=False) == run
    assert [row["epoch"] for row in read_rows(run)] == ["1", "2"]
    assert not (elsewhere / "runs").exists()


# ----------------------------------------------------------------------------------------- config and disk


def test_a_bad_value_fails_before_any_file_is_read(tmp_path: Path, tiny_overrides) -> None:
    """Issue 11.9; RELIABILITY H4: train.optimizer=adam is refused at once, naming the key, the value and the
    choices, even with a data.train that does not exist."""
    overrides = tiny_overrides(tmp_path / "runs", train__optimizer="adam", data__train=str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match=r"train.optimizer must be 'sgd' or 'adamw', got 'adam'; did you mean 'adamw'"):
        anchorfree.train("fcos_cpu", overrides, progress=False)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["../x", "a/b", "/tmp/elsewhere", ".."])
def test_a_run_name_with_a_path_is_refused(name: str, tmp_path: Path, tiny_overrides) -> None:
    """Issue 11.10: train.name never puts the run folder outside train.project."""
    with pytest.raises(ConfigError, match="train.name must be a plain folder name") as error:
        anchorfree.train("fcos_cpu", tiny_overrides(tmp_path / "runs", train__name=name), progress=False)
    assert repr(name) in str(error.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_free_space_is_checked_before_the_first_epoch(tmp_path: Path, tiny_overrides, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11.10; RELIABILITY E2: a disk without room for the run's checkpoints fails before training, naming
    the folder and the sizes, not after a full epoch."""
    steps: list[int] = []
    real_build_optimizer = engine.build_optimizer

    def build_optimizer(model: torch.nn.Module, config: Any) -> torch.optim.Optimizer:
        optimizer = real_build_optimizer(model, config)
        optimizer.register_step_post_hook(lambda *args: steps.append(1))
        return optimizer

    monkeypatch.setattr(engine, "build_optimizer", build_optimizer)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(total=10**9, used=10**9 - 4096, free=4096))
    with pytest.raises(OSError, match="not enough disk space for the checkpoints of this run") as error:
        anchorfree.train("fcos_cpu", tiny_overrides(tmp_path), progress=False)
    assert error.value.errno == errno.ENOSPC
    assert str(tmp_path / "fcos_cpu" / "weights") in str(error.value) and "MiB free" in str(error.value)
    assert steps == []
    assert not (tmp_path / "fcos_cpu" / "weights" / "last.safetensors").exists()


def test_a_full_disk_in_epoch_one_promises_no_checkpoint_that_does_not_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11.10; RELIABILITY E2: with no previous checkpoint the message says so, and offers no resume."""
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(total=10**9, used=10**9 - 1000, free=1000))
    with pytest.raises(OSError) as error:
        save_checkpoint(tmp_path / "run" / "weights" / "last.safetensors", torch.nn.Linear(2, 1), {"epoch": 1})
    message = str(error.value)
    assert "no last.safetensors was written yet" in message and "no `last` checkpoint exists to resume from" in message
    assert "intact" not in message and "--resume" not in message


def test_a_full_disk_later_names_the_intact_checkpoint_and_the_resume_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11.10; RELIABILITY E2: with a previous `last`, the message says it is intact and how to resume."""
    path = save_checkpoint(tmp_path / "run" / "weights" / "last.safetensors", torch.nn.Linear(2, 1), {"epoch": 1})
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(total=10**9, used=10**9 - 1000, free=1000))
    with pytest.raises(OSError) as error:
        save_checkpoint(path, torch.nn.Linear(2, 1), {"epoch": 2})
    assert f"the previous last.safetensors is intact; free space and resume with: anchorfree train --resume {tmp_path / 'run'}" in str(error.value)


def test_a_write_error_names_the_file_it_could_not_write(tmp_path: Path) -> None:
    """Issue 11.10: an OSError while writing (here a name too long) names the path, not a temporary."""
    path = tmp_path / ("x" * 300 + ".safetensors")
    with pytest.raises(OSError) as error:
        atomic_write_bytes(path, b"data")
    assert error.value.errno == errno.ENAMETOOLONG
    assert f"cannot write {path}" in str(error.value) and error.value.filename == str(path)
    assert [item.name for item in tmp_path.iterdir()] == []


def test_a_read_only_folder_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11.10: a folder that refuses the temporary file gives a PermissionError naming the target file."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".last.safetensors.abc.tmp"))

    monkeypatch.setattr(files_module.tempfile, "mkstemp", refuse)
    path = tmp_path / "last.safetensors"
    with pytest.raises(PermissionError) as error:
        atomic_write_bytes(path, b"data")
    assert str(error.value) == f"[Errno 13] cannot write {path}: Permission denied: '{path}'"
