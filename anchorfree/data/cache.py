"""What readers remember between runs: each image's checked size, so a dataset is only inspected once.

The cache is ours, in our cache folder ($ANCHORFREE_CACHE or ~/.cache/anchorfree), as JSON (never pickle). A
cache file is named by the hash of the annotation content it belongs to, and each entry is only trusted while
the image file's size and modification time are unchanged. It is written atomically; a cache that cannot be
read or written is ignored, never an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from anchorfree.data.images import ImageLoadError, ImageTooLarge, inspect_image
from anchorfree.files import atomic_write_text

CACHE_VERSION = 3  # 3: a JPEG with bytes after its end marker is complete (2 called it truncated)


def cache_dir() -> Path:
    """The folder for everything anchorfree caches."""
    return Path(os.environ.get("ANCHORFREE_CACHE", Path.home() / ".cache" / "anchorfree"))


def content_hash(*parts: bytes | str) -> str:
    """sha256 of the given contents (annotation bytes, paths), as hex."""
    digest = hashlib.sha256(f"anchorfree-image-info-v{CACHE_VERSION}".encode())
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


class ImageInfoCache:
    """Checked (width, height), or the reason an image is unusable, per image file.

    Args:
        key: the content hash of the annotations these images belong to (`content_hash`).
        max_pixels: the decompression-bomb limit the checks run with (part of what an entry means).
    """

    def __init__(self, key: str, max_pixels: int) -> None:
        self.path = cache_dir() / "image-info" / f"{key}-{max_pixels}.json"
        self.max_pixels = max_pixels
        self.entries: dict[str, dict] = {}
        self.changed = False
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            if document.get("version") == CACHE_VERSION:
                self.entries = document["entries"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.entries = {}

    def inspect(self, path: Path) -> tuple[int, int]:
        """`inspect_image(path)`, answered from the cache while the file is unchanged. Missing files are never cached."""
        try:
            stat = path.stat()
        except OSError:
            raise ImageLoadError(f"{path}: image file not found") from None
        stamp = [stat.st_size, stat.st_mtime_ns]
        entry = self.entries.get(str(path))
        if entry is None or entry.get("stamp") != stamp:
            try:
                width, height = inspect_image(path, self.max_pixels)
                entry = {"stamp": stamp, "size": [width, height]}
            except ImageLoadError as error:
                entry = {"stamp": stamp, "problem": str(error), "too_large": isinstance(error, ImageTooLarge)}
            self.entries[str(path)] = entry
            self.changed = True
        if "problem" in entry:
            raise (ImageTooLarge if entry.get("too_large") else ImageLoadError)(entry["problem"])
        return entry["size"][0], entry["size"][1]

    def save(self) -> None:
        """Write the cache atomically if anything was added (errors are ignored: a cache is optional)."""
        if not self.changed:
            return
        try:
            atomic_write_text(self.path, json.dumps({"version": CACHE_VERSION, "entries": self.entries}))
            self.changed = False
        except OSError:
            pass
