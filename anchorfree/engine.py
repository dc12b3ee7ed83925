"""Training and evaluation loops, the run folder, and resuming.

`train(config)` reads the data, builds the model, and runs: warmup + cosine learning rate, gradient clipping,
optional bf16 autocast, a progress bar, validation every N epochs with COCO metrics, `last` and `best`
checkpoints, a metrics.csv row per epoch with its curves in results.png, and the analysis of the best evaluation
in plots/ (PR and F1 curves, confusion matrices, sample predictions, per_class.csv). Ctrl-C finishes the current
step, saves `last` and exits; a second Ctrl-C stops at once. `--resume` continues from `last` exactly: the data order and every augmentation
are functions of (seed, epoch, sample index), so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import signal
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

import anchorfree
from anchorfree.checkpoint import (
    Checkpoint,
    CheckpointError,
    atomic_write_text,
    check_free_space_for_run,
    check_metadata,
    check_optimizer_state,
    check_state_dict,
    checkpoint_config,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from anchorfree.config import Config, dump_yaml, flatten, validate, with_absolute_paths
from anchorfree.data.formats import check_same_classes, read_dataset, read_dataset_yaml
from anchorfree.data.dataset import DetectionDataset, collate, scale_to_original
from anchorfree.data.records import DetectionData, InvalidAnnotation
from anchorfree.data.transforms import eval_transforms, largest_input, train_transforms
from anchorfree.evaluation import EvaluationResult, detections_to_coco_results, evaluate_coco
from anchorfree.models import build_model, with_pretrained_structure
from anchorfree.models.backbones import PretrainedWeightsUnavailable, warn_unavailable_once
from anchorfree.plots import TensorBoardLogger, plot_results, write_evaluation_plots


class NonFiniteLoss(FloatingPointError):
    """Training produced a NaN or inf loss; the message names the iteration, the loss terms and the images."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM stopped training after `last` was saved."""


# -------------------------------------------------------------------------------------------------- helpers


def resolve_device(name: str) -> torch.device:
    """"auto" -> the first CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on CPU or CUDA (bf16 needs no loss scaler); losses are computed in float32 inside."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def learning_rate_factor(
    step: int,
    progress: float,
    warmup_iters: int,
    warmup_factor: float,
    final_lr_ratio: float,
    schedule: str = "cosine",
    step_points: list[float] | None = None,
) -> float:
    """Multiplier on the base learning rate: linear warmup over `warmup_iters` steps, then the schedule.

    Args:
        step: optimizer steps done.
        progress: fraction of training done in [0, 1] (by steps, or by time under a time limit).
        schedule: "cosine" decays to `final_lr_ratio` at the end; "step" multiplies by 0.1 at each of
            `step_points` (fractions of training) that `progress` has passed, as the CenterNet paper does.
    """
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        factor = final_lr_ratio + (1 - final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    elif schedule == "step":
        factor = 0.1 ** sum(progress >= point for point in step_points or [])
    else:
        raise ValueError(f"train.lr_schedule must be 'cosine' or 'step', got {schedule!r}")
    if step < warmup_iters:
        alpha = step / warmup_iters
        return factor * (warmup_factor * (1 - alpha) + alpha)
    return factor


def build_optimizer(model: nn.Module, config: Config) -> torch.optim.Optimizer:
    """SGD or AdamW; no weight decay on norm layers, biases and the per-level scales (they are not weights)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim <= 1 or name.endswith(".bias") else decay).append(parameter)
    train = config.train
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=train.lr)
    raise ValueError(f"train.optimizer must be 'sgd' or 'adamw', got {train.optimizer!r}")


