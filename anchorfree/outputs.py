"""Output paths that never destroy the user's files: every command checks what it will write against what it reads.

    outputs, renamed = unique_output_names(sources, out_folder, suffix_of=lambda source: source.suffix)
    refuse_overwriting_inputs([out_folder / "predictions.json", *outputs], sources, "predict")

An output is refused when it is one of the inputs: the same path, or the same file reached through a symbolic or
hard link (`os.stat`'s device and inode, as `os.path.samefile` compares them). Writing into the folder the inputs
are in is fine as long as no input is overwritten. The check costs nothing in the common case: an output that does
not exist yet cannot be an existing input, so inputs are only listed (and stat-ed) when some output already exists.

Outputs named after inputs (drawn images, target pictures) must not collide with each other either: two sources
`a/x.jpg` and `b/x.jpg` get `x.jpg` and `x_2.jpg`; the names are compared case-insensitively, as a case-insensitive
file system (macOS, Windows) would.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from anchorfree.data.images import IMAGE_SUFFIXES
from anchorfree.data.records import DetectionData

# Files a VOC or YOLO folder is read from besides its images: XML annotations, YOLO labels, dataset YAMLs.
LABEL_SUFFIXES = (".xml", ".txt", ".yaml", ".yml")


class OutputOverwritesInput(ValueError):
    """An output path that is one of the command's input files; nothing has been written."""


def refuse_overwriting_inputs(outputs: Iterable[str | Path], inputs: Iterable[str | Path], what: str) -> None:
    """Raise OutputOverwritesInput if any of `outputs` is, or would overwrite, a file among `inputs`.

    Args:
        outputs: every file the command will write (folders to be created are not outputs).
        inputs: every file the command reads; consumed at most once, and only when some output already exists,
            so it may be a lazy generator over a large dataset.
        what: the command and option, for the message (e.g. "predict --out").

    Raises:
        OutputOverwritesInput naming the output, the input it would overwrite, and how to avoid it.
    """
    # Existing outputs by identity: (device, inode) is what os.path.samefile compares.
    existing: dict[tuple[int, int], Path] = {}
    by_path: dict[str, Path] = {}
    for output in map(Path, outputs):
        try:
            status = output.stat()
        except (FileNotFoundError, NotADirectoryError):
            continue  # not there yet: it cannot be an existing input
        existing[(status.st_dev, status.st_ino)] = output
        by_path[os.path.normcase(os.path.abspath(output))] = output
    if not existing:
        return
    for source in map(Path, inputs):
        output = by_path.get(os.path.normcase(os.path.abspath(source)))
        if output is None:
            try:
                status = source.stat()
            except (FileNotFoundError, NotADirectoryError):
                continue
            output = existing.get((status.st_dev, status.st_ino))
        if output is not None:
            link = "" if os.path.abspath(output) == os.path.abspath(source) else f" (the same file as the input {source}, through a link)"
            raise OutputOverwritesInput(
                f"{what}: refusing to write {output}{link}: it is an input file ({source}) and would be replaced; "
                "nothing was written. Choose an output path outside the inputs (e.g. a folder under runs/)"
            )


def unique_output_names(
    sources: Sequence[str | Path], out_folder: str | Path, suffix_of: Callable[[Path], str], reserved: Iterable[str] = ()
) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """One output path per source in `out_folder`: the source's stem plus `suffix_of(source)`, with a counter
    (`x_2.jpg`, `x_3.jpg`, ...) where two sources (or a source and a `reserved` name) would get the same name.

    Returns:
        (the output paths, in the order of `sources`; the (source, output) pairs that were given a counter).
    """
    out_folder = Path(out_folder)
    taken = {name.casefold() for name in reserved}
    outputs: list[Path] = []
    renamed: list[tuple[Path, Path]] = []
    for source in map(Path, sources):
        suffix = suffix_of(source)
        name, counter = f"{source.stem}{suffix}", 1
        while name.casefold() in taken:
            counter += 1
            name = f"{source.stem}_{counter}{suffix}"
        taken.add(name.casefold())
        outputs.append(out_folder / name)
        if counter > 1:
            renamed.append((source, out_folder / name))
    return outputs, renamed


def renamed_note(renamed: Sequence[tuple[Path, Path]], what: str, shown: int = 3) -> str:
    """One line saying which outputs got a counter because their names collided (the first `shown` of them)."""
    examples = ", ".join(f"{source} -> {output.name}" for source, output in renamed[:shown])
    more = f" and {len(renamed) - shown} more" if len(renamed) > shown else ""
    return f"{len(renamed)} {what} renamed with a counter, as another source has the same name: {examples}{more}"


def dataset_inputs(path: str | Path, data_format: str = "") -> Iterator[Path]:
    """The files a dataset path is read from, found without reading it: the path itself, each split's annotation
    file, and the images, labels and XML files under each split's folder (a COCO file's folder for its images).

    A generator: it lists folders only when iterated (see `refuse_overwriting_inputs`).
    """
    from anchorfree.data.formats import dataset_splits  # formats imports the readers; only needed here

    path = Path(path)
    if path.is_file():
        yield path
    is_yaml = path.suffix.lower() in (".yaml", ".yml")
    for split_path, _ in dataset_splits(path, "yaml" if is_yaml else data_format).values():
        split_path = Path(split_path)
        if split_path.is_file():
            yield split_path
            yield from _files_under(split_path.parent, IMAGE_SUFFIXES)
        elif split_path.is_dir():
            yield from _files_under(split_path, (*IMAGE_SUFFIXES, *LABEL_SUFFIXES))


def data_inputs(data: DetectionData) -> Iterator[Path]:
    """The files a read split came from: its annotation file (or the labels and XML files of its folder) and every
    image of its records. A generator, like `dataset_inputs`."""
    source = Path(data.source)
    if source.is_file():
        yield source
    elif source.is_dir():
        yield from _files_under(source, LABEL_SUFFIXES)
    for record in data.records:
        yield record.path


def _files_under(folder: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    for root, _, names in os.walk(folder):
        for name in names:
            if os.path.splitext(name)[1].lower() in suffixes:
                yield Path(root) / name
