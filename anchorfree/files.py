"""Atomic file writes: the one way the project replaces a file it writes.

Every write goes to a temporary file in the same folder (`.<name>.<random>.tmp`), is fsynced and then renamed
over the old file (`os.replace` is atomic on POSIX and Windows), so a reader, or a kill at any moment, sees
either the previous file or the complete new one. Checkpoints, config.yaml, metrics.csv, per_class.csv, the
figures and drawn images, predictions.json, the JSON reports and the image-check cache are written this way.

Standard library only, so that `anchorfree.data` can use it without importing torch or safetensors.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

# The temporary file an atomic write of `<name>` goes through: `.<name>.<random>.tmp`.
TEMPORARY_NAME = re.compile(r"^\.(?P<name>.+)\.[^.]+\.tmp$")


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    """Write `payload` to `path` so that readers see either the old file or the complete new one.

    Raises OSError (e.g. ENOSPC, a read-only folder, a name too long) naming `path`, after removing the temporary
    file; the previous file is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            # mkstemp creates files readable by the owner only; give the final file the usual permissions.
            os.chmod(temporary, 0o666 & ~_current_umask())
            os.replace(temporary, path)
        except BaseException:
            # Also on KeyboardInterrupt: the half-written temporary must not stay behind.
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise
    except OSError as error:
        # The OS names the temporary file (or nothing): name the file the user asked for, keeping the errno
        # (OSError(errno, ...) is the matching subclass: PermissionError, FileNotFoundError...).
        raise OSError(error.errno, f"cannot write {path}: {error.strerror or error}", str(path)) from error
    _fsync_directory(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write_bytes` of `text` as UTF-8 (line endings as given: a CSV's "\\r\\n" stays)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporary files left by a write that was killed; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for stale in folder.glob(".*.tmp"):
        stale.unlink()
        removed.append(stale)
    return removed


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(folder: Path) -> None:
    # Makes the rename itself durable; not possible on Windows, where opening a folder fails.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
