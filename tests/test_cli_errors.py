"""The command line's error contract: one `error:` line naming the file and the value, exit 2, no traceback."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

from anchorfree import api, cli
from anchorfree.checkpoint import save_checkpoint
from anchorfree.cli import describe_error, main
from anchorfree.config import apply_overrides, get_preset
from anchorfree.models import build_model

pytestmark = pytest.mark.filterwarnings("ignore:no detections on the evaluated images")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path, tiny_overrides: Callable[..., dict[str, Any]]) -> Path:
    """An untrained tiny FCOS checkpoint of the tiny dataset's classes (loadable, no training)."""
    folder = tmp_path_factory.mktemp("cli_errors_weights")
    config = apply_overrides(get_preset("fcos_cpu"), tiny_overrides(folder))
    categories = json.loads((tiny_dataset / "instances_val.json").read_text())["categories"]
    model = build_model(config.model, len(categories))
    metadata = {"config": config.to_dict(), "class_names": [category["name"] for category in categories], "category_ids": [category["id"] for category in categories]}
    return save_checkpoint(folder / "best.safetensors", model, metadata)


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photos" / "x.jpg"
    path.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(path)
    return path


def assert_one_error_line(code: int, stderr: str, *expected: str) -> str:
    """Exit 2, no traceback, exactly one line starting "error:", which holds every `expected` text."""
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("make_out", "reason"),
    [
        (lambda root: root / "a_file" / "out", "Not a directory (errno ENOTDIR)"),
        (lambda root: root / ("n" * 300), "File name too long (errno ENAMETOOLONG)"),
    ],
    ids=["a-file-in-the-way", "name-too-long"],
)
def test_an_output_folder_the_system_refuses_is_one_error_line_naming_it(
    weights: Path, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], make_out: Callable[[Path], Path], reason: str
) -> None:
    """Issue 11.9; RELIABILITY E2: a real OSError from the file system (these two hold for root too, unlike a
    read-only folder) names the path and the system's reason, exit 2, and the photo is untouched."""
    (tmp_path / "a_file").write_text("not a folder")
    before = photo.read_bytes()
    out = make_out(tmp_path)
    code = main(["predict", str(weights), str(photo), "--out", str(out), "--device", "cpu"])
    line = assert_one_error_line(code, capsys.readouterr().err, str(out), reason)
    assert ".tmp" not in line  # the file it meant to write, not the temporary name of the atomic write
    assert photo.read_bytes() == before


