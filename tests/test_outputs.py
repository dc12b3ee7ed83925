"""Outputs never replace inputs nor each other (predict, data show, targets, val), and odd inference inputs."""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

import anchorfree
from anchorfree import api
from anchorfree.checkpoint import save_checkpoint
from anchorfree.config import apply_overrides, get_preset
from anchorfree.data.images import ImageLoadError
from anchorfree.data.report import show_dataset
from anchorfree.models import build_model
from anchorfree.outputs import OutputOverwritesInput, refuse_overwriting_inputs, unique_output_names

pytestmark = pytest.mark.filterwarnings("ignore:no detections on the evaluated images")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path, tiny_overrides: Callable[..., dict[str, Any]]) -> Path:
    """An untrained tiny FCOS checkpoint of the tiny dataset's classes (no training: these tests only need a
    loadable detector that outputs boxes)."""
    folder = tmp_path_factory.mktemp("outputs_weights")
    config = apply_overrides(get_preset("fcos_cpu"), {**tiny_overrides(folder), "model.fcos.score_threshold": 0.0})
    categories = json.loads((tiny_dataset / "instances_val.json").read_text())["categories"]
    torch.manual_seed(0)
    model = build_model(config.model, len(categories))
    metadata = {"config": config.to_dict(), "class_names": [category["name"] for category in categories], "category_ids": [category["id"] for category in categories]}
    return save_checkpoint(folder / "best.safetensors", model, metadata)


def write_photo(path: Path, size: tuple[int, int] = (48, 32), seed: int = 0, **save_options: Any) -> Path:
    """A small random RGB photo at `path`, in the format its suffix names."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save_options)
    return path


def never_listed() -> Iterator[Path]:
    raise AssertionError("inputs were listed although no output exists")
    yield Path()  # pragma: no cover


# ------------------------------------------------------------------------------------------ the checks themselves


def test_an_output_that_is_an_input_is_refused_naming_both(tmp_path: Path) -> None:
    """Issue 11.1: an output on an input path is refused with a named error before anything is written."""
    photo = write_photo(tmp_path / "x.jpg")
    with pytest.raises(OutputOverwritesInput, match=rf"predict --out: refusing to write {photo}: it is an input file \({photo}\)"):
        refuse_overwriting_inputs([tmp_path / "predictions.json", photo], [photo], "predict --out")


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_an_output_that_is_an_input_through_a_link_is_refused(link: str, tmp_path: Path) -> None:
    """Issue 11.1: the same file reached through a symbolic or hard link (os.path.samefile's test) is an input too."""
    photo = write_photo(tmp_path / "photos" / "x.jpg")
    alias = tmp_path / "out" / "x.jpg"
    alias.parent.mkdir()
    try:
        os.symlink(photo, alias) if link == "symlink" else os.link(photo, alias)
    except OSError as error:
        pytest.skip(f"this file system cannot make a {link}: {error}")
    assert os.path.samefile(alias, photo)
    with pytest.raises(OutputOverwritesInput, match=rf"{alias} \(the same file as the input {photo}, through a link\)"):
        refuse_overwriting_inputs([alias], [photo], "predict --out")


def test_outputs_that_do_not_exist_pass_without_listing_the_inputs(tmp_path: Path) -> None:
    """Issue 11.1: a new file cannot replace an input, so a large dataset is not listed for it."""
    write_photo(tmp_path / "x.jpg")
    refuse_overwriting_inputs([tmp_path / "x.png", tmp_path / "predictions.json"], never_listed(), "predict --out")


def test_unique_output_names_keep_the_suffix_and_count_collisions() -> None:
    """Issue 11.1: x.jpg and x.png stay apart; the same name from two folders (any case) gets a counter."""
    sources = [Path("a/x.jpg"), Path("a/x.png"), Path("b/x.jpg"), Path("c/X.JPG"), Path("a/predictions.json")]
    outputs, renamed = unique_output_names(sources, Path("out"), lambda source: source.suffix, reserved=["predictions.json"])
    assert [output.name for output in outputs] == ["x.jpg", "x.png", "x_2.jpg", "X_3.JPG", "predictions_2.json"]
    assert renamed == [(Path("b/x.jpg"), Path("out/x_2.jpg")), (Path("c/X.JPG"), Path("out/X_3.JPG")), (Path("a/predictions.json"), Path("out/predictions_2.json"))]


# ------------------------------------------------------------------------------------------------------ predict


def test_predict_into_the_photos_folder_is_refused_and_leaves_every_photo_untouched(weights: Path, tmp_path: Path) -> None:
    """Issue 11.1: `predict W photos/ --out photos/` used to replace the photos with drawn copies."""
    photos = [write_photo(tmp_path / "photos" / name, seed=index) for index, name in enumerate(["a.jpg", "b.png"])]
    before = {photo: photo.read_bytes() for photo in photos}
    with pytest.raises(OutputOverwritesInput, match=r"refusing to write .*photos/a\.jpg: it is an input file"):
        api.predict(weights, [tmp_path / "photos"], tmp_path / "photos", device="cpu")
    assert {photo: photo.read_bytes() for photo in photos} == before
    assert sorted(path.name for path in (tmp_path / "photos").iterdir()) == ["a.jpg", "b.png"]  # nothing was written


def test_predict_keeps_each_suffix_and_format_and_counts_same_names(weights: Path, tmp_path: Path) -> None:
    """Issue 11.1: x.jpg and x.png of one folder both survive (each in its own format); a same-named source from
    another folder gets x_2.jpg, said in one warning; predictions.json names each source's path."""
    sources = [write_photo(tmp_path / "a" / "x.jpg"), write_photo(tmp_path / "a" / "x.png", seed=1), write_photo(tmp_path / "b" / "x.jpg", seed=2)]
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match=r"1 drawn image\(s\) renamed with a counter.*b/x\.jpg -> x_2\.jpg"):
        api.predict(weights, [tmp_path / "a", sources[2]], out, score_threshold=0.0, device="cpu")
    assert sorted(path.name for path in out.iterdir()) == ["predictions.json", "x.jpg", "x.png", "x_2.jpg"]
    for name, image_format in [("x.jpg", "JPEG"), ("x.png", "PNG"), ("x_2.jpg", "JPEG")]:
        with Image.open(out / name) as drawn:
            assert drawn.format == image_format and drawn.size == (48, 32)
    predictions = json.loads((out / "predictions.json").read_text())
    assert {record["file_name"] for record in predictions} == {str(source) for source in sources}


