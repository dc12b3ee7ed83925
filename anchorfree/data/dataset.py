"""A torch Dataset over `DetectionData`, its epoch order (`EpochSampler`), and the loader and collate function
for detection batches.

The order of epoch e is a permutation seeded by (seed, e) and the augmentation of sample i in it a stream seeded
by (seed, e, i): neither depends on the number of workers, so a resumed epoch sees the batches an uninterrupted
one would."""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.ops import clip_boxes_to_image

from anchorfree.data.images import load_image
from anchorfree.data.records import DetectionData
from anchorfree.data.transforms import make_sample, mosaic

# Decoded images are kept in memory only while they take at most this share of the memory free at the start.
MAX_CACHE_SHARE = 0.3


class DetectionDataset(Dataset):
    """Samples as (image, target): image (3, H, W) float, normalised, at network resolution; target:

    - "boxes" (M, 4) float32 x1, y1, x2, y2 in network-input pixels; "labels" (M,) int64; "iscrowd" (M,) bool
    - "image_id" int; "original_size" (height, width) of the EXIF-oriented file; "input_size" (height, width) of
      the part of the image that holds the resized picture (a letterbox pads at the bottom and right; the
      pipeline notes the un-padded size), else the image's own size

    Network-input boxes map back to the original image by the ratio original_size / input_size.

    Args:
        data: records from a reader.
        transforms: a v2 pipeline from `anchorfree.data.transforms`.
        largest_input: (shorter side, longer-side cap) the pipeline resizes to at most; large JPEGs are decoded
            directly at a reduced scale that is still at least that big (much faster, same result after resizing).
        seed: makes augmentation a function of (seed, epoch, index); set `dataset.epoch` before each epoch.
        mosaic_probability: probability that a sample is a 2x2 mosaic of itself and three other images drawn from the
            same random stream (training only; see `anchorfree.data.transforms.mosaic`), before `transforms`.
        mosaic_size: the mosaic canvas side in pixels.
        min_box_size: mosaic boxes cut to a side below this many pixels are dropped.
        cache_images: decode every image once, up front, and keep it in memory (`cache_decoded_images`);
            augmentation then starts from the kept copy, which it never modifies.
    """

    def __init__(
        self,
        data: DetectionData,
        transforms: Callable[[dict], dict],
        largest_input: tuple[int, int] | None = None,
        seed: int | None = None,
        mosaic_probability: float = 0.0,
        mosaic_size: int = 512,
        min_box_size: float = 2.0,
        cache_images: bool = False,
    ) -> None:
        self.data = data
        self.transforms = transforms
        self.largest_input = largest_input
        self.mosaic_probability = mosaic_probability
        self.mosaic_size = mosaic_size
        self.min_box_size = min_box_size
        # With a seed, sample `index` of epoch `epoch` is augmented with its own RNG stream: augmentation does not
        # depend on the number of workers or on which worker loads it, and a resumed epoch repeats exactly.
        self.seed = seed
        self.epoch = 0
        self.decoded: dict[int, torch.Tensor] = {}
        if cache_images:
            self.cache_decoded_images()

    def cache_decoded_images(self) -> None:
        """Decode every image into memory, on up to four threads; warn and leave them on disk when they would not fit.

        The size is estimated from the recorded image sizes before anything is decoded, and compared with the
        memory free now: above MAX_CACHE_SHARE of it the images stay on disk and are decoded at every use. The
        images are decoded in the main process, before any loader worker starts, so workers share them.
        """
        # The recorded sizes bound the decoded ones (a JPEG decoded at a reduced scale is smaller).
        needed = sum(3 * record.width * record.height for record in self.data.records)
        free = _free_memory_bytes()
        if free is not None and needed > MAX_CACHE_SHARE * free:
            warnings.warn(
                f"data.cache_images: the {len(self)} decoded images of {self.data.source} need ~{needed / 2**30:.1f} GiB, more than "
                f"{MAX_CACHE_SHARE:.0%} of the {free / 2**30:.1f} GiB free; they are read from disk instead",
                stacklevel=2,
            )
            return
        with ThreadPoolExecutor(min(os.cpu_count() or 1, 4)) as pool:  # Pillow releases the GIL while it decodes
            self.decoded = dict(enumerate(pool.map(self._decode, range(len(self)))))

    def __len__(self) -> int:
        return len(self.data.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        record = self.data.records[index]
        if self.seed is None:
            sample = self._augment(index)
        else:
            with torch.random.fork_rng(devices=[]):
                # The CPU generator only: torch.manual_seed would also queue a CUDA seeding with its stack trace on
                # every sample (a quarter of the cached pipeline's time), and augmentation draws on the CPU alone.
                torch.default_generator.manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index)
                sample = self._augment(index)
        image = sample["image"]
        target = {
            "boxes": sample["boxes"].as_subclass(torch.Tensor).float(),
            "labels": sample["labels"],
            "iscrowd": sample["iscrowd"],
            "image_id": record.image_id,
            "original_size": (record.height, record.width),
            "input_size": sample.get("input_size", (int(image.shape[-2]), int(image.shape[-1]))),
        }
        return image.as_subclass(torch.Tensor), target

    def _augment(self, index: int) -> dict:
        """Sample `index` (or its mosaic) through the pipeline; all randomness from torch's global generator."""
        sample = self._load(index)
        # Draw nothing when mosaic is off, so that the random stream of the plain pipeline stays as it was.
        if self.mosaic_probability > 0 and float(torch.rand(())) < self.mosaic_probability:
            others = torch.randint(len(self.data.records), (3,)).tolist()
            sample = mosaic([sample, *(self._load(other) for other in others)], self.mosaic_size, self.min_box_size)
        return self.transforms(sample)

    def _reduce_to(self, index: int) -> tuple[int, int] | None:
        """The (width, height) a large JPEG may be decoded down to, or None (see `largest_input`)."""
        record = self.data.records[index]
        if self.largest_input is None:
            return None
        size, max_size = self.largest_input
        scale = min(size / min(record.width, record.height), max_size / max(record.width, record.height))
        return (math.ceil(record.width * scale), math.ceil(record.height * scale)) if scale < 1 else None

    def _decode(self, index: int) -> torch.Tensor:
        return load_image(self.data.records[index].path, self._reduce_to(index))

    def _load(self, index: int) -> dict:
        """Record `index` decoded as an un-augmented sample (`make_sample`), boxes in the decoded image's pixels."""
        record = self.data.records[index]
        reduce_to = self._reduce_to(index)
        image = self.decoded[index] if index in self.decoded else self._decode(index)
        height, width = image.shape[-2:]
        if reduce_to is None and (width, height) != (record.width, record.height):
            raise ValueError(
                f"{record.path}: decoded size {width}x{height} differs from the recorded {record.width}x{record.height} "
                f"(image_id={record.image_id} in {self.data.source})"
            )
        boxes = torch.from_numpy(record.boxes).clone()
        boxes[:, 0::2] *= width / record.width
        boxes[:, 1::2] *= height / record.height
        return make_sample(image, boxes, torch.from_numpy(record.labels).clone(), torch.from_numpy(record.iscrowd).clone())


