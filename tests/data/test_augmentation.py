"""Resize modes (shorter, letterbox, crop) and mosaic keep every box tight around the object drawn under it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torchvision.transforms import v2

import anchorfree
from anchorfree.config import PRESETS, Config, ConfigError, check_data, get_preset
from anchorfree.data.coco import read_coco
from anchorfree.data.dataset import DetectionDataset, scale_to_original
from anchorfree.data.images import load_image
from anchorfree.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MEAN_PIXEL,
    denormalize,
    eval_transforms,
    largest_input,
    make_sample,
    mosaic,
    train_transforms,
)

# Saturated colours, far from the black background and from the mean-colour padding; label i is drawn in COLOURS[i].
COLOURS = [(230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30), (230, 30, 230), (30, 230, 230)]
# (x1, y1, x2, y2) of the rectangles in a 180 x 280 scene: apart, and at least 15 px from the image edges.
SCENE_BOXES = [[20.0, 15.0, 90.0, 75.0], [120.0, 30.0, 170.0, 130.0], [200.0, 100.0, 262.0, 160.0], [30.0, 110.0, 100.0, 152.0]]


def scene(labels: tuple[int, ...] = (0, 1, 2, 3)) -> dict:
    """A black 180 x 280 image with solid rectangles at SCENE_BOXES, rectangle i in COLOURS[labels[i]]."""
    image = torch.zeros(3, 180, 280, dtype=torch.uint8)
    for (x1, y1, x2, y2), label in zip(SCENE_BOXES, labels):
        image[:, int(y1) : int(y2), int(x1) : int(x2)] = torch.tensor(COLOURS[label], dtype=torch.uint8)[:, None, None]
    iscrowd = torch.tensor([label % 2 == 1 for label in labels])
    return make_sample(image, torch.tensor(SCENE_BOXES[: len(labels)]), torch.tensor(list(labels)), iscrowd)


def empty_scene() -> dict:
    image = torch.zeros(3, 120, 90, dtype=torch.uint8)
    return make_sample(image, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.bool))


def assert_boxes_on_objects(sample: dict) -> int:
    """Each box holds its label's colour all over its inside (from 1 px in from its edges) and not 2 px outside,
    except on sides cut by the image edge. Returns how many boxes had an inside large enough to check."""
    image = denormalize(sample["image"]).int()  # (3, H, W)
    height, width = image.shape[-2:]
    boxes = sample["boxes"].as_subclass(torch.Tensor)
    assert len(boxes) == len(sample["labels"]) == len(sample["iscrowd"])
    assert (boxes >= 0).all() and (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    checked = 0
    for box, label in zip(boxes.tolist(), sample["labels"].tolist()):
        colour = torch.tensor(COLOURS[label])[:, None, None]
        matches = (image - colour).abs().amax(dim=0) <= 40  # (H, W)
        x1, y1, x2, y2 = box
        cut = {"left": x1 <= 0, "top": y1 <= 0, "right": x2 >= width, "bottom": y2 >= height}
        # A side cut by the image edge shows the object right up to it; a drawn edge is blurred by resizing.
        left, top = (0 if cut["left"] else math.ceil(x1) + 1), (0 if cut["top"] else math.ceil(y1) + 1)
        right, bottom = (width if cut["right"] else math.floor(x2) - 1), (height if cut["bottom"] else math.floor(y2) - 1)
        if right <= left or bottom <= top:
            continue
        checked += 1
        inside = matches[top:bottom, left:right]
        share = inside.float().mean().item()
        assert share > 0.9, f"box {box} (label {label}): only {share:.0%} of its inside is the object's colour"
        # The inside's outermost rows and columns too: a box larger than its object fails here.
        for side, line in {"left": inside[:, 0], "right": inside[:, -1], "top": inside[0], "bottom": inside[-1]}.items():
            assert line.float().mean() > 0.9, f"box {box} (label {label}) reaches past its object on its {side} side"
        outside = {
            "left": matches[top:bottom, math.floor(x1) - 2],
            "right": matches[top:bottom, math.ceil(x2) + 1] if math.ceil(x2) + 1 < width else None,
            "top": matches[math.floor(y1) - 2, left:right],
            "bottom": matches[math.ceil(y2) + 1, left:right] if math.ceil(y2) + 1 < height else None,
        }
        for side, strip in outside.items():
            if cut[side] or strip is None or (side == "left" and math.floor(x1) - 2 < 0) or (side == "top" and math.floor(y1) - 2 < 0):
                continue
            assert strip.float().mean().item() < 0.2, f"box {box} (label {label}) is not tight on its {side} side"
    return checked


SINGLE_IMAGE_PIPELINES = {
    "shorter": lambda: train_transforms([200], 400, horizontal_flip=0.5, photometric=False),
    "letterbox": lambda: train_transforms([224, 256], 400, horizontal_flip=0.5, photometric=False, resize="letterbox"),
    "crop": lambda: train_transforms([256], 400, horizontal_flip=0.5, photometric=False, resize="crop", scale_range=(0.6, 1.4)),
}


@pytest.mark.parametrize("resize", ["shorter", "letterbox", "crop"])
def test_boxes_stay_on_the_drawn_objects(resize: str) -> None:
    pipeline = SINGLE_IMAGE_PIPELINES[resize]()
    checked = 0
    for seed in range(8):
        torch.manual_seed(seed)
        sample = pipeline(scene())
        checked += assert_boxes_on_objects(sample)
    assert checked >= 8 * (4 if resize != "crop" else 2)


@pytest.mark.parametrize("resize", ["shorter", "letterbox", "crop"])
def test_mosaic_boxes_stay_on_the_drawn_objects(resize: str) -> None:
    pipeline = SINGLE_IMAGE_PIPELINES[resize]()
    # Four scenes with different colour assignments, so that each tile's objects are told apart.
    scenes = [scene((0, 1, 2, 3)), scene((4, 5, 0, 1)), scene((2, 3, 4, 5)), scene((1, 0, 3, 2))]
    checked = 0
    for seed in range(6):
        torch.manual_seed(seed)
        tiled = mosaic(scenes, 256)
        assert tuple(tiled["image"].shape) == (3, 256, 256)
        normalised = v2.functional.normalize(tiled["image"].float() / 255, list(IMAGENET_MEAN), list(IMAGENET_STD))
        checked += assert_boxes_on_objects({**tiled, "image": normalised})
        checked += assert_boxes_on_objects(pipeline(tiled))
    assert checked >= 6 * 8


def test_letterbox_and_crop_give_exact_squares_with_mean_padding() -> None:
    for seed in range(5):
        torch.manual_seed(seed)
        letterboxed = train_transforms([160, 192], 400, photometric=False, resize="letterbox")(scene())
        side = letterboxed["image"].shape[-1]
        assert side in (160, 192) and letterboxed["image"].shape[-2] == side
        # 180 x 280 -> longer side `side`; the rows below the image are padding of the mean colour.
        assert letterboxed["input_size"] == (int(180 * side / 280), side)
        assert denormalize(letterboxed["image"])[:, -1, :].float().sub(torch.tensor(MEAN_PIXEL)[:, None]).abs().max() <= 1
        cropped = train_transforms([128], 400, resize="crop", scale_range=(0.6, 1.4))(scene())
        assert tuple(cropped["image"].shape) == (3, 128, 128)
    assert tuple(eval_transforms(96, 400, resize="crop")(scene())["image"].shape) == (3, 96, 96)


def test_crop_drops_remnants_below_min_box_size_with_their_labels_and_crowd_flags() -> None:
    # 100 x 400 at scale 1 (letterbox scale 0.5 x jitter 2.0), cut to a 200 x 200 window at x `left` in [0, 200].
    image = torch.zeros(3, 100, 400, dtype=torch.uint8)
    reference = [100.0, 20.0, 300.0, 80.0]  # tells where the window fell
    starts = list(range(190, 400))  # 10 px boxes at every x: whatever the window, some are cut to 1 px
    boxes = torch.tensor([reference] + [[float(x), 30.0, x + 10.0, 70.0] for x in starts])
    labels = torch.tensor([0] + starts)
    iscrowd = labels % 3 == 0
    pipeline = train_transforms([200], 400, horizontal_flip=0.0, photometric=False, resize="crop", scale_range=(2.0, 2.0), min_box_size=2.0)
    for seed in range(6):
        torch.manual_seed(seed)
        sample = pipeline(make_sample(image, boxes, labels, iscrowd))
        out_boxes = sample["boxes"].as_subclass(torch.Tensor)
        assert tuple(sample["image"].shape) == (3, 200, 200) and sample["labels"][0] == 0
        x1, _, x2, _ = out_boxes[0].tolist()
        left = 100 - x1 if x1 > 0 else 300 - x2
        visible = {x: min(x + 10, left + 200) - max(x, left) for x in starts}
        assert sample["labels"][1:].tolist() == [x for x in starts if visible[x] >= 2]
        assert any(0 < width < 2 for width in visible.values())
        assert torch.equal(sample["iscrowd"], sample["labels"] % 3 == 0)
        assert ((out_boxes[:, 2:] - out_boxes[:, :2]) >= 2).all()


def test_mosaic_drops_tiny_remnants_in_step_with_labels() -> None:
    boxes = torch.tensor([[10.0, 10.0, 12.0, 12.0], [20.0, 20.0, 80.0, 80.0]])
    tiny = make_sample(torch.zeros(3, 100, 100, dtype=torch.uint8), boxes, torch.tensor([4, 5]), torch.tensor([True, False]))
    torch.manual_seed(0)
    # Each 100 px tile shrinks to 64 px: the 2 px box becomes 1.28 px and goes, the 60 px one stays.
    tiled = mosaic([tiny, tiny, tiny, empty_scene()], 128, min_box_size=2.0)
    assert tiled["labels"].tolist() == [5, 5, 5] and tiled["iscrowd"].tolist() == [False, False, False]


@pytest.mark.parametrize("resize", ["shorter", "letterbox", "crop"])
def test_images_without_boxes_pass_every_pipeline(resize: str) -> None:
    torch.manual_seed(0)
    sample = train_transforms([128], 200, resize=resize)(mosaic([empty_scene()] * 4, 128) if resize == "crop" else empty_scene())
    assert sample["boxes"].shape == (0, 4) and sample["labels"].shape == (0,) and sample["iscrowd"].shape == (0,)
    assert sample["image"].dtype == torch.float32
    assert eval_transforms(128, 200, resize=resize)(empty_scene())["boxes"].shape == (0, 4)


def test_flip_and_photometric_distortion_are_in_every_pipeline() -> None:
    for resize in ("shorter", "letterbox", "crop"):
        kinds = {type(step) for step in train_transforms([128], 200, resize=resize).transforms}
        assert {v2.RandomHorizontalFlip, v2.RandomPhotometricDistort} <= kinds


def test_letterbox_evaluation_maps_boxes_back_to_the_original_image() -> None:
    sample = scene()
    out = eval_transforms(256, 400, resize="letterbox")(sample)
    assert tuple(out["image"].shape) == (3, 256, 256) and out["input_size"] == (164, 256)
    back = scale_to_original(out["boxes"].as_subclass(torch.Tensor), out["input_size"], (180, 280))
    torch.testing.assert_close(back, sample["boxes"].as_subclass(torch.Tensor), atol=0.5, rtol=0)
    # A prediction reaching into the padding ends at the original image's edge.
    into_padding = scale_to_original(torch.tensor([[200.0, 150.0, 256.0, 250.0]]), out["input_size"], (180, 280))
    assert into_padding[0, 2:].tolist() == [280.0, 180.0]


def test_evaluation_dataset_reports_the_unpadded_input_size(tiny_dataset: Path) -> None:
    data = read_coco(tiny_dataset / "instances_val.json")
    dataset = DetectionDataset(data, eval_transforms(128, 160, resize="letterbox"), largest_input(128, 160, "letterbox"))
    for index in range(len(dataset)):
        image, target = dataset[index]
        record = data.records[index]
        assert tuple(image.shape) == (3, 128, 128) and max(target["input_size"]) == 128
        back = scale_to_original(target["boxes"], target["input_size"], target["original_size"])
        torch.testing.assert_close(back, torch.from_numpy(record.boxes), atol=0.5, rtol=0)


@pytest.mark.parametrize("mosaic_probability", [1.0, 0.5])
def test_samples_are_a_function_of_seed_epoch_and_index_with_mosaic(tiny_dataset: Path, mosaic_probability: float) -> None:
    data = read_coco(tiny_dataset / "instances_train.json")

    def make() -> DetectionDataset:
        pipeline = train_transforms([128], 160, resize="crop")
        decode_size = largest_input(128, 160, "crop", (0.6, 1.4))
        return DetectionDataset(data, pipeline, decode_size, seed=3, mosaic_probability=mosaic_probability, mosaic_size=128)

    first, second = make(), make()
    second.epoch = first.epoch = 2
    for index in (0, 5, 11):
        torch.manual_seed(index)  # the global stream must not matter
        image, target = first[index]
        again, again_target = second[index]
        assert torch.equal(image, again)
        assert torch.equal(target["boxes"], again_target["boxes"]) and torch.equal(target["labels"], again_target["labels"])
    first.epoch = 3
    assert not torch.equal(first[5][0], second[5][0])


def test_check_data_rejects_bad_values() -> None:
    for key, value, message in [
        ("resize", "letterbx", "did you mean 'letterbox'"),
        ("scale_range", [1.4, 0.6], "data.scale_range"),
        ("scale_range", [0.6], "data.scale_range"),
        ("scale_range", [0.0, 1.0], "data.scale_range"),
        ("mosaic", 1.5, "data.mosaic"),
        ("min_box_size", -1.0, "data.min_box_size"),
    ]:
        config = Config()
        setattr(config.data, key, value)
        with pytest.raises(ConfigError, match=message):
            check_data(config.data)


def test_training_refuses_a_bad_resize_before_it_starts(tiny_overrides: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.resize must be one of shorter, letterbox, crop"):
        anchorfree.train("fcos_cpu", tiny_overrides(tmp_path / "runs", data__resize="squash"), progress=False)
    assert not (tmp_path / "runs").exists()


def test_presets_resize_modes() -> None:
    for name in PRESETS:
        config = get_preset(name)
        check_data(config.data)
        # The papers crop; the demo presets letterbox the small synthetic images to one square size.
        expected = "crop" if name in ("centernet_r18", "cornernet_hg104") else "letterbox" if name.endswith("_demo") else "shorter"
        assert config.data.resize == expected and config.data.mosaic == 0.0
    assert get_preset("centernet_r18").data.scale_range == [0.6, 1.4] and get_preset("cornernet_hg104").data.train_sizes == [511]


@pytest.mark.filterwarnings("ignore:no detections")
def test_training_and_prediction_with_crop_mosaic_and_letterbox(
    tiny_dataset: Path, tiny_overrides: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    run = anchorfree.train("fcos_cpu", tiny_overrides(tmp_path, data__resize="crop", data__mosaic=0.5), progress=False)
    detector = anchorfree.load(run, device="cpu")
    detector.model.config.score_threshold = 0.0  # report everything, so that there are boxes to check
    image_path = sorted((tiny_dataset / "images" / "val").glob("*.jpg"))[0]
    height, width = anchorfree.data.images.load_image(image_path).shape[-2:]
    detections = detector.predict(image_path, score_threshold=0.0)
    assert len(detections["boxes"]) > 0
    assert detections["boxes"][:, 0::2].max() <= width and detections["boxes"][:, 1::2].max() <= height


@pytest.mark.parametrize("mosaic_probability", [0.0, 1.0])
def test_images_kept_in_memory_give_the_same_samples_and_stay_unmodified(tiny_dataset: Path, mosaic_probability: float) -> None:
    """data.cache_images (issue 12): the decoded copy is what the disk gives, and augmentation never writes into it."""
    data = read_coco(tiny_dataset / "instances_train.json")

    def make(cache_images: bool) -> DetectionDataset:
        pipeline = train_transforms([128], 160, photometric=True, resize="crop")
        decode_size = largest_input(128, 160, "crop", (0.6, 1.4))
        return DetectionDataset(data, pipeline, decode_size, seed=3, mosaic_probability=mosaic_probability, mosaic_size=128, cache_images=cache_images)

    cached, from_disk = make(True), make(False)
    assert sorted(cached.decoded) == list(range(len(data.records))) and not from_disk.decoded
    kept = {index: image.clone() for index, image in cached.decoded.items()}
    for epoch in (0, 1):
        cached.epoch = from_disk.epoch = epoch
        for index in range(len(cached)):
            assert torch.equal(cached[index][0], from_disk[index][0])
    assert all(torch.equal(cached.decoded[index], image) for index, image in kept.items())


def test_images_that_would_not_fit_in_memory_are_read_from_disk(tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anchorfree.data.dataset as dataset_module

    data = read_coco(tiny_dataset / "instances_train.json")
    monkeypatch.setattr(dataset_module, "_free_memory_bytes", lambda: 1000)
    with pytest.warns(UserWarning, match=r"data.cache_images: the \d+ decoded images of .*instances_train.json need .* read from disk instead"):
        dataset = DetectionDataset(data, eval_transforms(128, 160, resize="letterbox"), largest_input(128, 160, "letterbox"), cache_images=True)
    assert not dataset.decoded
    assert tuple(dataset[0][0].shape) == (3, 128, 128)


def test_training_keeps_the_images_in_memory_when_asked(
    tiny_overrides: Callable[..., dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import anchorfree.data.dataset as dataset_module

    decoded: list[Path] = []

    def counting_load_image(path: Path, reduce_to: tuple[int, int] | None = None) -> torch.Tensor:
        decoded.append(Path(path))
        return load_image(path, reduce_to)

    monkeypatch.setattr(dataset_module, "load_image", counting_load_image)
    overrides = tiny_overrides(tmp_path, data__cache_images=True, data__val="", train__epochs=2)
    run = anchorfree.train("fcos_cpu", overrides, progress=False)
    assert (run / "weights" / "last.safetensors").is_file()
    assert "cache_images: true" in (run / "config.yaml").read_text(encoding="utf-8")
    # Two epochs, and every training image decoded exactly once.
    training_images = [record.path for record in read_coco(Path(overrides["data.train"])).records]
    assert sorted(decoded) == sorted(map(Path, training_images))