def weights_average(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of `model`'s weights and batch-norm statistics (`torch.optim.swa_utils`).

    From random weights, the last steps of a short run still jump around; their average is a better detector
    (docs/benchmarks.md, "The demo"). The decay ramps up as min(decay, (1 + n) / (10 + n)) after n updates (the
    ramp of TensorFlow's ExponentialMovingAverage), so that the average forgets the random start within tens
    of steps instead of 1 / (1 - decay).
    """

    def ramped_update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor | int) -> None:
        count = int(updates)
        get_ema_multi_avg_fn(min(decay, (1 + count) / (10 + count)))(averaged, current, updates)

    return AveragedModel(model, multi_avg_fn=ramped_update, use_buffers=True)


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


def read_split(config: Config, path: str, split: str, class_names: list[str] | None = None) -> DetectionData:
    """One split of the configured data, in whatever format it is, with the data settings applied."""
    data = config.data
    return read_dataset(
        path,
        split,
        data.format,
        class_names or data.names or None,
        data.images or None,
        data.on_invalid,
        data.trust_image_size,
        data.max_image_pixels,
    )


def data_paths(config: Config) -> tuple[str, str]:
    """(train, val) paths: `data.train` / `data.val`, or the splits of the `data.dataset` YAML."""
    train, val = config.data.train, config.data.val
    if config.data.dataset:
        splits = read_dataset_yaml(config.data.dataset).splits
        train = train or (str(config.data.dataset) if "train" in splits else "")
        val = val or (str(config.data.dataset) if "val" in splits else "")
    return train, val


def read_splits(config: Config) -> tuple[DetectionData, DetectionData | None]:
    """Read the train and (optional) val splits and check they agree on the classes, before any training."""
    train_path, val_path = data_paths(config)
    if not train_path:
        raise InvalidAnnotation(
            "no training data: set data.train (a COCO JSON file, a VOC or YOLO folder) or data.dataset (a dataset YAML)"
        )
    train_data = read_split(config, train_path, "train")
    if not val_path:
        return train_data, None
    # VOC and YOLO name classes, not ids: the val split is read with the train split's classes, so a class that
    # only val has is an error naming it. COCO splits carry their own categories, compared below.
    val_data = read_split(config, val_path, "val", None if train_data.format == "coco" else train_data.class_names)
    check_same_classes(train_data, val_data)
    return train_data, val_data


def make_loader(dataset: DetectionDataset, batch_size: int, workers: int, sampler: Sampler[int] | None = None) -> DataLoader:
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


def new_run_folder(project: str, name: str) -> Path:
    """runs/<name>, or runs/<name>2, runs/<name>3... if taken, so a new run never overwrites an old one."""
    root = Path(project)
    root.mkdir(parents=True, exist_ok=True)
    candidate, suffix = root / name, 2
    while candidate.exists():
        candidate, suffix = root / f"{name}{suffix}", suffix + 1
    candidate.mkdir(parents=True)
    return candidate


# ----------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict_dataset(model: nn.Module, dataset: DetectionDataset, device: torch.device, batch_size: int = 8, workers: int = 0, amp: bool = False, progress: bool = True) -> list[dict]:
    """Run the model over a dataset; return COCO result dicts with boxes in original-image pixels."""
    model.eval()
    results: list[dict] = []
    category_ids = dataset.data.category_ids
    loader = make_loader(dataset, batch_size, workers)
    for images, targets in tqdm(loader, desc="val", leave=False, disable=not progress, dynamic_ncols=True):
        with autocast(device, amp):
            detections = model([image.to(device, non_blocking=True) for image in images])
        for detection, target in zip(detections, targets):
            boxes = scale_to_original(detection["boxes"].float().cpu(), target["input_size"], target["original_size"])
            results += detections_to_coco_results(target["image_id"], boxes, detection["scores"].float().cpu(), detection["labels"].cpu(), category_ids)
    return results


def evaluation_dataset(config: Config, data: DetectionData) -> DetectionDataset:
    """A split as evaluation sees it: the config's deterministic resize (`data.val_size`, `data.resize`), no augmentation."""
    size, max_size, resize = config.data.val_size, config.data.max_size, config.data.resize
    return DetectionDataset(data, eval_transforms(size, max_size, resize=resize), largest_input(size, max_size, resize))


def evaluate(model: nn.Module, data: DetectionData, config: Config, device: torch.device, progress: bool = True) -> tuple[EvaluationResult, list[dict]]:
    """COCO metrics of `model` on `data` (pycocotools underneath), and the detections they were computed from."""
    dataset = evaluation_dataset(config, data)
    detections = predict_dataset(model, dataset, device, config.train.batch_size, config.data.workers, config.train.amp, progress)
    max_detections = getattr(config.model, config.model.name).max_detections
    return evaluate_coco(data.coco_ground_truth(), detections, max_detections=max_detections), detections


# ------------------------------------------------------------------------------------------------- training


def training_dataset(config: Config, data: DetectionData) -> DetectionDataset:
    """The training split as the loop sees it: `data.*`'s resize mode, augmentation and mosaic, seeded by `train.seed`."""
    data_config = config.data
    size = max(data_config.train_sizes)
    return DetectionDataset(
        data,
        train_transforms(
            data_config.train_sizes, data_config.max_size, data_config.horizontal_flip, data_config.photometric,
            resize=data_config.resize, scale_range=data_config.scale_range, min_box_size=data_config.min_box_size,
        ),
        largest_input(size, data_config.max_size, data_config.resize, data_config.scale_range),
        seed=config.train.seed,
        mosaic_probability=data_config.mosaic,
        mosaic_size=size,
        min_box_size=data_config.min_box_size,
        cache_images=data_config.cache_images,
    )


@dataclass
class LoopState:
    """Where training is; saved in `last` so a resumed run continues from the same place."""

    epoch: int = 0  # the epoch in progress (or the next one when iteration == 0)
    iteration: int = 0  # batches done in that epoch
    step: int = 0  # optimizer steps done in total
    elapsed: float = 0.0  # seconds spent training (for time limits)
    best_map: float = -1.0
    best_epoch: int = -1
    epoch_loss_sums: dict[str, float] = field(default_factory=dict)  # running sums of the epoch in progress
    epoch_images: int = 0
    epoch_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "epoch_loss_sums": dict(self.epoch_loss_sums)}


class _StopSignal:
    """First Ctrl-C / SIGTERM: ask the loop to stop after the current step. Second: stop now."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignal":
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signal_number] = signal.signal(signal_number, self._handle)
            except ValueError:
                pass  # not the main thread: signals stay with whoever owns them
        return self

    def _handle(self, signal_number: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("stopping after this step (press Ctrl-C again to stop immediately)...")

    def __exit__(self, *exc: Any) -> None:
        for signal_number, handler in self._previous.items():
            signal.signal(signal_number, handler)


def train(config: Config, resume: str | Path | None = None, progress: bool = True) -> Path:
    """Train a detector as `config` says; return the run folder (config.yaml, metrics.csv, results.png, weights/,
    and with validation data plots/, the analysis of the best evaluation; tensorboard/ with train.tensorboard)."""
    # Every value is checked, and every path made absolute, before any file is read: the saved config then
    # means the same files from any working directory (val, predict, --resume).
    validate(config)
    config = with_absolute_paths(config)
    checkpoint: Checkpoint | None = None
    if resume is not None:
        checkpoint = load_checkpoint(resume)
        if checkpoint.optimizer_state is None:
            raise CheckpointError(f"{checkpoint.path} holds weights only (a `best` file?); resume from weights/last.safetensors")
        check_metadata(checkpoint.metadata, checkpoint.path, required=("config", "loop"))
        _check_resume_config(checkpoint, config)
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)
    device = resolve_device(config.train.device)
    train_data, val_data = read_splits(config)
    _check_usable(train_data, "training")
    if val_data is not None:
        _check_usable(val_data, "validation")
    num_classes = len(train_data.class_names)

    torch.manual_seed(config.train.seed)
    if checkpoint is not None:
        # `last` holds every weight: build the same structure (the frozen-norm wrapper of a pretrained backbone)
        # without fetching ImageNet weights, so an offline machine can resume.
        model = with_pretrained_structure(build_model(replace(config.model, pretrained_backbone=False), num_classes), config.model)
    else:
        try:
            model = build_model(config.model, num_classes)
        except PretrainedWeightsUnavailable as error:
            # Offline with an empty torchvision cache: warn once, then train from scratch, and record it in the
            # config (config.yaml and every checkpoint) so that the run says what was trained.
            warn_unavailable_once(error, "Training continues from scratch (model.pretrained_backbone=false).")
            config = replace(config, model=replace(config.model, pretrained_backbone=False))
            torch.manual_seed(config.train.seed)
            model = build_model(config.model, num_classes)
    model = model.to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    average: AveragedModel | None = None
    state = LoopState()
    history: list[dict[str, Any]] = []
    if checkpoint is not None:
        check_state_dict(model, checkpoint.model_state, checkpoint.path, f"{config.model.name} on {config.model.backbone}")
        check_optimizer_state(optimizer, checkpoint.optimizer_state, checkpoint.path)
        model.load_state_dict(checkpoint.model_state)
        if config.train.ema_decay > 0 and "ema_state" in checkpoint.extra:
            average = weights_average(model, config.train.ema_decay)
            average.load_state_dict(checkpoint.extra["ema_state"])
        optimizer.load_state_dict(checkpoint.optimizer_state)
        state = _loop_state(checkpoint)
        run_folder = checkpoint.path.parent.parent
        history = _resumed_history(checkpoint, run_folder / "metrics.csv", state.epoch)
    else:
        run_folder = new_run_folder(config.train.project, config.train.name or config.preset or config.model.name)
    if config.train.ema_decay > 0 and average is None:
        average = weights_average(model, config.train.ema_decay)
    # What evaluation scores and `best` holds: the weights' average when there is one, else the weights.
    evaluated = average.module if average is not None else model
    weights_folder = run_folder / "weights"
    weights_folder.mkdir(exist_ok=True)
    remove_stale_temporaries(weights_folder)
    remove_stale_temporaries(run_folder)
    check_free_space_for_run(weights_folder, _checkpoint_sizes(model, config))
    atomic_write_text(run_folder / "config.yaml", dump_yaml(config))
    if checkpoint is not None:
        # A kill between `last` and metrics.csv leaves the file a row behind or a row ahead: `last` is the truth.
        _write_metrics(run_folder / "metrics.csv", history)

    dataset = training_dataset(config, train_data)
    batches_per_epoch = math.ceil(len(dataset) / config.train.batch_size)
    total_steps = batches_per_epoch * config.train.epochs
    time_limit = config.train.time_limit * 60.0
    metadata_base = {
        "config": config.to_dict(),
        "class_names": train_data.class_names,
        "category_ids": train_data.category_ids,
        "anchorfree_version": anchorfree.__version__,
        "torch_version": torch.__version__,
    }
    metrics_rows = history

    def save(name: str, with_optimizer: bool, extra: dict[str, Any] | None = None) -> None:
        metadata = {**metadata_base, "loop": state.to_dict(), "epoch": state.epoch, **(extra or {})}
        if with_optimizer:
            # The metrics rows of every finished epoch travel with `last`, so metrics.csv can be rebuilt from it.
            metadata["history"] = metrics_rows
        if with_optimizer:
            # `last` resumes training: the trained weights, the optimizer and the average (in its own tensors).
            save_checkpoint(weights_folder / f"{name}.safetensors", model, metadata, optimizer, average)
        else:
            save_checkpoint(weights_folder / f"{name}.safetensors", evaluated, metadata)

    def out_of_time() -> bool:
        return time_limit > 0 and state.elapsed >= time_limit

    plots_folder = run_folder / "plots"
    failed_plots: set[str] = set()

    def plot(what: str, draw: Callable[[], Any]) -> bool:
        """Draw a figure; a failure warns once per figure and training goes on."""
        try:
            draw()
            return True
        # Any exception: figures are a convenience, and a matplotlib, font or disk problem in one of them must
        # not end a run of hours. KeyboardInterrupt is not an Exception, so Ctrl-C still stops at once.
        except Exception as error:  # noqa: BLE001
            if what not in failed_plots:
                failed_plots.add(what)
                warnings.warn(f"could not write {what} in {run_folder} ({type(error).__name__}: {error}); training goes on", stacklevel=2)
            return False

    with _StopSignal() as stop, TensorBoardLogger(run_folder / "tensorboard", enabled=config.train.tensorboard) as tensorboard:
        while state.epoch < config.train.epochs and not out_of_time():
            dataset.epoch = state.epoch
            sampler = EpochSampler(len(dataset), config.train.seed, state.epoch, start=state.iteration * config.train.batch_size)
            loader = make_loader(dataset, config.train.batch_size, config.data.workers, sampler)
            model.train()
            sums = state.epoch_loss_sums
            bar = tqdm(
                loader, total=len(loader), initial=0, desc=f"epoch {state.epoch + 1}/{config.train.epochs}",
                disable=not progress, dynamic_ncols=True, leave=True,
            )
            step_start = time.perf_counter()
            step_points = [epoch / config.train.epochs for epoch in config.train.lr_steps]
            for images, targets in bar:
                # Under a time limit the schedule follows whichever runs out first: time or epochs.
                progress_fraction = state.step / max(total_steps, 1)
                if time_limit > 0:
                    progress_fraction = max(progress_fraction, state.elapsed / time_limit)
                factor = learning_rate_factor(
                    state.step, progress_fraction, config.train.warmup_iters, config.train.warmup_factor, config.train.final_lr_ratio,
                    config.train.lr_schedule, step_points,
                )
                for group in optimizer.param_groups:
                    group["lr"] = config.train.lr * factor
                images = [image.to(device, non_blocking=True) for image in images]
                device_targets = [{key: (value.to(device) if isinstance(value, torch.Tensor) else value) for key, value in target.items()} for target in targets]
                with autocast(device, config.train.amp):
                    losses = model(images, device_targets)
                total = sum(losses.values())
                if not torch.isfinite(total):
                    terms = ", ".join(f"{name}={value.item():.4g}" for name, value in losses.items())
                    image_ids = [target["image_id"] for target in targets]
                    raise NonFiniteLoss(
                        f"non-finite loss at epoch {state.epoch + 1} iteration {state.iteration + 1} (step {state.step + 1}): {terms}; "
                        f"images {image_ids}. {_last_good(weights_folder / 'last.safetensors')}; "
                        "lower train.lr or raise train.warmup_iters"
                    )
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if config.train.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
                optimizer.step()
                if average is not None:
                    average.update_parameters(model)

                now = time.perf_counter()
                state.elapsed += now - step_start
                state.epoch_seconds += now - step_start
                step_start = now
                state.step += 1
                state.iteration += 1
                state.epoch_images += len(images)
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + value.item()
                images_per_second = state.epoch_images / max(state.epoch_seconds, 1e-9)
                bar.set_postfix(
                    {**{name: f"{value / state.iteration:.3f}" for name, value in sums.items()},
                     "lr": f"{optimizer.param_groups[0]['lr']:.2e}", "img/s": f"{images_per_second:.1f}"},
                    refresh=False,
                )
                if stop.requested or out_of_time():
                    break
            bar.close()
            batches_done = max(state.iteration, 1)
            epoch_finished = state.iteration * config.train.batch_size >= len(dataset)
            if stop.requested and not epoch_finished:
                save("last", with_optimizer=True)
                raise TrainingInterrupted(f"training stopped at epoch {state.epoch + 1} iteration {state.iteration}; resume with: anchorfree train --resume {run_folder}")
            row: dict[str, Any] = {"epoch": state.epoch + 1, "step": state.step, "lr": optimizer.param_groups[0]["lr"]}
            row.update({f"loss/{name}": value / max(batches_done, 1) for name, value in sums.items()})
            row["images_per_second"] = state.epoch_images / max(state.epoch_seconds, 1e-9)
            state.epoch += 1
            state.iteration = 0
            state.epoch_loss_sums, state.epoch_images, state.epoch_seconds = {}, 0, 0.0
            last_epoch = state.epoch >= config.train.epochs or out_of_time() or stop.requested
            new_plots = False
            if val_data is not None and (state.epoch % config.train.eval_every == 0 or last_epoch):
                result, detections = evaluate(evaluated, val_data, config, device, progress)
                row.update({f"val/{name}": value for name, value in result.stats.items()})
                improved = result.stats["mAP"] > state.best_map
                if improved:
                    state.best_map, state.best_epoch = result.stats["mAP"], state.epoch
                tqdm.write(f"epoch {state.epoch}: mAP {result.stats['mAP']:.4f}  AP50 {result.stats['AP50']:.4f}  (best {state.best_map:.4f} at epoch {state.best_epoch})")
                if improved:
                    save("best", with_optimizer=False, extra={"metrics": result.to_dict()})
                    # Only on a new best: plots/ always shows the analysis of the `best` checkpoint.
                    ground_truth = val_data.coco_ground_truth()
                    new_plots = plot("plots/", lambda: write_evaluation_plots(result, ground_truth, detections, val_data, plots_folder))
            elif val_data is None:
                save("best", with_optimizer=False)
            metrics_rows.append(row)
            # `last` first, metrics.csv after: a kill between them leaves a row that the resume rewrites from
            # `last`'s history, never a duplicate.
            save("last", with_optimizer=True)
            _write_metrics(run_folder / "metrics.csv", metrics_rows)
            plot("results.png", lambda: plot_results(run_folder / "metrics.csv", run_folder / "results.png"))
            tensorboard.log_scalars(row, state.epoch)
            if new_plots:
                tensorboard.log_image("val_predictions", plots_folder / "val_predictions.png", state.epoch)
            if stop.requested:
                raise TrainingInterrupted(f"training stopped after epoch {state.epoch}; resume with: anchorfree train --resume {run_folder}")
    return run_folder


def _check_resume_config(checkpoint: Checkpoint, requested: Config) -> None:
    """Refuse to resume under a different config, except for keys that do not change the run's meaning."""
    allowed = {
        "train.epochs", "train.time_limit", "train.device", "train.threads", "data.workers", "train.eval_every", "train.log_every",
        "train.tensorboard",
    }
    # Relative paths of a checkpoint written before paths were saved absolute mean the working directory's.
    saved_config = with_absolute_paths(checkpoint_config(checkpoint))
    saved_flat, requested_flat = flatten(saved_config.to_dict()), flatten(requested.to_dict())
    different = sorted(key for key in saved_flat if saved_flat[key] != requested_flat.get(key) and key not in allowed)
    if different:
        details = "; ".join(f"{key}: saved {saved_flat[key]!r}, now {requested_flat.get(key)!r}" for key in different)
        raise CheckpointError(f"cannot resume: the config differs from the checkpoint's ({details})")


def _last_good(last: Path) -> str:
    """Where a failed run can go on from, truthfully: `last` if one was saved, else nothing yet."""
    return f"The last good checkpoint is {last}" if last.is_file() else "No checkpoint was saved yet (it stopped in the first epoch)"


def _check_usable(data: DetectionData, role: str) -> None:
    """Refuse a split with no usable image: training on it would run 0 steps (or evaluate to NaN) and "succeed"."""
    if data.records:
        return
    dropped = sum(data.problems.values())
    if dropped:
        reasons = "; ".join(
            f"{kind}: {count} (e.g. {' | '.join(data.problem_examples.get(kind, [])[:2])})" for kind, count in sorted(data.problems.items())
        )
        detail = f"{dropped} images or boxes were dropped: {reasons}"
    else:
        detail = "it lists no images"
    raise InvalidAnnotation(
        f"no usable {role} images in {data.source}: {detail}. Fix or replace these files (`anchorfree data check {data.source}` lists every problem)"
    )


def _loop_state(checkpoint: Checkpoint) -> LoopState:
    """`last`'s loop position as a LoopState, each field type-checked (CheckpointError naming the file and key)."""
    loop = checkpoint.metadata["loop"]
    fields = {item.name: item.type for item in dataclasses.fields(LoopState)}
    unknown = sorted(set(loop) - set(fields))
    if unknown:
        raise CheckpointError(f"checkpoint {checkpoint.path}: metadata 'loop' has unknown keys {unknown}; it holds {sorted(fields)}")
    for key, value in loop.items():
        kind = fields[key]
        valid = (
            isinstance(value, int) and not isinstance(value, bool) and value >= (-1 if key == "best_epoch" else 0) if kind == "int"
            else isinstance(value, (int, float)) and not isinstance(value, bool) if kind == "float"
            else isinstance(value, dict)
        )
        if not valid:
            raise CheckpointError(f"checkpoint {checkpoint.path}: metadata loop.{key} must be {'an integer >= 0' if kind == 'int' else 'a number' if kind == 'float' else 'a mapping'}, got {value!r}")
    return LoopState(**loop)


def _resumed_history(checkpoint: Checkpoint, metrics_file: Path, epochs_done: int) -> list[dict[str, Any]]:
    """One metrics row per finished epoch: `last`'s own history, or (older checkpoints) metrics.csv's rows up
    to `last`'s epoch, the newest row of each epoch kept."""
    if "history" in checkpoint.metadata:
        return [dict(row) for row in checkpoint.metadata["history"]]
    rows_by_epoch: dict[int, dict[str, Any]] = {}
    for row in _read_metrics(metrics_file):
        epoch = str(row.get("epoch", ""))
        if epoch.isdigit() and 1 <= int(epoch) <= epochs_done:
            rows_by_epoch[int(epoch)] = row
    return [rows_by_epoch[epoch] for epoch in sorted(rows_by_epoch)]


def _checkpoint_sizes(model: nn.Module, config: Config) -> dict[str, int]:
    """Expected bytes of `last` (weights + optimizer buffers: SGD momentum 1x, AdamW 2x the trainable weights)
    and `best` (weights), for the free-space check before training."""
    weights = sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())
    trainable = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters() if parameter.requires_grad)
    buffers = 2 if config.train.optimizer == "adamw" else (1 if config.train.momentum > 0 else 0)
    average = weights if config.train.ema_decay > 0 else 0  # `last` also holds the weights' average
    return {"last": weights + buffers * trainable + average, "best": weights}


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({key: (f"{value:.6g}" if isinstance(value, float) else value) for key, value in row.items()})
    atomic_write_text(path, buffer.getvalue())


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [dict(row) for row in csv.DictReader(handle)]