def _free_memory_bytes() -> int | None:
    """Memory available to a new allocation now (Linux: MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class EpochSampler(Sampler[int]):
    """A permutation of the dataset fixed by (seed, epoch), optionally starting part-way (for resuming)."""

    def __init__(self, size: int, seed: int, epoch: int, start: int = 0) -> None:
        self.size, self.seed, self.epoch, self.start = size, seed, epoch, start

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        return iter(order[self.start :])

    def __len__(self) -> int:
        return self.size - self.start


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Keep images as a list (the model pads them) and targets as a list of dicts."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def make_loader(dataset: DetectionDataset, batch_size: int, workers: int, sampler: Sampler[int] | None = None) -> DataLoader:
    """Batches of `dataset` as (images, targets) lists (`collate`), in `sampler`'s order (default: the dataset's),
    the last batch possibly smaller; `workers` loader processes (0: in this process)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        drop_last=False,
        persistent_workers=False,
    )


def scale_to_original(boxes: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]) -> torch.Tensor:
    """Map (D, 4) boxes from network-input pixels back to the original image's pixels, clipped to that image.

    `input_size` is the (height, width) of the resized image without padding (the target's "input_size"):
    a letterbox keeps the image at the top-left, so boxes reaching into its padding are clipped here.
    """
    scale_y = original_size[0] / input_size[0]
    scale_x = original_size[1] / input_size[1]
    return clip_boxes_to_image(boxes * boxes.new_tensor([scale_x, scale_y, scale_x, scale_y]), original_size)