def test_a_missing_weights_file_is_one_error_line(photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11.9; RELIABILITY E3: a checkpoint that is not there is named."""
    missing = tmp_path / "nothing.safetensors"
    code = main(["predict", str(missing), str(photo), "--out", str(tmp_path / "out")])
    assert_one_error_line(code, capsys.readouterr().err, str(missing), "not found")


def test_a_corrupt_checkpoint_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11.9; RELIABILITY E3: garbage bytes named .safetensors are a named, sized error."""
    corrupt = tmp_path / "best.safetensors"
    corrupt.write_bytes(b"\x00garbage" * 8)
    code = main(["val", str(corrupt), "--device", "cpu"])
    assert_one_error_line(code, capsys.readouterr().err, str(corrupt), "corrupt")


def test_a_bad_override_value_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11.9: a value of the wrong type names the key and the value; nothing is started."""
    code = main(["train", "train.epochs=many", f"train.project={tmp_path}"])
    assert_one_error_line(code, capsys.readouterr().err, "train.epochs", "'many'")
    assert list(tmp_path.iterdir()) == []


def test_a_bad_dataset_path_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11.9; RELIABILITY B1: a dataset that is not there is named."""
    missing = tmp_path / "no_dataset"
    code = main(["data", "check", str(missing), "--json", str(tmp_path / "report.json")])
    assert_one_error_line(code, capsys.readouterr().err, str(missing))


def test_predict_into_its_sources_is_one_error_line_and_writes_nothing(weights: Path, photo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11.1 and 11.9: `predict W photos/ --out photos/` exits 2 naming the photo; the photo is untouched."""
    before = photo.read_bytes()
    code = main(["predict", str(weights), str(photo.parent), "--out", str(photo.parent), "--device", "cpu"])
    assert_one_error_line(code, capsys.readouterr().err, f"refusing to write {photo}", "it is an input file")
    assert photo.read_bytes() == before and [path.name for path in photo.parent.iterdir()] == ["x.jpg"]


def test_data_check_refuses_a_report_onto_its_annotation_file(tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11.1: `data check val.json --json val.json` would replace the annotations with the report."""
    annotation_file = tmp_path / "instances_val.json"
    annotation_file.write_bytes((tiny_dataset / "instances_val.json").read_bytes())
    (tmp_path / "images").symlink_to(tiny_dataset / "images")
    before = annotation_file.read_bytes()
    code = main(["data", "check", str(annotation_file), "--json", str(annotation_file)])
    assert_one_error_line(code, capsys.readouterr().err, f"data check --json: refusing to write {annotation_file}")
    assert annotation_file.read_bytes() == before


def test_val_refuses_save_json_onto_its_checkpoint_mirror(weights: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11.1 and 11.9: `val --save-json` onto the checkpoint's own metadata mirror is refused, exit 2."""
    mirror = weights.with_suffix(".json")
    before = mirror.read_bytes()
    data = str(tiny_dataset / "instances_val.json")
    code = main(["val", str(weights), "--data", data, "--device", "cpu", "--save-json", str(mirror)])
    assert_one_error_line(code, capsys.readouterr().err, f"val: refusing to write {mirror}")
    assert mirror.read_bytes() == before


def test_debug_shows_the_traceback_instead(tmp_path: Path) -> None:
    """Issue 11.9: `anchorfree --debug ...` re-raises the error for a full traceback."""
    with pytest.raises(FileNotFoundError, match="no such image or folder"):
        main(["--debug", "predict", str(tmp_path / "w.safetensors"), str(tmp_path / "missing.jpg")])


def test_ctrl_c_outside_training_exits_130(photo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11.9; RELIABILITY F6: Ctrl-C still exits 130, without a traceback."""

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "predict", interrupted)
    assert main(["predict", "w.safetensors", str(photo)]) == 130
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "error, expected",
    [
        (OSError(errno.ENOSPC, "No space left on device", "runs/x/weights/.last.safetensors.k3j9.tmp"), "runs/x/weights/last.safetensors: No space left on device (errno ENOSPC): the disk is full"),
        (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/predictions.json"), "/mnt/ro/predictions.json: Read-only file system (errno EROFS): the file system is read-only"),
        (OSError(errno.ENAMETOOLONG, "File name too long", "a" * 300), f"{'a' * 300}: File name too long (errno ENAMETOOLONG): the file name is too long"),
        (OSError(errno.EFBIG, "File too large", "big.bin"), "big.bin: File too large (errno EFBIG): the file is too large"),
    ],
)
def test_os_errors_name_the_path_the_reason_and_a_fix(error: OSError, expected: str) -> None:
    """Issue 11.9; RELIABILITY E2: disk full, read-only, name too long, file too large: path + OS reason + hint."""
    assert describe_error(error).startswith(expected)


def test_an_os_error_from_a_command_is_one_error_line(monkeypatch: pytest.MonkeyPatch, photo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11.9: an OSError raised anywhere under a command (here a full disk) ends in the one error line."""

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "runs/predict/.x.jpg.abcd.tmp")

    monkeypatch.setattr(api, "predict", disk_full)
    code = main(["predict", "w.safetensors", str(photo)])
    assert_one_error_line(code, capsys.readouterr().err, "runs/predict/x.jpg: No space left on device", cli.OS_ERROR_HINTS[errno.ENOSPC])
