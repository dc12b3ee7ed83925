"""The training loop: learning-rate schedule, run folder, exact resume, config checks on resume, NaN losses.

Every run trains the tiny model of `tiny_overrides` on the 16-image `tiny_dataset` (4 batches of 4 per epoch).
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

import anchorfree
from anchorfree import engine
from anchorfree.cli import main
from anchorfree.data import splits
from anchorfree.checkpoint import CheckpointError, load_checkpoint
from anchorfree.config import ConfigError, config_from_dict, get_preset
from anchorfree.data.synth import CLASS_NAMES
from anchorfree.run_folder import RunFolder

pytestmark = pytest.mark.filterwarnings("ignore:no detections on the evaluated images")

CONSTANT_LR = {"train__warmup_iters": 0, "train__final_lr_ratio": 1.0}


def read_rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def without_speed(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{key: value for key, value in row.items() if key != "images_per_second"} for row in rows]


def assert_same_weights(first: Path, second: Path) -> None:
    expected = load_checkpoint(first).model_state
    actual = load_checkpoint(second).model_state
    assert actual.keys() == expected.keys()
    different = [name for name in expected if not torch.equal(actual[name], expected[name])]
    assert different == [], f"{len(different)} tensors differ, e.g. {different[:3]}"


# --------------------------------------------------------------------------------------------------- schedule


@pytest.mark.parametrize(
    "step, progress, expected",
    [
        (0, 0.0, 0.01),  # warmup starts at warmup_factor
        (50, 0.0, 0.505),  # half way: 0.01 * 0.5 + 0.5
        (100, 0.0, 1.0),  # warmup done, cosine at its start
        (100, 0.5, 0.51),  # cosine half way: 0.02 + 0.98 * 0.5
        (1000, 1.0, 0.02),  # ends at final_lr_ratio
        (1000, 1.7, 0.02),  # progress is clamped
        (10, 1.0, 0.02 * (0.01 * 0.9 + 0.1)),  # warmup scales the cosine value
    ],
)
def test_learning_rate_factor(step: int, progress: float, expected: float) -> None:
    factor = engine.learning_rate_factor(step, progress, warmup_iters=100, warmup_factor=0.01, final_lr_ratio=0.02)
    assert factor == pytest.approx(expected, rel=1e-12)


def test_learning_rate_factor_without_warmup_is_a_pure_cosine() -> None:
    for progress in (0.0, 0.25, 0.5, 1.0):
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
        assert engine.learning_rate_factor(0, progress, 0, 0.5, 0.1) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "progress, expected",
    [
        (0.25, 1.0),  # before the first step point
        (0.5, 0.1),  # a step point counts once progress reaches it
        (0.6, 0.1),
        (0.75, 0.01),
        (0.9, 0.01),
        (1.7, 0.01),  # progress is clamped
    ],
)
def test_step_schedule_multiplies_by_0_1_at_each_step_point(progress: float, expected: float) -> None:
    """schedule="step" with step points [0.5, 0.75]: 1, then 0.1, then 0.01; final_lr_ratio plays no part."""
    factor = engine.learning_rate_factor(
        1000, progress, warmup_iters=100, warmup_factor=0.01, final_lr_ratio=0.02, schedule="step", step_points=[0.5, 0.75]
    )
    assert factor == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("progress, step_factor", [(0.25, 1.0), (0.6, 0.1), (0.9, 0.01)])
def test_step_schedule_is_multiplied_by_warmup(progress: float, step_factor: float) -> None:
    """Half way through a 100-step warmup from 0.01 the multiplier is 0.01 * 0.5 + 0.5 = 0.505 of the step value."""
    factor = engine.learning_rate_factor(
        50, progress, warmup_iters=100, warmup_factor=0.01, final_lr_ratio=0.02, schedule="step", step_points=[0.5, 0.75]
    )
    assert factor == pytest.approx(step_factor * 0.505, rel=1e-12)
    assert engine.learning_rate_factor(0, progress, 100, 0.01, 0.02, "step", [0.5, 0.75]) == pytest.approx(step_factor * 0.01, rel=1e-12)


def test_step_schedule_without_step_points_is_constant() -> None:
    """No step points: the factor stays 1 to the end."""
    for progress in (0.0, 0.5, 1.0):
        assert engine.learning_rate_factor(10, progress, 0, 1.0, 0.02, schedule="step", step_points=[]) == 1.0
        assert engine.learning_rate_factor(10, progress, 0, 1.0, 0.02, schedule="step") == 1.0


def test_unknown_schedule_raises_value_error() -> None:
    """A schedule other than cosine or step is refused by the factor and, before anything starts, by train()."""
    with pytest.raises(ValueError, match="train.lr_schedule must be 'cosine' or 'step', got 'linear'"):
        engine.learning_rate_factor(10, 0.5, 0, 1.0, 0.02, schedule="linear")
    config = get_preset("fcos_cpu")
    config.train.lr_schedule = "linear"
    with pytest.raises(ConfigError, match="train.lr_schedule must be 'cosine' or 'step', got 'linear'"):
        engine.train(config, progress=False)


# ----------------------------------------------------------------------------------------------- config first


def test_a_bad_value_fails_before_any_data_file_is_read(one_epoch_run, tmp_path: Path, tiny_overrides, monkeypatch, capsys) -> None:
    """train.optimizer=adam with a data.train that does not exist: the API, the CLI and --resume all fail naming the
    optimizer, not the file, and no annotation file, dataset YAML or image header is read before."""

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"data was read before the config was validated: {args}")

    monkeypatch.setattr(splits, "read_dataset", no_reading)
    monkeypatch.setattr(splits, "read_dataset_yaml", no_reading)
    missing = tmp_path / "missing.json"
    overrides = tiny_overrides(tmp_path / "runs", data__train=str(missing), data__dataset=str(tmp_path / "missing.yaml"), train__optimizer="adam")
    expected = "train.optimizer must be 'sgd' or 'adamw', got 'adam'; did you mean 'adamw'?"
    with pytest.raises(ConfigError) as error:
        anchorfree.train("fcos_cpu", overrides, progress=False)
    assert expected in str(error.value) and "missing" not in str(error.value)

    assert main(["train", *(f"{key}={value}" for key, value in overrides.items())]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: ") and expected in stderr and "missing" not in stderr

    run, _ = one_epoch_run
    with pytest.raises(ConfigError, match=re.escape(expected)):
        anchorfree.train(resume=run, overrides={"train.optimizer": "adam"}, progress=False)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------------- run folder


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory: pytest.TempPathFactory, tiny_overrides) -> tuple[Path, dict]:
    overrides = tiny_overrides(tmp_path_factory.mktemp("runs"))
    return anchorfree.train("fcos_cpu", overrides, progress=False), overrides


def test_train_writes_config_metrics_and_checkpoints(one_epoch_run) -> None:
    run, overrides = one_epoch_run
    assert run == Path(overrides["train.project"]) / "fcos_cpu"
    assert {"config.yaml", "metrics.csv", "weights"} <= {path.name for path in run.iterdir()}
    assert config_from_dict(yaml.safe_load((run / "config.yaml").read_text())) == anchorfree.make_config("fcos_cpu", overrides)

    rows = read_rows(run)
    assert len(rows) == 1
    assert (rows[0]["epoch"], rows[0]["step"]) == ("1", "4")  # 16 images / batch 4
    for column in ("lr", "loss/classification", "loss/box", "loss/centerness", "val/mAP", "val/AP50"):
        assert math.isfinite(float(rows[0][column])), column

    last = load_checkpoint(run / "weights" / "last.safetensors")
    best = load_checkpoint(run / "weights" / "best.safetensors")
    assert last.optimizer_state is not None and best.optimizer_state is None
    assert last.metadata.loop["epoch"] == 1 and last.metadata.loop["iteration"] == 0 and last.metadata.loop["step"] == 4
    assert last.metadata.class_names == list(CLASS_NAMES) and last.metadata.category_ids == [1, 2, 3, 4, 5, 6]
    assert config_from_dict(last.metadata.config) == anchorfree.make_config("fcos_cpu", overrides)
    assert best.metadata.metrics["stats"]["mAP"] == float(rows[0]["val/mAP"])
    assert (run / "weights" / "best.json").is_file() and (run / "weights" / "last.json").is_file()
    assert [path.name for path in run.rglob("*.tmp")] == []


def test_a_second_run_gets_a_new_folder(one_epoch_run) -> None:
    run, overrides = one_epoch_run
    assert RunFolder.create(overrides["train.project"], "fcos_cpu").path == run.parent / "fcos_cpu2"


def test_resume_with_a_changed_config_key_is_refused(one_epoch_run) -> None:
    run, _ = one_epoch_run
    with pytest.raises(CheckpointError) as error:
        anchorfree.train(resume=run, overrides={"train.lr": 0.5, "train.epochs": 2}, progress=False)
    message = str(error.value)
    assert "cannot resume" in message and "train.lr: saved 0.001, now 0.5" in message
    assert "train.epochs" not in message  # run length may change


def test_resume_from_a_weights_only_file_is_refused(one_epoch_run) -> None:
    run, _ = one_epoch_run
    with pytest.raises(CheckpointError, match="holds weights only"):
        anchorfree.train(resume=run / "weights" / "best.safetensors", progress=False)


# ----------------------------------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_one_epoch_then_resume_to_two_equals_two_epochs_straight(tmp_path: Path, tiny_overrides) -> None:
    # A constant learning rate: the schedule then does not depend on train.epochs, which a resume may raise.
    straight = anchorfree.train("fcos_cpu", tiny_overrides(tmp_path / "a", train__epochs=2, **CONSTANT_LR), progress=False)
    first = anchorfree.train("fcos_cpu", tiny_overrides(tmp_path / "b", train__epochs=1, **CONSTANT_LR), progress=False)
    resumed = anchorfree.train(resume=first, overrides={"train.epochs": 2}, progress=False)
    assert resumed == first
    assert load_checkpoint(resumed).metadata.loop["step"] == 8
    assert_same_weights(straight / "weights" / "last.safetensors", resumed / "weights" / "last.safetensors")
    assert without_speed(read_rows(resumed)) == without_speed(read_rows(straight))


@pytest.fixture(scope="module")
def interrupted_and_straight(tmp_path_factory: pytest.TempPathFactory, tiny_overrides) -> tuple[Path, Path, dict]:
    """A 2-epoch run (default warmup + cosine) interrupted by a simulated Ctrl-C during its 2nd step and resumed,
    and the same run uninterrupted."""
    project = tmp_path_factory.mktemp("interrupt")
    straight = anchorfree.train("fcos_cpu", tiny_overrides(project / "straight", train__epochs=2), progress=False)

    stop = SimpleNamespace(requested=False)

    class FakeSignal:
        def __enter__(self):
            return stop

        def __exit__(self, *exc):
            return None

    real_build_optimizer = engine.build_optimizer

    def build_optimizer(model, config):
        optimizer = real_build_optimizer(model, config)
        steps = []

        def request_stop_after_two_steps(*args):
            steps.append(1)
            stop.requested = stop.requested or len(steps) == 2

        optimizer.register_step_post_hook(request_stop_after_two_steps)
        return optimizer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "_StopSignal", FakeSignal)
        patch.setattr(engine, "build_optimizer", build_optimizer)
        with pytest.raises(engine.TrainingInterrupted) as interrupted:
            anchorfree.train("fcos_cpu", tiny_overrides(project / "interrupted", train__epochs=2), progress=False)
    run = project / "interrupted" / "fcos_cpu"
    loop_at_interrupt = load_checkpoint(run).metadata.loop
    resumed = anchorfree.train(resume=run / "weights" / "last.safetensors", progress=False)
    return straight, resumed, {"message": str(interrupted.value), "loop": loop_at_interrupt, "run": run}


@pytest.mark.slow
def test_interrupt_saves_last_mid_epoch(interrupted_and_straight) -> None:
    _, resumed, info = interrupted_and_straight
    assert resumed == info["run"]
    assert info["message"].startswith("training stopped at epoch 1 iteration 2; resume with: anchorfree train --resume ")
    assert (info["loop"]["epoch"], info["loop"]["iteration"], info["loop"]["step"]) == (0, 2, 2)


def test_resume_mid_epoch_gives_the_weights_of_an_uninterrupted_run(interrupted_and_straight) -> None:
    straight, resumed, _ = interrupted_and_straight
    assert load_checkpoint(resumed).metadata.loop["step"] == 8
    assert_same_weights(straight / "weights" / "last.safetensors", resumed / "weights" / "last.safetensors")


def test_resume_mid_epoch_gives_the_metrics_of_an_uninterrupted_run(interrupted_and_straight) -> None:
    straight, resumed, _ = interrupted_and_straight
    expected, actual = without_speed(read_rows(straight)), without_speed(read_rows(resumed))
    assert [row["step"] for row in actual] == ["4", "8"]
    losses = [{key: value for key, value in row.items() if key.startswith("loss/")} for row in actual]
    expected_losses = [{key: value for key, value in row.items() if key.startswith("loss/")} for row in expected]
    assert losses == expected_losses, (
        "BUG (anchorfree/engine.py:280-334): after a mid-epoch resume the epoch's loss/* columns in metrics.csv average "
        f"only the batches run after resuming (the per-epoch loss sums are not saved in LoopState): {losses} != {expected_losses}"
    )


# ----------------------------------------------------------------------------------------------- non-finite loss


def test_non_finite_loss_names_the_iteration_and_images_and_keeps_the_last_checkpoint(tmp_path: Path, tiny_overrides, monkeypatch) -> None:
    run = anchorfree.train("fcos_cpu", tiny_overrides(tmp_path), progress=False)
    last = run / "weights" / "last.safetensors"
    before = {path.name: path.read_bytes() for path in (last, last.with_suffix(".json"), run / "metrics.csv")}

    seen_image_ids: list[list[int]] = []
    real_build_model = engine.build_model

    def build_nan_model(model_config, num_classes):
        model = real_build_model(model_config, num_classes)
        forward = model.forward

        def nan_forward(images, targets=None):
            outputs = forward(images, targets)
            if not model.training:
                return outputs
            seen_image_ids.append([target["image_id"] for target in targets])
            return {name: value * float("nan") for name, value in outputs.items()}

        model.forward = nan_forward
        return model

    monkeypatch.setattr(engine, "build_model", build_nan_model)
    with pytest.raises(engine.NonFiniteLoss) as error:
        anchorfree.train(resume=run, overrides={"train.epochs": 2}, progress=False)
    message = str(error.value)
    assert len(seen_image_ids) == 1 and len(seen_image_ids[0]) == 4
    assert "non-finite loss at epoch 2 iteration 1 (step 5)" in message
    assert "classification=nan, box=nan, centerness=nan" in message
    assert f"images {seen_image_ids[0]}" in message
    assert str(last) in message
    assert {path.name: path.read_bytes() for path in (last, last.with_suffix(".json"), run / "metrics.csv")} == before
