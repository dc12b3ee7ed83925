"""Checkpoints: one safetensors file each, written atomically.

A checkpoint holds the model weights (`model.*` tensors) and, for `last`, the training state beside them in
the same file (`optimizer.*` tensors, the optimizer's param groups and the loop position in the metadata), so
weights and state can never disagree after a crash. Metadata (config, class names, original category ids,
epoch, metrics, versions) is JSON in the safetensors header and is mirrored to a `.json` file for people.
Nothing is pickled: loading cannot execute code.

Every write goes to a temporary file in the same folder, is fsynced and then renamed over the old file
(`os.replace` is atomic on POSIX and Windows), so a kill at any moment leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

FORMAT = "anchorfree-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, incomplete or from another format."""


@dataclass
class Checkpoint:
    """What a checkpoint file holds, unpacked."""

    model_state: dict[str, torch.Tensor]
    metadata: dict[str, Any]  # config, class_names, category_ids, epoch, ... (JSON types)
    optimizer_state: dict[str, Any] | None = None  # a torch optimizer state_dict, or None for weights-only files
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    """Write `payload` to `path` so that readers see either the old file or the complete new one.

    Raises OSError (e.g. ENOSPC) after removing the temporary file; the previous file is untouched.
    """
    path = Path(path)
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
    _fsync_directory(path.parent)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


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


def save_checkpoint(path: str | Path, model: torch.nn.Module, metadata: dict[str, Any], optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Atomically write a checkpoint (and its `.json` metadata mirror). Returns the path.

    With `optimizer`, its state is stored too and the file can resume training; without, it is weights only.
    """
    path = Path(path)
    tensors = {f"model.{name}": tensor.detach().contiguous().cpu() for name, tensor in _unwrap(model).state_dict().items()}
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "metadata": json.dumps(metadata)}
    if optimizer is not None:
        state = optimizer.state_dict()
        non_tensor_state: dict[str, dict[str, Any]] = {}
        for parameter_index, parameter_state in state["state"].items():
            for key, value in parameter_state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.{parameter_index}.{key}"] = value.detach().contiguous().cpu()
                else:
                    non_tensor_state.setdefault(str(parameter_index), {})[key] = value
        header["optimizer"] = json.dumps({"param_groups": state["param_groups"], "non_tensor_state": non_tensor_state})
    _check_free_space(path, sum(tensor.numel() * tensor.element_size() for tensor in tensors.values()))
    atomic_write_bytes(path, save_safetensors_bytes(tensors, metadata=header))
    atomic_write_text(path.with_suffix(".json"), json.dumps(metadata, indent=2))
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file written by `save_checkpoint`.

    Raises CheckpointError naming the path and its size when the file is missing, truncated, corrupt or not
    an anchorfree checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "weights" / "last.safetensors" if (path / "weights").is_dir() else path / "last.safetensors"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    payload = path.read_bytes()
    try:
        tensors = load_safetensors_bytes(payload)
        header = _read_header(payload)
    except (SafetensorError, ValueError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {path} is corrupt or incomplete (size {len(payload)} bytes): {error}") from error
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an anchorfree checkpoint (header format {header.get('format')!r})")
    if int(header.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer anchorfree (format {header['format_version']}); upgrade to load it")
    metadata = json.loads(header["metadata"])
    model_state = {name[len("model."):]: tensor for name, tensor in tensors.items() if name.startswith("model.")}
    # Checkpoints saved from DataParallel / DDP wrappers carry a "module." prefix.
    model_state = {name.removeprefix("module."): tensor for name, tensor in model_state.items()}
    optimizer_state = None
    if "optimizer" in header:
        saved = json.loads(header["optimizer"])
        state: dict[int, dict[str, Any]] = {}
        for name, tensor in tensors.items():
            if name.startswith("optimizer."):
                _, parameter_index, key = name.split(".", 2)
                state.setdefault(int(parameter_index), {})[key] = tensor
        for parameter_index, values in saved["non_tensor_state"].items():
            state.setdefault(int(parameter_index), {}).update(values)
        optimizer_state = {"state": state, "param_groups": saved["param_groups"]}
    return Checkpoint(model_state, metadata, optimizer_state, path)


def _read_header(payload: bytes) -> dict[str, str]:
    if len(payload) < 8:
        raise ValueError("file shorter than a safetensors header")
    header_length = int.from_bytes(payload[:8], "little")
    if header_length > len(payload) - 8:
        raise ValueError(f"header claims {header_length} bytes but the file is {len(payload)}")
    return json.loads(payload[8 : 8 + header_length]).get("__metadata__", {})


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _check_free_space(path: Path, needed_bytes: int) -> None:
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    # Room for the new file beside the old one, plus a margin.
    if free < needed_bytes * 1.1 + (1 << 20):
        raise OSError(
            f"not enough disk space to save {path}: {needed_bytes / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free in {folder}; "
            "the previous checkpoint is intact; free space and resume with `anchorfree train --resume`"
        )
