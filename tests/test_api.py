"""The Python API: demo end to end (with the offline fallback), load + predict in original pixels."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import anchorfree
from anchorfree import api
from anchorfree.config import ConfigError
from anchorfree.models import backbones


TINY_CENTERNET = {"model__centernet__fpn_channels": 16, "model__centernet__head_channels": 16}
TINY_CORNERNET = {"model__cornernet__fpn_channels": 16, "model__cornernet__pool_channels": 16, "model__cornernet__head_channels": 16}


@pytest.mark.parametrize("family, extra", [("fcos", {}), ("centernet", TINY_CENTERNET), ("cornernet", TINY_CORNERNET)])
def test_demo_trains_evaluates_and_draws_and_falls_back_to_scratch_when_offline(
    family: str, extra: dict[str, Any], tiny_dataset: Path, tiny_overrides: Callable[..., dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "synthetic_dataset_path", lambda: tiny_dataset)
    original = backbones._build_classifier_backbone

    def offline(name: str, pretrained: bool, width: float) -> torch.nn.Module:
        if pretrained:
            raise OSError("<urlopen error no network>")
        return original(name, pretrained, width)

    monkeypatch.setattr(backbones, "_build_classifier_backbone", offline)
    overrides = tiny_overrides(tmp_path, model__name=family, **extra)
    overrides["model.pretrained_backbone"] = True
    with pytest.warns(UserWarning, match="from scratch"):
        run_folder, result = api.demo(family, overrides, progress=False)
    assert run_folder.name == f"demo_{family}"
    assert json.loads((run_folder / "weights" / "best.json").read_text())["config"]["model"]["name"] == family
    assert (run_folder / "weights" / "best.safetensors").is_file()
    saved_model = json.loads((run_folder / "weights" / "best.json").read_text())["config"]["model"]
    # From scratch, batch norm trains: frozen at its random initial values it would never learn.
    assert saved_model["pretrained_backbone"] is False and saved_model["freeze_backbone_norm"] is False
    assert family in saved_model and not ({"fcos", "centernet", "cornernet"} - {family}) & set(saved_model)  # the active family only
    assert 0.0 <= result.stats["AP50"] <= 1.0
    drawn = sorted((run_folder / "predictions").glob("*.jpg"))
    assert len(drawn) == 8
    assert isinstance(json.loads((run_folder / "predictions" / "predictions.json").read_text()), list)


def test_demo_rejects_an_unknown_family() -> None:
    with pytest.raises(ValueError, match="unknown model 'yolo'"):
        api.demo("yolo")


def test_loaded_detector_predicts_in_original_image_pixels(tiny_dataset: Path, tiny_overrides: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    run = anchorfree.train("fcos_cpu", tiny_overrides(tmp_path), progress=False)
    detector = anchorfree.load(run / "weights" / "best.safetensors", device="cpu")
    # Make the detector report everything so that boxes exist to check.
    detector.model.config.score_threshold = 0.0
    image_path = sorted((tiny_dataset / "images" / "val").glob("*.jpg"))[0]
    image = anchorfree.data.images.load_image(image_path)
    detections = detector.predict(image_path, score_threshold=0.0)
    height, width = image.shape[-2:]
    assert len(detections["boxes"]) > 0
    assert detections["boxes"][:, 0::2].max() <= width + 1e-3 and detections["boxes"][:, 1::2].max() <= height + 1e-3
    assert detections["boxes"][:, 0::2].min() >= 0 and detections["boxes"][:, 1::2].min() >= 0
    assert detections["names"] == [detector.class_names[label] for label in detections["labels"].tolist()]
    # The same image as a tensor gives the same detections as the path.
    from_tensor = detector.predict(image, score_threshold=0.0)
    assert torch.allclose(from_tensor["boxes"], detections["boxes"])


def test_load_with_test_time_overrides_rebuilds_the_model_with_them(tiny_dataset: Path, tiny_overrides: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    """A higher score threshold gives a subset of the detections (with NMS and the caps out of the way, each
    threshold keeps exactly the candidates above it); a setting that shapes the weights is refused."""
    run = anchorfree.train("fcos_cpu", tiny_overrides(tmp_path, data__val=""), progress=False)
    image_path = tiny_dataset / "images" / "val" / "000000.jpg"
    no_caps = {"model.fcos.nms_threshold": 1.0, "model.fcos.pre_nms_top_k": 100_000, "model.fcos.max_detections": 100_000}

    def detections(score_threshold: float) -> set[tuple[float, ...]]:
        detector = anchorfree.load(run, device="cpu", overrides={**no_caps, "model.fcos.score_threshold": score_threshold})
        assert detector.config.model.fcos.score_threshold == detector.model.config.score_threshold == score_threshold
        found = detector.predict(image_path, score_threshold=0.0)
        return {(label, *(round(value, 3) for value in box), round(score, 4)) for box, score, label in zip(found["boxes"].tolist(), found["scores"].tolist(), found["labels"].tolist())}

    thresholds = [0.0, 0.005, 0.01, 0.02, 0.05, 0.5]
    found = [detections(threshold) for threshold in thresholds]
    assert all(higher <= lower for lower, higher in zip(found, found[1:]))
    assert len(found[-1]) < len(found[0])
    saved = anchorfree.load(run, device="cpu")
    assert saved.config.model.fcos.score_threshold == saved.model.config.score_threshold == 0.05  # the preset's, as saved
    with pytest.raises(ConfigError) as error:
        anchorfree.load(run, device="cpu", overrides={"model.fcos.fpn_channels": 64})
    message = str(error.value)
    assert message.startswith(f"model.fcos.fpn_channels cannot be changed when loading checkpoint {run / 'weights' / 'last.safetensors'}")
    assert "model.fcos.score_threshold, model.fcos.pre_nms_top_k, model.fcos.nms_threshold, model.fcos.max_detections, data.val_size" in message
    with pytest.raises(ConfigError, match="model.centernet.score_threshold cannot be changed"):
        anchorfree.load(run, device="cpu", overrides=["model.centernet.score_threshold=0.1"])


def test_predict_refuses_a_float_tensor(tiny_overrides: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    run = anchorfree.train("fcos_cpu", tiny_overrides(tmp_path), progress=False)
    detector = anchorfree.load(run)
    with pytest.raises(TypeError, match="uint8"):
        detector.predict(torch.rand(3, 32, 32))


def test_a_checkpoint_of_a_pretrained_backbone_loads_without_the_imagenet_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Loading takes every weight from the checkpoint: it must not ask torchvision for ImageNet weights (offline, the
    # file is absent), and it must rebuild the frozen-norm structure the pretrained backbone trained in.
    from anchorfree.checkpoint import save_checkpoint
    from anchorfree.config import get_preset
    from anchorfree.models import build_model

    config = get_preset("fcos_mobilenet_v2_cpu")  # a pretrained preset (the demo presets train from scratch)
    assert config.model.pretrained_backbone and config.model.freeze_backbone_norm
    model = build_model(replace(config.model, pretrained_backbone=False), 2)  # the structure, random weights
    assert isinstance(model.backbone, backbones.FrozenNorm)
    metadata = {"config": config.to_dict(), "class_names": ["a", "b"], "category_ids": [1, 2]}
    path = save_checkpoint(tmp_path / "best.safetensors", model, metadata)

    def no_download(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("loading a checkpoint asked for ImageNet weights")

    monkeypatch.setattr(backbones.tv_models, "mobilenet_v2", lambda weights=None, **kwargs: no_download() if weights else ORIGINAL_MOBILENET(**kwargs))
    detector = anchorfree.load(path, device="cpu")
    assert isinstance(detector.model.backbone, backbones.FrozenNorm)
    for name, tensor in model.state_dict().items():
        assert torch.equal(detector.model.state_dict()[name], tensor)


ORIGINAL_MOBILENET = backbones.tv_models.mobilenet_v2
