"""Checkpoints: one safetensors file each, written atomically.

A checkpoint holds the model weights (`model.*` tensors) and, for `last`, the training state beside them in
the same file (`optimizer.*` tensors, the optimizer's param groups and the loop position in the metadata), so
weights and state can never disagree after a crash. Metadata (`CheckpointMetadata`: config, class names,
original category ids, epoch, metrics, versions) is JSON in the safetensors header and is mirrored to a `.json`
file for people.
Nothing is pickled: loading cannot execute code.

Every write goes through `anchorfree.files.atomic_write_bytes` (a temporary file in the same folder, fsynced,
then renamed over the old file), so a kill at any moment leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import copy
import errno
import json
import shutil
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from anchorfree.files import atomic_write_bytes, atomic_write_text

FORMAT = "anchorfree-checkpoint"
# 2: typed metadata with a `version` and `world_size`; the config holds the active family's section only, and
# model.freeze_backbone_norm. 1: no `version` key (still read: see `CheckpointMetadata.from_json`).
FORMAT_VERSION = 2


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, incomplete or from another format."""


@dataclass
class CheckpointMetadata:
    """What a checkpoint says beside its tensors: JSON in the safetensors header, mirrored to a `.json` file.

    Any field but `version` may be absent from a file (weights written by hand or by older versions hold
    fewer): None then. `load_checkpoint` checks every value's type first (`METADATA_TYPES`); `require` names the
    fields a use needs.
    """

    version: int = FORMAT_VERSION  # the metadata's layout; files without the key are version 1
    config: dict[str, Any] | None = None  # Config.to_dict(): model (the active family's section; version 1: all three), data, train
    class_names: list[str] | None = None  # in label order
    category_ids: list[int] | None = None  # the dataset's id of each class, in label order
    epoch: int | None = None  # epochs finished when it was saved
    loop: dict[str, Any] | None = None  # `last` only: the loop position (engine.LoopState.to_dict())
    history: list[dict[str, Any]] | None = None  # `last` only: the metrics row of every finished epoch
    metrics: dict[str, Any] | None = None  # `best` only: the evaluation that made it best (EvaluationResult.to_dict())
    anchorfree_version: str = ""  # "" when not recorded
    torch_version: str = ""
    world_size: int = 1  # processes that trained it together (distributed training records more)

    def to_json(self) -> dict[str, Any]:
        """The JSON object the header and the mirror hold: every field that is not None."""
        return {item.name: copy.deepcopy(getattr(self, item.name)) for item in fields(self) if getattr(self, item.name) is not None}

    @classmethod
    def from_json(cls, values: Any, path: str | Path) -> CheckpointMetadata:
        """Metadata read from a file: type-checked (`check_metadata`: CheckpointError naming `path`, the key and
        the value), version 1 (no `version` key) included; keys that are no field are ignored."""
        check_metadata(values, path)
        version = values.get("version", 1)
        if version > FORMAT_VERSION:
            raise CheckpointError(f"checkpoint {path}: metadata version {version} was written by a newer anchorfree; upgrade to load it")
        known = {item.name for item in fields(cls)}
        kept = {key: copy.deepcopy(value) for key, value in values.items() if key in known}
        kept.setdefault("version", 1)
        return cls(**kept)

    def require(self, path: str | Path, *names: str) -> None:
        """Raise CheckpointError naming `path` and the first of `names` this metadata lacks (a `Detector` needs
        config, class_names and category_ids; resuming needs config and loop)."""
        for name in names:
            if getattr(self, name) is None:
                raise CheckpointError(f"checkpoint {path}: metadata has no {name!r}; it holds {sorted(self.to_json())}")


@dataclass
class Checkpoint:
    """What a checkpoint file holds, unpacked."""

    model_state: dict[str, torch.Tensor]
    metadata: CheckpointMetadata
    optimizer_state: dict[str, Any] | None = None  # a torch optimizer state_dict, or None for weights-only files
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    metadata: CheckpointMetadata | dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    average: torch.nn.Module | None = None,
) -> Path:
    """Atomically write a checkpoint (and its `.json` metadata mirror). Returns the path.

    `metadata` is a CheckpointMetadata, or a mapping of its fields (checked as a file's are; a key that is no
    field is a CheckpointError). With `optimizer`, its state is stored too and the file can resume training;
    without, it is weights only. With `average` (the weights' moving average, a
    `torch.optim.swa_utils.AveragedModel`), its state is stored as "ema." tensors, returned by `load_checkpoint`
    in `extra["ema_state"]`.
    """
    path = Path(path)
    metadata = _as_metadata(metadata, path).to_json()
    tensors = {f"model.{name}": tensor.detach().contiguous().cpu() for name, tensor in _unwrap(model).state_dict().items()}
    if average is not None:
        tensors.update({f"ema.{name}": tensor.detach().contiguous().cpu() for name, tensor in average.state_dict().items()})
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