def test_predict_may_write_beside_its_sources_when_nothing_is_replaced(weights: Path, tmp_path: Path) -> None:
    """Issue 11.1: the sources' own folder is a valid --out when no source would be overwritten."""
    photo = write_photo(tmp_path / "x.jpg")
    before = photo.read_bytes()
    api.predict(weights, [photo], tmp_path, score_threshold=0.0, device="cpu", save_images=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["predictions.json", "x.jpg"] and photo.read_bytes() == before


def test_predict_skips_unreadable_images_with_a_warning_and_fails_when_none_is_readable(weights: Path, tmp_path: Path) -> None:
    """Issue 11.1; RELIABILITY B2/B3: each unreadable source is skipped with a warning naming it; none readable is
    an ImageLoadError naming the first ones."""
    good = write_photo(tmp_path / "photos" / "good.jpg")
    broken = tmp_path / "photos" / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    with pytest.warns(UserWarning) as caught:
        api.predict(weights, [tmp_path / "photos"], tmp_path / "out", score_threshold=0.0, device="cpu")
    messages = [str(warning.message) for warning in caught]
    assert any(message.startswith(f"skipped {broken}: cannot decode image") for message in messages)
    assert any("1 of 2 image(s) could not be read" in message for message in messages)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["good.jpg", "predictions.json"]
    assert {record["file_name"] for record in json.loads((tmp_path / "out" / "predictions.json").read_text())} <= {str(good)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ImageLoadError, match=rf"none of the 1 image\(s\) could be read: {broken}: cannot decode image"):
            api.predict(weights, [broken], tmp_path / "none", device="cpu")
    assert not (tmp_path / "none").exists()


# ------------------------------------------------------------------------------------------ data show, targets, val


def test_data_show_refuses_to_draw_over_an_image_of_the_dataset(tiny_dataset: Path) -> None:
    """Issue 11.1: `data show --out` onto one of the split's images is refused, the image untouched."""
    image = tiny_dataset / "images" / "val" / "000000.jpg"
    before = image.read_bytes()
    with pytest.raises(OutputOverwritesInput, match=rf"data show --out: refusing to write {image}"):
        show_dataset(tiny_dataset / "instances_val.json", image, count=2)
    assert image.read_bytes() == before


def test_targets_refuse_to_replace_a_dataset_file(tiny_dataset: Path, tiny_overrides: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    """Issue 11.1: `targets --out` may not replace a file of the split (here an image named like a target picture)."""
    shutil.copytree(tiny_dataset / "images" / "val", tmp_path / "images" / "val")
    annotations = json.loads((tiny_dataset / "instances_val.json").read_text())
    stem = Path(annotations["images"][0]["file_name"]).stem
    victim = write_photo(tmp_path / "images" / "val" / f"{stem}_fcos.png")
    second = annotations["images"][1]
    second.update(file_name=str(Path(annotations["images"][0]["file_name"]).with_name(victim.name)), width=48, height=32)
    annotations["annotations"] = [annotation for annotation in annotations["annotations"] if annotation["image_id"] != second["id"]]
    crafted = tmp_path / "crafted.json"
    crafted.write_text(json.dumps(annotations))
    before = victim.read_bytes()
    with pytest.raises(OutputOverwritesInput, match=rf"targets --out: refusing to write {victim}: it is an input file"):
        api.targets(crafted, "fcos_cpu", [0, 1], victim.parent, split="val", overrides=tiny_overrides(tmp_path), device="cpu")
    assert victim.read_bytes() == before
    assert sorted(path.name for path in victim.parent.glob("*.png")) == [victim.name]  # nothing was drawn


def test_val_refuses_save_json_onto_its_annotation_file(weights: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    """Issue 11.1: `val --save-json` onto the split's annotation file is refused before evaluating."""
    annotation_file = tmp_path / "instances_val.json"
    annotation_file.write_bytes((tiny_dataset / "instances_val.json").read_bytes())
    (tmp_path / "images").symlink_to(tiny_dataset / "images")
    before = annotation_file.read_bytes()
    with pytest.raises(OutputOverwritesInput, match=rf"val: refusing to write {annotation_file}"):
        api.val(weights, annotation_file, "cpu", progress=False, save_json=annotation_file)
    assert annotation_file.read_bytes() == before


# ---------------------------------------------------------------------------------------- odd inference inputs


def test_a_16_bit_pil_image_predicts_as_its_path_does(weights: Path, tmp_path: Path) -> None:
    """Issue 11.10; RELIABILITY B7: a mode I;16 PIL image is scaled by 65535 (it used to saturate), like its file."""
    gradient = (np.linspace(0, 65535, 64 * 48).reshape(48, 64) * np.random.default_rng(0).random((48, 64))).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(gradient).save(path)
    detector = anchorfree.load(weights, device="cpu")
    with Image.open(path) as image:
        assert image.mode.startswith("I")
        from_pil = detector.predict(image, score_threshold=0.0)
    from_path = detector.predict(path, score_threshold=0.0)
    assert len(from_path["boxes"]) > 0
    assert torch.equal(from_pil["boxes"], from_path["boxes"]) and torch.equal(from_pil["scores"], from_path["scores"])


def test_an_exif_rotated_pil_image_predicts_in_the_rotated_frame_of_its_path(weights: Path, tmp_path: Path) -> None:
    """Issue 11.10; RELIABILITY B4: EXIF orientation 6 of a PIL input is applied, as for a path."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = write_photo(tmp_path / "rotated.jpg", size=(64, 40), exif=exif.tobytes())
    detector = anchorfree.load(weights, device="cpu")
    with Image.open(path) as image:
        from_pil = detector.predict(image, score_threshold=0.0)
    from_path = detector.predict(path, score_threshold=0.0)
    assert len(from_path["boxes"]) > 0
    assert torch.equal(from_pil["boxes"], from_path["boxes"])
    # The displayed frame is 40 wide and 64 high.
    assert from_pil["boxes"][:, 0::2].max() <= 40 + 1e-3 and from_pil["boxes"][:, 1::2].max() <= 64 + 1e-3
    assert from_pil["boxes"][:, 1::2].max() > 40  # some box lies where only the rotated frame has pixels


@pytest.mark.parametrize("source", [torch.zeros((3, 0, 0), dtype=torch.uint8), torch.zeros((3, 5, 40), dtype=torch.uint8), Image.new("RGB", (4, 30))])
def test_an_empty_or_tiny_image_is_a_value_error_naming_its_shape(source: Any, weights: Path) -> None:
    """Issue 11.10; RELIABILITY B8: (3, 0, 0) raised ZeroDivisionError; it is a ValueError naming the shape."""
    detector = anchorfree.load(weights, device="cpu")
    shape = f"shape {tuple(source.shape)}" if isinstance(source, torch.Tensor) else f"size {source.size}"
    with pytest.raises(ValueError, match=rf"{re.escape(shape)} is too small to detect in: each side must be at least 10 px"):
        detector.predict(source)
