"""The `anchorfree` command line, called in-process through `anchorfree.cli.main`."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

from anchorfree.cli import main
from anchorfree.config import PRESETS, get_preset

pytestmark = pytest.mark.filterwarnings("ignore:no detections on the evaluated images")


def as_arguments(overrides: dict) -> list[str]:
    """{"train.epochs": 1, "data.train_sizes": [128]} -> ["train.epochs=1", "data.train_sizes=[128]"]."""
    return [f"{key}={json.dumps(value) if isinstance(value, list) else value}" for key, value in overrides.items()]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory, tiny_overrides) -> tuple[int, str, Path]:
    """`anchorfree train` with key=value overrides; a zero score threshold so predictions are never empty."""
    overrides = tiny_overrides(tmp_path_factory.mktemp("cli"), train__name="cli", model__fcos__score_threshold=0.0)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["train", "--preset", "fcos_cpu", *as_arguments(overrides)])
    return code, stdout.getvalue(), Path(overrides["train.project"]) / "cli"


def test_train_prints_the_run_folder(cli_run) -> None:
    code, stdout, run = cli_run
    assert code == 0
    assert stdout.strip().splitlines()[-1] == f"run folder: {run}"
    assert (run / "weights" / "best.safetensors").is_file() and (run / "weights" / "last.safetensors").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["train_sizes"] == [128] and saved["model"]["backbone_width"] == 0.25 and saved["model"]["fcos"]["score_threshold"] == 0.0


def test_val_prints_coco_metrics_and_saves_json(cli_run, tmp_path: Path, capsys) -> None:
    _, _, run = cli_run
    metrics_file = tmp_path / "metrics.json"
    assert main(["val", str(run / "weights" / "best.safetensors"), "--device", "cpu", "--save-json", str(metrics_file)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("COCO bbox: 8 images, ")
    saved = json.loads(metrics_file.read_text())
    assert set(saved["stats"]) >= {"mAP", "AP50", "AP75"}
    for name in ("mAP", "AP50"):  # the printed table and the saved JSON agree
        assert f"  {name:<10} {saved['stats'][name]:6.4f}" in stdout.splitlines()


def test_predict_writes_predictions_json_and_drawn_images(cli_run, tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    _, _, run = cli_run
    out = tmp_path / "predictions"
    images = tiny_dataset / "images" / "val"
    assert main(["predict", str(run / "weights" / "best.safetensors"), str(images), "--out", str(out), "--conf", "0"]) == 0
    assert_predict_summary(capsys.readouterr().out, out)
    assert_predictions_written(out, images)


def assert_predict_summary(stdout: str, out: Path) -> None:
    """The closing summary of `predict` on the 8 tiny val images names the count and where the results are."""
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("predicted 8 image(s) in ")
    assert f"predictions: {out / 'predictions.json'}" in lines
    assert lines[-1].startswith(f"drawn images: {out}")


def assert_predictions_written(out: Path, images: Path) -> None:
    """`predict` wrote COCO results for the 8 tiny val images, with file names, and one drawn image per source."""
    predictions = json.loads((out / "predictions.json").read_text())
    assert isinstance(predictions, list) and predictions
    sources = sorted(images.glob("*.jpg"))
    assert sorted(path.name for path in out.glob("*.jpg")) == [path.name for path in sources]
    for prediction in predictions:
        assert set(prediction) == {"image_id", "file_name", "category_id", "bbox", "score"}
        assert 1 <= prediction["image_id"] <= 8 and prediction["file_name"] == str(sources[prediction["image_id"] - 1])
        assert prediction["category_id"] in range(1, 7)
        assert len(prediction["bbox"]) == 4 and prediction["bbox"][2] >= 0 and prediction["bbox"][3] >= 0
        assert 0 <= prediction["score"] <= 1


def test_predict_without_images_writes_only_json(cli_run, tiny_dataset: Path, tmp_path: Path) -> None:
    _, _, run = cli_run
    image = tiny_dataset / "images" / "val" / "000000.jpg"
    assert main(["predict", str(run / "weights" / "last.safetensors"), str(image), "--out", str(tmp_path), "--no-images"]) == 0
    assert [path.name for path in tmp_path.iterdir()] == ["predictions.json"]
    assert isinstance(json.loads((tmp_path / "predictions.json").read_text()), list)


def test_val_and_predict_take_test_time_settings_after_the_weights(cli_run, tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    """`key=value` tokens after the weights (or after an option) load the checkpoint with those settings; a
    setting that shapes the weights exits 2 naming the key and what may be changed."""
    _, _, run = cli_run
    weights = str(run / "weights" / "best.safetensors")
    images = str(tiny_dataset / "images" / "val")
    counts = []
    for settings in ([], ["model.fcos.max_detections=1"]):
        out = tmp_path / f"predict_{len(settings)}"
        assert main(["predict", weights, images, *settings, "--out", str(out), "--conf", "0", "--no-images"]) == 0
        counts.append(len(json.loads((out / "predictions.json").read_text())))
    assert counts[0] > 8 and counts[1] <= 8  # one detection per image at most
    out = tmp_path / "predict_after_option"
    assert main(["predict", weights, images, "--out", str(out), "--no-images", "--conf", "0", "model.fcos.max_detections=1"]) == 0
    assert len(json.loads((out / "predictions.json").read_text())) == counts[1]
    metrics_file = tmp_path / "metrics.json"
    assert main(["val", weights, "model.fcos.max_detections=10", "--device", "cpu", "--save-json", str(metrics_file), "data.val_size=96"]) == 0
    assert json.loads(metrics_file.read_text())["stats"]["AR1"] >= 0
    capsys.readouterr()
    assert main(["val", weights, "model.fcos.fpn_channels=16", "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert "error: model.fcos.fpn_channels cannot be changed when loading checkpoint" in error and "model.fcos.score_threshold" in error


def test_train_with_an_unknown_key_exits_2_with_a_suggestion(tmp_path: Path, capsys) -> None:
    assert main(["train", "train.epoch=3", f"train.project={tmp_path}"]) == 2
    captured = capsys.readouterr()
    assert "error: unknown key 'train.epoch'; did you mean 'train.epochs'?" in captured.err
    assert list(tmp_path.iterdir()) == []  # nothing was started


def test_presets_lists_every_preset(capsys) -> None:
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(PRESETS)
    assert "fcos_cpu" in lines[0] and "MobileNetV2" in lines[0]


def test_presets_name_prints_the_resolved_yaml_and_keys(capsys) -> None:
    assert main(["presets", "fcos_cpu"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == get_preset("fcos_cpu").to_dict()
    assert main(["presets", "fcos_cpu", "--keys"]) == 0
    keys = capsys.readouterr().out.splitlines()
    assert "train.epochs" in keys and "model.fcos.head_convs" in keys
    assert "model.freeze_backbone_norm" in keys and not [key for key in keys if key.startswith(("model.centernet.", "model.cornernet."))]
    assert main(["presets", "cornernet_cpu"]) == 0
    assert set(yaml.safe_load(capsys.readouterr().out)["model"]) & {"fcos", "centernet", "cornernet"} == {"cornernet"}
    assert main(["presets", "fcos_cpuu"]) == 2
    assert "did you mean 'fcos_cpu'" in capsys.readouterr().err


def test_data_synth_writes_the_coco_files(tmp_path: Path, capsys) -> None:
    out = tmp_path / "shapes"
    assert main(["data", "synth", "--out", str(out), "--train", "2", "--val", "1", "--seed", "4"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} ")
    train = json.loads((out / "instances_train.json").read_text())
    val = json.loads((out / "instances_val.json").read_text())
    assert [image["file_name"] for image in train["images"]] == ["train/000000.jpg", "train/000001.jpg"]
    assert [image["file_name"] for image in val["images"]] == ["val/000000.jpg"]
    assert len(train["categories"]) == 6
    assert (out / "images" / "train" / "000001.jpg").is_file()
    # A non-empty folder is refused with exit code 2.
    assert main(["data", "synth", "--out", str(out), "--train", "1", "--val", "1"]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [[], ["demo"], ["train"], ["val"], ["predict"], ["data"], ["data", "synth"], ["presets"]],
    ids=lambda command: " ".join(command) or "anchorfree",
)
def test_help_of_each_command_exits_0(command: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {' '.join(['anchorfree', *command])}")


def test_missing_subcommand_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "usage: anchorfree" in capsys.readouterr().err


# Tiny family settings. CornerNet: after 4 warm-up steps the corner heatmaps are still flat (p ~ 0.1), so the 100
# best top-left and bottom-right corners (the default K) happen to share no class with a bottom-right below-right
# of its top-left: every pair is invalid and predict would write []. K = 400 (160 000 pairs) gives valid pairs, so
# the written predictions themselves are checked; a zero score threshold keeps them all.
KEYPOINT_FAMILIES = {
    "centernet": {"neck": "fpn", "fpn_channels": 16, "head_channels": 16, "score_threshold": 0.0},
    "cornernet": {"neck": "fpn", "fpn_channels": 16, "pool_channels": 16, "head_channels": 16, "score_threshold": 0.0, "corners_top_k": 400},
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(KEYPOINT_FAMILIES))
def test_keypoint_family_train_val_predict_through_the_cli(
    family: str, tmp_path_factory: pytest.TempPathFactory, tiny_overrides, tiny_dataset: Path, capsys
) -> None:
    """`train --preset <family>_cpu` with a tiny model, then `val` prints the metrics table and `predict` writes JSON
    and drawn images."""
    settings = KEYPOINT_FAMILIES[family]
    overrides = tiny_overrides(
        tmp_path_factory.mktemp(f"cli_{family}"),
        train__name=f"{family}_cli",
        model__name=family,
        **{f"model__{family}__{key}": value for key, value in settings.items()},
    )
    run = Path(overrides["train.project"]) / f"{family}_cli"
    assert main(["train", "--preset", f"{family}_cpu", *as_arguments(overrides)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"run folder: {run}"
    weights = run / "weights" / "best.safetensors"
    assert weights.is_file() and (run / "weights" / "last.safetensors").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["preset"] == f"{family}_cpu" and saved["model"]["name"] == family
    assert saved["model"]["pretrained_backbone"] is False
    assert {key: saved["model"][family][key] for key in settings} == settings

    metrics_file = tmp_path_factory.mktemp(f"cli_{family}_val") / "metrics.json"
    assert main(["val", str(weights), "--device", "cpu", "--save-json", str(metrics_file)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("COCO bbox: 8 images, ")
    saved_metrics = json.loads(metrics_file.read_text())
    for name in ("mAP", "AP50", "AP75"):  # the printed table and the saved JSON agree
        assert f"  {name:<10} {saved_metrics['stats'][name]:6.4f}" in stdout.splitlines()

    out = tmp_path_factory.mktemp(f"cli_{family}_predict")
    images = tiny_dataset / "images" / "val"
    assert main(["predict", str(weights), str(images), "--out", str(out), "--conf", "0"]) == 0
    assert_predict_summary(capsys.readouterr().out, out)
    assert_predictions_written(out, images)


@pytest.mark.slow
@pytest.mark.parametrize("data_format", ["voc", "yolo"])
def test_train_and_val_read_voc_and_yolo_through_a_dataset_yaml(data_format: str, tiny_dataset: Path, tiny_overrides, tmp_path: Path, capsys) -> None:
    # The tiny COCO dataset (a folder with instances_train.json and instances_val.json) converted by `data convert`;
    # training then points at the written YAML only.
    assert main(["data", "convert", str(tiny_dataset), "--to", data_format, "--out", str(tmp_path / "a"), "--images", "symlink"]) == 0
    assert set(yaml.safe_load((tmp_path / "a" / "data.yaml").read_text())) >= {"train", "val", "names"}
    overrides = tiny_overrides(tmp_path / "runs", train__name="converted")
    del overrides["data.train"], overrides["data.val"]
    overrides["data.dataset"] = str(tmp_path / "a" / "data.yaml")
    assert main(["train", "--preset", "fcos_cpu", *as_arguments(overrides)]) == 0
    capsys.readouterr()
    checkpoint = tmp_path / "runs" / "converted" / "weights" / "best.safetensors"
    assert main(["val", str(checkpoint), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("COCO bbox: 8 images, ")
    # The classes and their ids travel with the checkpoint: the COCO original of the val split evaluates too.
    assert main(["val", str(checkpoint), "--device", "cpu", "--data", str(tiny_dataset / "instances_val.json")]) == 0