def _as_metadata(metadata: CheckpointMetadata | dict[str, Any], path: Path) -> CheckpointMetadata:
    """`metadata` to be saved as a CheckpointMetadata (of this version unless it says otherwise)."""
    if isinstance(metadata, CheckpointMetadata):
        check_metadata(metadata.to_json(), path)
        return metadata
    check_metadata(metadata, path)
    known = {item.name for item in fields(CheckpointMetadata)}
    unknown = sorted(set(metadata) - known)
    if unknown:
        raise CheckpointError(f"checkpoint {path}: metadata keys {unknown} are not CheckpointMetadata fields ({', '.join(sorted(known))})")
    return CheckpointMetadata(**copy.deepcopy(metadata))


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
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an anchorfree checkpoint (header format {header.get('format') if isinstance(header, dict) else header!r})")
    version = header.get("format_version", "0")
    if not isinstance(version, str) or not version.isdigit():
        raise CheckpointError(f"checkpoint {path}: header format_version must be a whole number, got {version!r}")
    if int(version) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer anchorfree (format {header['format_version']}); upgrade to load it")
    saved_metadata = _header_json(header, "metadata", path, required=True)
    metadata = CheckpointMetadata.from_json(saved_metadata, path)
    model_state = {name[len("model."):]: tensor for name, tensor in tensors.items() if name.startswith("model.")}
    # Checkpoints saved from DataParallel / DDP wrappers carry a "module." prefix.
    model_state = {name.removeprefix("module."): tensor for name, tensor in model_state.items()}
    optimizer_state = None
    if "optimizer" in header:
        optimizer_state = _optimizer_state(_header_json(header, "optimizer", path, required=True), tensors, path)
    _refresh_mirror(path, saved_metadata)
    ema_state = {name[len("ema."):]: tensor for name, tensor in tensors.items() if name.startswith("ema.")}
    return Checkpoint(model_state, metadata, optimizer_state, path, extra={"ema_state": ema_state} if ema_state else {})


def _header_json(header: dict[str, Any], key: str, path: Path, required: bool) -> Any:
    """A JSON-encoded entry of the safetensors header, or CheckpointError naming the file and the key."""
    if key not in header:
        if required:
            raise CheckpointError(f"checkpoint {path}: the header has no {key!r} entry; it was not written by anchorfree's save_checkpoint")
        return None
    text = header[key]
    if not isinstance(text, str) or len(text) > MAX_HEADER_JSON:
        raise CheckpointError(f"checkpoint {path}: header entry {key!r} must be a JSON string of at most {MAX_HEADER_JSON} characters")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise CheckpointError(f"checkpoint {path}: header entry {key!r} is not valid JSON ({error}): {text[:80]!r}") from error


