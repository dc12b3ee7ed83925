"""ImageNet weights offline: one download attempt per weights file and process, one warning naming the file and the
folder to put it in, then the run goes on from scratch and says so in its saved config. Loading a checkpoint (val,
predict, targets) never asks for ImageNet weights at all.

torchvision's download call itself is replaced by a fake that counts its calls, so the tests exercise the real
weights API path (torchvision's builders, torch.hub's file naming) without a network.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torchvision.models._api as torchvision_weights_api
import yaml
from matplotlib.figure import Figure
from torchvision import models as tv_models

import anchorfree
from anchorfree import api
from anchorfree.checkpoint import load_checkpoint
from anchorfree.cli import main
from anchorfree.config import config_from_dict
from anchorfree.models.backbones import FrozenNorm, PretrainedWeightsUnavailable, build_backbone, forget_unavailable_weights

WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """torchvision's weights download fails as it does without a network; returns the list of URLs it was asked for."""
    calls: list[str] = []

    def no_network(url: str, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision_weights_api, "load_state_dict_from_url", no_network)
    return calls


@pytest.fixture
def no_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    """Figures are built as usual but not rendered (matplotlib's drawing is most of a tiny run's time)."""
    monkeypatch.setattr(Figure, "savefig", lambda self, target, **kwargs: target.write(b""))


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """torchvision's weights download "succeeds" with random MobileNetV2 weights; returns the URLs asked for."""
    calls: list[str] = []

    def download(url: str, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        calls.append(url)
        return tv_models.mobilenet_v2().state_dict()

    monkeypatch.setattr(torchvision_weights_api, "load_state_dict_from_url", download)
    return calls


def pretrained_overrides(tiny_overrides: Callable[..., dict[str, Any]], project: Path, **extra: Any) -> dict[str, Any]:
    """The tiny run with ImageNet weights asked for (they exist for MobileNetV2 at width 1.0 only), on 64 px
    inputs to keep the full-width backbone quick, at a learning rate low enough for any preset's optimizer (the
    run is about what it fetches, not what it learns)."""
    small = {"data__train_sizes": [64], "data__val_size": 64, "data__max_size": 80, "train__lr": 1e-4}
    return tiny_overrides(project, model__pretrained_backbone=True, model__backbone_width=1.0, **{**small, **extra})


def weights_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """The texts of the caught warnings about the ImageNet weights file."""
    return [str(warning.message) for warning in caught if WEIGHTS_FILE in str(warning.message)]


def saved_backbone_flags(run: Path) -> list[bool]:
    """model.pretrained_backbone and model.freeze_backbone_norm as config.yaml and the checkpoints' mirrors (last,
    and best where written) record them."""
    mirrors = [run / "weights" / name for name in ("last.json", "best.json") if (run / "weights" / name).is_file()]
    sections = [yaml.safe_load((run / "config.yaml").read_text())["model"], *(json.loads(mirror.read_text())["config"]["model"] for mirror in mirrors)]
    return [section[key] for section in sections for key in ("pretrained_backbone", "freeze_backbone_norm")]


def test_a_failed_fetch_is_remembered_and_names_the_file_and_the_folder(offline: list[str]) -> None:
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    for _ in range(3):
        with pytest.raises(PretrainedWeightsUnavailable) as error:
            build_backbone("mobilenet_v2", pretrained=True)
        assert WEIGHTS_FILE in str(error.value) and str(folder) in str(error.value)
        assert "model.pretrained_backbone=false" in str(error.value)
        assert (error.value.weights_file, error.value.folder) == (WEIGHTS_FILE, folder)
    assert offline == [tv_models.MobileNet_V2_Weights.IMAGENET1K_V1.url]  # one attempt, however many builds
    build_backbone("mobilenet_v2", pretrained=False)  # from scratch needs no file
    assert len(offline) == 1
    forget_unavailable_weights()  # e.g. the network is back: the next build tries again
    with pytest.raises(PretrainedWeightsUnavailable):
        build_backbone("mobilenet_v2", pretrained=True)
    assert len(offline) == 2


def test_offline_training_then_val_predict_targets_ask_once_and_warn_once(
    offline: list[str], no_rendering: None, tiny_dataset: Path, tiny_overrides: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    """What the demo does in one process: train (with evaluation, checkpoints and plots), then val, predict and
    targets of its checkpoint, then another pretrained build: one download attempt and one warning in all."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = anchorfree.train("fcos_mobilenet_v2_cpu", pretrained_overrides(tiny_overrides, tmp_path), progress=False)
        weights = run / "weights" / "best.safetensors"
        anchorfree.val(weights, progress=False)
        anchorfree.predict(weights, [tiny_dataset / "images" / "val" / "000000.jpg"], tmp_path / "predicted", progress=False)
        api.targets(tiny_dataset / "instances_val.json", weights, out=tmp_path / "targets", split="val", count=1)
        with pytest.raises(PretrainedWeightsUnavailable):  # a later pretrained build fails fast, without asking
            build_backbone("mobilenet_v2", pretrained=True)
    assert len(offline) == 1
    [warning] = weights_warnings(caught)
    assert str(Path(torch.hub.get_dir()) / "checkpoints") in warning
    assert "continues from scratch (model.pretrained_backbone=false, model.freeze_backbone_norm=false)" in warning
    assert set(saved_backbone_flags(run)) == {False}


def test_cli_train_offline_warns_and_trains_from_scratch(
    offline: list[str], no_rendering: None, tiny_overrides: Callable[..., dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = pretrained_overrides(tiny_overrides, tmp_path, train__name="offline", data__val="")
    tokens = [f"{key}={json.dumps(value) if isinstance(value, list) else value}" for key, value in overrides.items()]
    with pytest.warns(UserWarning, match=WEIGHTS_FILE) as caught:
        assert main(["train", "--preset", "fcos_mobilenet_v2_cpu", *tokens]) == 0
    assert len(weights_warnings(list(caught))) == 1
    assert len(offline) == 1
    run = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("run folder: "))
    assert set(saved_backbone_flags(run)) == {False}


def test_loading_a_pretrained_checkpoint_never_asks_for_imagenet_weights(
    online: list[str], no_rendering: None, tiny_dataset: Path, tiny_overrides: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    run = anchorfree.train("fcos_mobilenet_v2_cpu", pretrained_overrides(tiny_overrides, tmp_path, data__val=""), progress=False)
    assert len(online) == 1 and set(saved_backbone_flags(run)) == {True}
    weights = run / "weights" / "last.safetensors"
    anchorfree.val(weights, tiny_dataset / "instances_val.json", progress=False)
    anchorfree.predict(weights, [tiny_dataset / "images" / "val" / "000000.jpg"], tmp_path / "predicted", progress=False)
    # targets loads the checkpoint; with a model setting overridden it also rebuilds the model with that setting
    # (the same weights, in the frozen-norm structure they were trained in), still without ImageNet weights.
    api.targets(tiny_dataset / "instances_val.json", run, out=tmp_path / "targets_low", split="val", count=1, overrides=["model.fcos.score_threshold=0.01"])
    assert len(online) == 1


@pytest.fixture(scope="module")
def frozen_norm_run(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: Callable[..., dict[str, Any]]) -> Path:
    """A tiny FCOS run trained in the structure of a pretrained backbone (frozen batch norm) from random weights:
    model.freeze_backbone_norm=true with model.pretrained_backbone=false, so nothing is downloaded."""
    overrides = tiny_overrides(tmp_path_factory.mktemp("frozen_norm"), model__freeze_backbone_norm=True, data__val="")
    calls: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torchvision_weights_api, "load_state_dict_from_url", lambda url, *args, **kwargs: calls.append(url))
        run = anchorfree.train("fcos_cpu", overrides, progress=False)
    assert calls == []
    return run


def test_targets_of_a_frozen_norm_run_with_a_test_time_setting_fetch_nothing(
    online: list[str], frozen_norm_run: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert saved_backbone_flags(frozen_norm_run)[:2] == [False, True]  # config.yaml: no weights fetched, the frozen structure
    out = tmp_path / "targets"
    arguments = ["targets", str(tiny_dataset / "instances_val.json"), "--weights", str(frozen_norm_run), "model.fcos.score_threshold=0.01"]
    assert main([*arguments, "--split", "val", "--count", "1", "--out", str(out), "--device", "cpu"]) == 0
    [written] = capsys.readouterr().out.split()
    assert Path(written).parent == out and Path(written).stat().st_size > 0
    detector = anchorfree.load(frozen_norm_run, device="cpu", overrides={"model.fcos.score_threshold": 0.01})
    assert isinstance(detector.model.backbone, FrozenNorm) and detector.model.config.score_threshold == 0.01
    assert online == []  # no ImageNet weights asked for (nor in training: see frozen_norm_run)


def test_an_old_style_checkpoint_loads_in_its_structure_and_detects_the_same(
    online: list[str], frozen_norm_run: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """A checkpoint as format 1 wrote it: every family's section, no metadata version, no freeze_backbone_norm (a
    frozen-norm backbone then meant pretrained_backbone=true). It loads in the frozen-norm structure, without a
    download, and gives exactly the detections of the same weights saved today."""
    from safetensors.torch import save as save_safetensors_bytes

    best = frozen_norm_run / "weights" / "best.safetensors"
    saved = load_checkpoint(best)
    old_config = dataclasses.asdict(config_from_dict(saved.metadata.config))
    del old_config["model"]["freeze_backbone_norm"]
    old_config["model"]["pretrained_backbone"] = True
    assert {"fcos", "centernet", "cornernet"} <= set(old_config["model"])
    old_metadata = {"config": old_config, "class_names": saved.metadata.class_names, "category_ids": saved.metadata.category_ids, "epoch": 1}
    header = {"format": "anchorfree-checkpoint", "format_version": "1", "metadata": json.dumps(old_metadata)}
    old = tmp_path / "old.safetensors"
    old.write_bytes(save_safetensors_bytes({f"model.{name}": tensor for name, tensor in saved.model_state.items()}, metadata=header))
    assert load_checkpoint(old).metadata.version == 1

    image = tiny_dataset / "images" / "val" / "000000.jpg"
    everything = {"model.fcos.score_threshold": 0.0}
    old_detector, new_detector = (anchorfree.load(path, device="cpu", overrides=everything) for path in (old, best))
    assert isinstance(old_detector.model.backbone, FrozenNorm) and old_detector.config.model.freeze_backbone_norm
    old_found, new_found = old_detector.predict(image, score_threshold=0.0), new_detector.predict(image, score_threshold=0.0)
    assert len(new_found["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(old_found[key], new_found[key]), key
    assert online == []
