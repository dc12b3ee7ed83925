"""`anchorfree targets`: each family's targets drawn with its own builder, and a checkpoint's predictions beside them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from PIL import Image

from anchorfree import api
from anchorfree.cli import main
from anchorfree.data.formats import read_dataset
from anchorfree.models import build_model, centernet, cornernet, fcos
from anchorfree.models.detector import batch_images
from anchorfree.targets_view import draw_targets, network_input

pytestmark = pytest.mark.filterwarnings("ignore:no detections on the evaluated images")

FAMILIES = ("fcos", "centernet", "cornernet")
# The small heads of tests/test_cli.py's keypoint families, so that a CPU epoch takes about a second.
FAMILY_SETTINGS: dict[str, dict[str, Any]] = {
    "fcos": {"fpn_channels": 32, "head_convs": 1, "norm_groups": 8, "score_threshold": 0.0},
    "centernet": {"neck": "fpn", "fpn_channels": 16, "head_channels": 16, "score_threshold": 0.0},
    "cornernet": {"neck": "fpn", "fpn_channels": 16, "pool_channels": 16, "head_channels": 16, "score_threshold": 0.0},
}
SMALL_INPUT = {"model.backbone": "mobilenet_v2", "model.backbone_width": 0.25, "data.val_size": 128, "data.max_size": 160}


def family_overrides(family: str) -> dict[str, Any]:
    return {**SMALL_INPUT, **{f"model.{family}.{key}": value for key, value in FAMILY_SETTINGS[family].items()}}


def as_arguments(overrides: dict[str, Any]) -> list[str]:
    return [f"{key}={json.dumps(value) if isinstance(value, list) else value}" for key, value in overrides.items()]


def counting(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[Any]:
    """Wrap `module.name` so that every call's result is recorded; returns the list of results."""
    results: list[Any] = []
    original = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        results.append(original(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(module, name, wrapper)
    return results


def png_size(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


@pytest.fixture(scope="module")
def train_data(tiny_dataset: Path):
    return read_dataset(tiny_dataset, "train")


def family_model_and_input(family: str, data, index: int) -> tuple[torch.nn.Module, torch.Tensor, dict]:
    config = api.make_config(api.DEMO_PRESETS[family], {**family_overrides(family), "model.pretrained_backbone": False})
    torch.manual_seed(0)
    model = build_model(config.model, len(data.class_names)).eval()
    image, target = network_input(data, index, config)
    return model, image, target


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_overrides) -> Callable[[str], Path]:
    """trained(family) -> the weights of a 1-epoch tiny model (no validation: `best` is the last epoch)."""
    weights: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in weights:
            overrides = tiny_overrides(
                tmp_path_factory.mktemp(f"targets_{family}"),
                train__name=family,
                model__name=family,
                data__val="",
                **{f"model__{family}__{key}": value for key, value in FAMILY_SETTINGS[family].items()},
            )
            run = api.train(api.DEMO_PRESETS[family], overrides, progress=False)
            weights[family] = run / "weights" / "best.safetensors"
        return weights[family]

    return make


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_draws_targets_then_predictions_beside_them(family: str, tiny_dataset: Path, tmp_path: Path, trained, capsys) -> None:
    """Targets only: one PNG per requested image (index or file name; overrides after --images still apply).
    With --weights: the predictions panel makes the same image's PNG wider."""
    out = tmp_path / "targets"
    arguments = ["targets", str(tiny_dataset), "--model", family, "--images", "0", "000003.jpg", "--out", str(out)]
    assert main([*arguments, *as_arguments(family_overrides(family))]) == 0
    expected = [out / f"000000_{family}.png", out / f"000003_{family}.png"]
    assert capsys.readouterr().out.split() == [str(path) for path in expected]
    for path in expected:
        width, height = png_size(path)
        assert 200 <= width <= 2000 and 200 <= height <= 2000
    targets_width, targets_height = png_size(expected[0])

    weights = trained(family)
    with_predictions = tmp_path / "predictions"
    # An override between the options: the model is rebuilt with it and given the checkpoint's weights.
    arguments = ["targets", str(tiny_dataset), "--weights", str(weights), f"model.{family}.score_threshold=0.0", "--images", "0"]
    assert main([*arguments, "--out", str(with_predictions), "--conf", "0.0"]) == 0
    assert capsys.readouterr().out.split() == [str(with_predictions / f"000000_{family}.png")]
    width, height = png_size(with_predictions / f"000000_{family}.png")
    assert width > targets_width * 1.5 and height >= targets_height * 0.8 and width <= 4000


def test_cli_names_an_unknown_image(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    assert main(["targets", str(tiny_dataset), "--images", "missing.jpg", "--out", str(tmp_path), *as_arguments(SMALL_INPUT)]) == 2
    assert "no image named 'missing.jpg'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_fcos_draws_every_positive_of_assign_targets(train_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assignments = counting(monkeypatch, fcos, "assign_targets")
    centerness = counting(monkeypatch, fcos, "centerness_targets")
    model, image, target = family_model_and_input("fcos", train_data, 2)
    drawn = draw_targets(model, image, target, train_data.class_names, tmp_path / "fcos.png")
    assert len(assignments) == 1 and len(centerness) == 1
    point_labels, point_boxes = assignments[0]
    positives = int((point_labels >= 0).sum())
    assert positives > 0 and drawn["positives"] == positives == len(drawn["points"]) == len(drawn["levels"])
    assert torch.equal(torch.as_tensor(drawn["centerness"]), centerness[0].cpu())
    assert torch.equal(torch.as_tensor(drawn["boxes"]), point_boxes[point_labels >= 0].cpu())
    assert set(drawn["levels"].tolist()) <= set(range(len(model.strides)))
    png_size(drawn["path"])


def test_centernet_draws_the_heatmap_of_centernet_targets(train_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = counting(monkeypatch, centernet, "centernet_targets")
    model, image, target = family_model_and_input("centernet", train_data, 2)
    drawn = draw_targets(model, image, target, train_data.class_names, tmp_path / "centernet.png")
    assert len(built) == 1
    # The same heatmap as the builder gives for this image's boxes on the model's output map.
    with torch.no_grad():
        output_size = tuple(model.head_outputs(batch_images([image], model.size_divisor)[0])[0].shape[-2:])
    expected = centernet.centernet_targets(
        target["boxes"], target["labels"], model.num_classes, output_size, model.stride,
        model.config.radius_formula, model.config.min_overlap, model.config.max_objects, target["iscrowd"],
    )
    assert torch.equal(drawn["heatmap"], expected.heatmap) and torch.equal(drawn["heatmap"], built[0].heatmap.cpu())
    assert torch.equal(torch.as_tensor(drawn["drawn_heatmap"]), expected.heatmap.max(dim=0).values)
    assert len(drawn["peaks"]) == len(expected.indices) > 0
    png_size(drawn["path"])


def test_cornernet_draws_one_pair_per_object(train_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = counting(monkeypatch, cornernet, "cornernet_targets")
    model, image, target = family_model_and_input("cornernet", train_data, 2)
    drawn = draw_targets(model, image, target, train_data.class_names, tmp_path / "cornernet.png")
    assert len(built) == 1
    objects = int((~target["iscrowd"]).sum())
    assert drawn["pairs"] == objects == len(built[0].top_left_indices) > 0
    assert (drawn["bottom_right"] >= drawn["top_left"]).all()
    png_size(drawn["path"])