def _optimizer_state(saved: Any, tensors: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """The optimizer state_dict from the header's JSON and the `optimizer.<index>.<key>` tensors, type-checked."""
    if not isinstance(saved, dict) or not isinstance(saved.get("param_groups"), list) or not isinstance(saved.get("non_tensor_state"), dict):
        raise CheckpointError(f"checkpoint {path}: header entry 'optimizer' must be {{'param_groups': [...], 'non_tensor_state': {{...}}}}, got {str(saved)[:80]}")
    for index, group in enumerate(saved["param_groups"]):
        if not isinstance(group, dict) or not isinstance(group.get("params"), list) or not all(_is_int(item) for item in group["params"]):
            raise CheckpointError(f"checkpoint {path}: optimizer param_groups[{index}] must be a mapping with a list of integer 'params', got {str(group)[:80]}")
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        if name.startswith("optimizer."):
            parts = name.split(".", 2)
            if len(parts) != 3 or not parts[1].isdigit():
                raise CheckpointError(f"checkpoint {path}: tensor {name!r} is not named optimizer.<parameter index>.<key>")
            state.setdefault(int(parts[1]), {})[parts[2]] = tensor
    for parameter_index, values in saved["non_tensor_state"].items():
        if not parameter_index.isdigit() or not isinstance(values, dict):
            raise CheckpointError(f"checkpoint {path}: optimizer non_tensor_state[{parameter_index!r}] must map a parameter index to a mapping, got {values!r}")
        state.setdefault(int(parameter_index), {}).update(values)
    return {"state": state, "param_groups": saved["param_groups"]}


def _refresh_mirror(path: Path, metadata: dict[str, Any]) -> None:
    """Rewrite the `.json` mirror when it is missing or differs from the checkpoint's own metadata.

    The mirror is written after the checkpoint, so a kill between the two leaves it missing or one save behind;
    the checkpoint is the truth. A folder that cannot be written (a read-only copy) keeps the stale mirror.
    """
    mirror = path.with_suffix(".json")
    expected = json.dumps(metadata, indent=2)
    try:
        if mirror.is_file() and mirror.read_text(encoding="utf-8", errors="replace") == expected:
            return
        atomic_write_text(mirror, expected)
    except OSError as error:
        warnings.warn(f"{mirror} is missing or out of date and cannot be rewritten ({error}); {path} itself is complete", stacklevel=3)


# The types a checkpoint's metadata must have, key by key. Every key is optional here (weights files written by
# hand or by older versions hold fewer); `CheckpointMetadata.require` names the fields a use needs.
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


METADATA_TYPES: dict[str, tuple[str, Any]] = {
    "version": ("an integer >= 1", lambda value: _is_int(value) and value >= 1),
    "config": ("a mapping of config sections", lambda value: isinstance(value, dict)),
    "class_names": ("a list of strings", lambda value: isinstance(value, list) and all(isinstance(item, str) for item in value)),
    "category_ids": ("a list of integers", lambda value: isinstance(value, list) and all(_is_int(item) for item in value)),
    "epoch": ("an integer >= 0", lambda value: _is_int(value) and value >= 0),
    "loop": ("a mapping of numbers (and epoch_loss_sums, a mapping of numbers)", lambda value: isinstance(value, dict) and all(
        _is_number(item) or (isinstance(item, dict) and all(isinstance(key, str) and _is_number(number) for key, number in item.items()))
        for item in value.values()
    )),
    "history": ("a list of metrics rows (mappings)", lambda value: isinstance(value, list) and all(isinstance(row, dict) for row in value)),
    "metrics": ("a mapping", lambda value: isinstance(value, dict)),
    "anchorfree_version": ("a string", lambda value: isinstance(value, str)),
    "torch_version": ("a string", lambda value: isinstance(value, str)),
    "world_size": ("an integer >= 1", lambda value: _is_int(value) and value >= 1),
}
MAX_HEADER_JSON = 64 << 20  # characters; far above any real config and optimizer state, far below a memory problem


def check_metadata(metadata: Any, path: str | Path, required: tuple[str, ...] = ()) -> None:
    """Raise CheckpointError naming the file, the key and the value when metadata has the wrong shape.

    Checked before anything uses it (`CheckpointMetadata.from_json`), so a crafted or damaged header is one
    named error rather than a TypeError deep inside loading. `required` lists keys that must be present.
    """
    if not isinstance(metadata, dict):
        raise CheckpointError(f"checkpoint {path}: metadata must be a JSON object, got {type(metadata).__name__} {str(metadata)[:80]}")
    for key in required:
        if key not in metadata:
            raise CheckpointError(f"checkpoint {path}: metadata has no {key!r}; it holds {sorted(metadata)}")
    for key, (expected, holds) in METADATA_TYPES.items():
        if key in metadata and not holds(metadata[key]):
            raise CheckpointError(f"checkpoint {path}: metadata {key!r} must be {expected}, got {str(metadata[key])[:120]}")
    if "class_names" in metadata and "category_ids" in metadata and len(metadata["class_names"]) != len(metadata["category_ids"]):
        raise CheckpointError(
            f"checkpoint {path}: metadata has {len(metadata['class_names'])} class_names but {len(metadata['category_ids'])} category_ids "
            f"({metadata['category_ids'][:10]}); there must be one id per class"
        )


def checkpoint_config(checkpoint: Checkpoint) -> Any:
    """The checkpoint's saved config as a `Config`; CheckpointError naming the file and the key when it is not one."""
    from anchorfree.config import ConfigError, config_from_dict  # config imports the models; checkpoint stays light

    checkpoint.metadata.require(checkpoint.path, "config")
    try:
        return config_from_dict(checkpoint.metadata.config)
    except ConfigError as error:
        raise CheckpointError(f"checkpoint {checkpoint.path}: its saved config is not valid: {error}") from error


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path, built_as: str = "") -> None:
    """Raise CheckpointError unless `state` fits `model` exactly: the same names, shapes, and dtypes.

    `load_state_dict` would raise a RuntimeError for a shape, and cast an int64 or bool tensor into a float
    parameter silently; both mean the file is not what its metadata says. `built_as` describes the model (the
    config's family and backbone) for the message.
    """
    expected = _unwrap(model).state_dict()
    where = f"checkpoint {path}" + (f" (its config builds {built_as})" if built_as else "")
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: the tensors do not fit the model: {len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}); the config may name another model.name or model.backbone than the weights were trained with"
        )
    for name, tensor in expected.items():
        saved = state[name]
        if tuple(saved.shape) != tuple(tensor.shape):
            raise CheckpointError(f"{where}: tensor {name!r} has shape {tuple(saved.shape)}, the model expects {tuple(tensor.shape)}")
        if saved.dtype != tensor.dtype and not (saved.dtype.is_floating_point and tensor.dtype.is_floating_point):
            raise CheckpointError(f"{where}: tensor {name!r} is {saved.dtype}, the model expects {tensor.dtype}")


def check_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any], path: str | Path) -> None:
    """Raise CheckpointError unless the saved optimizer state fits `optimizer`: its groups, parameters and buffers."""
    groups = optimizer.param_groups
    saved_groups = state["param_groups"]
    if len(saved_groups) != len(groups) or any(len(saved["params"]) != len(group["params"]) for saved, group in zip(saved_groups, groups)):
        raise CheckpointError(
            f"checkpoint {path}: the optimizer state has groups of {[len(group['params']) for group in saved_groups]} parameters, "
            f"the model's optimizer {[len(group['params']) for group in groups]}"
        )
    parameters = {index: parameter for saved, group in zip(saved_groups, groups) for index, parameter in zip(saved["params"], group["params"])}
    for index, values in state["state"].items():
        if index not in parameters:
            raise CheckpointError(f"checkpoint {path}: optimizer state for parameter {index}, which no parameter group lists")
        for key, value in values.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                if tuple(value.shape) != tuple(parameters[index].shape) or not value.dtype.is_floating_point:
                    raise CheckpointError(
                        f"checkpoint {path}: optimizer tensor optimizer.{index}.{key} is {value.dtype} {tuple(value.shape)}, "
                        f"its parameter is {parameters[index].dtype} {tuple(parameters[index].shape)}"
                    )


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
            errno.ENOSPC,
            f"not enough disk space to save {path}: {needed_bytes / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free in {folder}; "
            f"{_what_is_left(path)}",
        )


def _what_is_left(path: Path) -> str:
    """What a failed save leaves, truthfully: the previous file (if any) and how to go on from there."""
    kept = f"the previous {path.name} is intact" if path.is_file() else f"no {path.name} was written yet"
    last = path.parent / "last.safetensors"
    if last.is_file():
        return f"{kept}; free space and resume with: anchorfree train --resume {path.parent.parent if path.parent.name == 'weights' else last}"
    return f"{kept}, and no `last` checkpoint exists to resume from; free space and start the run again"


def check_free_space_for_run(weights_folder: str | Path, checkpoint_bytes: dict[str, int]) -> None:
    """Before training: raise OSError unless `weights_folder`'s disk holds the checkpoints a run keeps.

    `checkpoint_bytes` maps each checkpoint name ("last", "best") to its expected size. The run needs each of
    them, less what files of those names already take (a resumed run replaces them), plus room for the largest
    temporary copy an atomic save writes beside the old file. Checking now, not after the first epoch, means a
    full disk costs seconds rather than an epoch of training.
    """
    folder = Path(weights_folder)
    folder.mkdir(parents=True, exist_ok=True)
    existing = {name: (folder / f"{name}.safetensors").stat().st_size if (folder / f"{name}.safetensors").is_file() else 0 for name in checkpoint_bytes}
    needed = sum(max(size - existing[name], 0) for name, size in checkpoint_bytes.items()) + max(checkpoint_bytes.values(), default=0)
    free = shutil.disk_usage(folder).free
    if free < needed * 1.1 + (1 << 20):
        sizes = ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in checkpoint_bytes.items())
        raise OSError(
            errno.ENOSPC,
            f"not enough disk space for the checkpoints of this run in {folder}: about {needed / 2**20:.1f} MiB needed ({sizes}, "
            f"plus a temporary copy while saving), {free / 2**20:.1f} MiB free; free space or set train.project to another disk "
            "before training",
        )
