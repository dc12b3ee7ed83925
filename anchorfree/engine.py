"""The training and evaluation loops, and resuming.

`train(config)` reads the data, builds the model, and runs: warmup + cosine learning rate, gradient clipping,
optional bf16 autocast, a progress bar, validation every N epochs with COCO metrics, `last` and `best`
checkpoints, a metrics.csv row per epoch with its curves in results.png, and the analysis of the best evaluation
in plots/ (PR and F1 curves, confusion matrices, sample predictions, per_class.csv). Ctrl-C finishes the current
step, saves `last` and exits; a second Ctrl-C stops at once. `--resume` continues from `last` exactly: the data order and every augmentation
are functions of (seed, epoch, sample index), so a resumed run sees the same batches as an uninterrupted one.

    train(config)
      validate(config)                            every value, before any file is read
      set up                                      `last` to resume (or a fresh model), optimizer, average, RunFolder
      per epoch: train_one_epoch(...)             the steps -> EpochResult (its metrics row, finished or stopped)
                 evaluate_and_keep_best(...)      every train.eval_every epochs: COCO metrics, `best`, plots/
                 RunFolder: `last`, metrics.csv, results.png, TensorBoard

Everything written into the run folder goes through its `RunFolder` (anchorfree/run_folder.py).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

import anchorfree
from anchorfree.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointMetadata,
    check_optimizer_state,
    check_state_dict,
    checkpoint_config,
    load_checkpoint,
)
from anchorfree.config import Config, flatten, validate, with_absolute_paths
from anchorfree.data.dataset import DetectionDataset, EpochSampler, make_loader, scale_to_original
from anchorfree.data.records import DetectionData, InvalidAnnotation
from anchorfree.data.splits import evaluation_dataset, read_splits, training_dataset
from anchorfree.evaluation import EvaluationResult, detections_to_coco_results, evaluate_coco
from anchorfree.models import build_model
from anchorfree.models.backbones import PretrainedWeightsUnavailable, warn_unavailable_once
from anchorfree.run_folder import RunFolder


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


def evaluate(model: nn.Module, data: DetectionData, config: Config, device: torch.device, progress: bool = True) -> tuple[EvaluationResult, list[dict]]:
    """COCO metrics of `model` (a `DetectionModel`) on `data` (pycocotools underneath), and the detections they
    were computed from; at most `model.max_detections` per image count, as the model decodes them."""
    dataset = evaluation_dataset(config, data)
    detections = predict_dataset(model, dataset, device, config.train.batch_size, config.data.workers, config.train.amp, progress)
    return evaluate_coco(data.coco_ground_truth(), detections, max_detections=model.max_detections), detections


# ------------------------------------------------------------------------------------------------- training


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


@dataclass
class EpochResult:
    """What `train_one_epoch` did."""

    finished: bool  # the epoch's last batch is done (False: a stop request or the time limit ended it early)
    row: dict[str, Any]  # its metrics.csv row: epoch, step, lr, loss/<term> (mean per batch), images_per_second


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    average: AveragedModel | None,
    dataset: DetectionDataset,
    state: LoopState,
    config: Config,
    device: torch.device,
    stop: _StopSignal,
    last_checkpoint: Path,
    progress: bool = True,
) -> EpochResult:
    """Train on the batches of epoch `state.epoch` that `state` has not done yet (all of them, unless resumed
    mid-epoch), in the order `EpochSampler` fixes for the epoch, counting each step in `state`.

    A step: the learning rate of `state.step` (`learning_rate_factor`, by elapsed time under a time limit), the
    losses under autocast, their sum's backward pass, gradient clipping (`train.grad_clip`), the optimizer step
    and the weights' `average`. After a step, a stop request (Ctrl-C, SIGTERM) or the time limit
    (`train.time_limit`) ends the epoch early.
    `state.epoch` is not advanced: whether the epoch counts as done is the caller's (`EpochResult.finished`).

    Raises:
        NonFiniteLoss: a NaN or inf loss, naming the iteration, the loss terms, the images and whether
            `last_checkpoint` holds a good state to go on from; nothing is stepped or saved.
    """
    train_config = config.train
    dataset.epoch = state.epoch
    sampler = EpochSampler(len(dataset), train_config.seed, state.epoch, start=state.iteration * train_config.batch_size)
    loader = make_loader(dataset, train_config.batch_size, config.data.workers, sampler)
    total_steps = math.ceil(len(dataset) / train_config.batch_size) * train_config.epochs
    model.train()
    sums = state.epoch_loss_sums
    bar = tqdm(
        loader, total=len(loader), initial=0, desc=f"epoch {state.epoch + 1}/{train_config.epochs}",
        disable=not progress, dynamic_ncols=True, leave=True,
    )
    step_start = time.perf_counter()
    for images, targets in bar:
        lr = _learning_rate(state, config, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = [image.to(device, non_blocking=True) for image in images]
        device_targets = [{key: (value.to(device) if isinstance(value, torch.Tensor) else value) for key, value in target.items()} for target in targets]
        with autocast(device, train_config.amp):
            losses = model(images, device_targets)
        total = sum(losses.values())
        if not torch.isfinite(total):
            terms = ", ".join(f"{name}={value.item():.4g}" for name, value in losses.items())
            image_ids = [target["image_id"] for target in targets]
            raise NonFiniteLoss(
                f"non-finite loss at epoch {state.epoch + 1} iteration {state.iteration + 1} (step {state.step + 1}): {terms}; "
                f"images {image_ids}. {_last_good(last_checkpoint)}; "
                "lower train.lr or raise train.warmup_iters"
            )
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if train_config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
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
        if stop.requested or _out_of_time(state, config):
            break
    bar.close()
    # Means over the epoch's batches, those before a mid-epoch resume included (their sums are in `state`).
    batches_done = max(state.iteration, 1)
    row: dict[str, Any] = {"epoch": state.epoch + 1, "step": state.step, "lr": optimizer.param_groups[0]["lr"]}
    row.update({f"loss/{name}": value / max(batches_done, 1) for name, value in sums.items()})
    row["images_per_second"] = state.epoch_images / max(state.epoch_seconds, 1e-9)
    return EpochResult(finished=state.iteration * train_config.batch_size >= len(dataset), row=row)


def evaluate_and_keep_best(
    model: nn.Module,
    val_data: DetectionData,
    config: Config,
    device: torch.device,
    state: LoopState,
    run: RunFolder,
    metadata: CheckpointMetadata,
    progress: bool = True,
) -> tuple[dict[str, float], bool]:
    """Evaluate `model` (what `best` holds) after epoch `state.epoch`; on a new best mAP, record it in `state`,
    save `model` as `best` (`metadata` with the epoch and the evaluation's metrics) and write its analysis to
    plots/, so that plots/ always shows the `best` checkpoint's evaluation.

    Returns the evaluation's stats (the metrics row's val/<stat> columns) and whether plots/ was written.
    """
    result, detections = evaluate(model, val_data, config, device, progress)
    improved = result.stats["mAP"] > state.best_map
    if improved:
        state.best_map, state.best_epoch = result.stats["mAP"], state.epoch
    tqdm.write(f"epoch {state.epoch}: mAP {result.stats['mAP']:.4f}  AP50 {result.stats['AP50']:.4f}  (best {state.best_map:.4f} at epoch {state.best_epoch})")
    if not improved:
        return result.stats, False
    run.save_best(model, replace(metadata, epoch=state.epoch, metrics=result.to_dict()))
    return result.stats, run.write_evaluation_plots(result, val_data, detections)


def train(config: Config, resume: str | Path | None = None, progress: bool = True) -> Path:
    """Train a detector as `config` says; return the run folder (config.yaml, metrics.csv, results.png, weights/,
    and with validation data plots/, the analysis of the best evaluation; tensorboard/ with train.tensorboard).

    With `resume` (a run folder or its weights/last.safetensors), continue that run from `last`, under the same
    config but for run-length and machine keys (train.epochs, train.time_limit, train.device, train.threads,
    data.workers, train.eval_every, train.tensorboard).
    """
    # Every value is checked, and every path made absolute, before any file is read: the saved config then
    # means the same files from any working directory (val, predict, --resume).
    validate(config)
    config = with_absolute_paths(config)
    checkpoint = _checkpoint_to_resume(resume, config) if resume is not None else None
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)
    device = resolve_device(config.train.device)
    train_data, val_data = read_splits(config)
    _check_usable(train_data, "training")
    if val_data is not None:
        _check_usable(val_data, "validation")

    config, model = _build_model(config, len(train_data.class_names), resuming=checkpoint is not None)
    model = model.to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    if checkpoint is not None:
        average, state = _restore(checkpoint, config, model, optimizer)
        run = RunFolder.of_checkpoint(checkpoint.path, config.train.tensorboard)
        history = run.resumed_history(checkpoint, state.epoch)
    else:
        average, state, history = None, LoopState(), []
        run = RunFolder.create(config.train.project, config.train.name or config.preset or config.model.name, config.train.tensorboard)
    if config.train.ema_decay > 0 and average is None:
        average = weights_average(model, config.train.ema_decay)
    # What evaluation scores and `best` holds: the weights' average when there is one, else the weights.
    evaluated = average.module if average is not None else model
    run.prepare(_checkpoint_sizes(model, config))
    run.write_config(config)
    if checkpoint is not None:
        # A kill between `last` and metrics.csv leaves the file a row behind or a row ahead: `last` is the truth.
        run.write_metrics(history)

    dataset = training_dataset(config, train_data)
    # What every checkpoint of the run says; each save adds its epoch (`last`: the loop and history, `best`: metrics).
    metadata = CheckpointMetadata(
        config=config.to_dict(),
        class_names=list(train_data.class_names),
        category_ids=list(train_data.category_ids),
        anchorfree_version=anchorfree.__version__,
        torch_version=torch.__version__,
        world_size=1,
    )
    with _StopSignal() as stop, run:
        while state.epoch < config.train.epochs and not _out_of_time(state, config):
            epoch = train_one_epoch(model, optimizer, average, dataset, state, config, device, stop, run.last_checkpoint, progress)
            if stop.requested and not epoch.finished:
                run.save_last(model, optimizer, average, _last_metadata(metadata, state, history))
                raise TrainingInterrupted(f"training stopped at epoch {state.epoch + 1} iteration {state.iteration}; resume with: anchorfree train --resume {run.path}")
            row = epoch.row
            state.epoch += 1
            state.iteration = 0
            state.epoch_loss_sums, state.epoch_images, state.epoch_seconds = {}, 0, 0.0
            last_epoch = state.epoch >= config.train.epochs or _out_of_time(state, config) or stop.requested
            new_plots = False
            if val_data is not None and (state.epoch % config.train.eval_every == 0 or last_epoch):
                stats, new_plots = evaluate_and_keep_best(evaluated, val_data, config, device, state, run, metadata, progress)
                row.update({f"val/{name}": value for name, value in stats.items()})
            elif val_data is None:
                run.save_best(evaluated, replace(metadata, epoch=state.epoch))
            history.append(row)
            # `last` first, metrics.csv after: a kill between them leaves a row that the resume rewrites from
            # `last`'s history, never a duplicate.
            run.save_last(model, optimizer, average, _last_metadata(metadata, state, history))
            run.write_metrics(history)
            run.write_results_plot()
            run.log_epoch(row, state.epoch, predictions=new_plots)
            if stop.requested:
                raise TrainingInterrupted(f"training stopped after epoch {state.epoch}; resume with: anchorfree train --resume {run.path}")
    return run.path


# ------------------------------------------------------------------------------------------ parts of the set-up


def _checkpoint_to_resume(resume: str | Path, config: Config) -> Checkpoint:
    """The `last` checkpoint `resume` names, refused (CheckpointError) unless it holds the training state and was
    saved under `config`, but for the keys `_check_resume_config` allows; read before any data is."""
    checkpoint = load_checkpoint(resume)
    if checkpoint.optimizer_state is None:
        raise CheckpointError(f"{checkpoint.path} holds weights only (a `best` file?); resume from weights/last.safetensors")
    checkpoint.metadata.require(checkpoint.path, "config", "loop")
    _check_resume_config(checkpoint, config)
    return checkpoint


def _build_model(config: Config, num_classes: int, resuming: bool) -> tuple[Config, nn.Module]:
    """The model to train, seeded by `train.seed`, and the config it was built under.

    Resuming, `last` holds every weight: the saved structure (model.freeze_backbone_norm) is built without
    fetching ImageNet weights, so an offline machine can resume. A fresh run that cannot fetch them (offline with
    an empty torchvision cache) warns once and trains from scratch, and the returned config says so
    (model.pretrained_backbone=false, model.freeze_backbone_norm=false: config.yaml and every checkpoint then
    say what was trained; batch norm trains too, as frozen at its random initial values it would never learn).
    """
    torch.manual_seed(config.train.seed)
    if resuming:
        return config, build_model(replace(config.model, pretrained_backbone=False), num_classes)
    try:
        return config, build_model(config.model, num_classes)
    except PretrainedWeightsUnavailable as error:
        warn_unavailable_once(error, "Training continues from scratch (model.pretrained_backbone=false, model.freeze_backbone_norm=false).")
        config = replace(config, model=replace(config.model, pretrained_backbone=False, freeze_backbone_norm=False))
        torch.manual_seed(config.train.seed)
        return config, build_model(config.model, num_classes)


def _restore(checkpoint: Checkpoint, config: Config, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[AveragedModel | None, LoopState]:
    """Load `last`'s weights and optimizer state into `model` and `optimizer`, each checked to fit first; return
    its weights' average (None when it holds none or `train.ema_decay` is 0) and its loop position."""
    check_state_dict(model, checkpoint.model_state, checkpoint.path, f"{config.model.name} on {config.model.backbone}")
    check_optimizer_state(optimizer, checkpoint.optimizer_state, checkpoint.path)
    model.load_state_dict(checkpoint.model_state)
    average = None
    if config.train.ema_decay > 0 and "ema_state" in checkpoint.extra:
        average = weights_average(model, config.train.ema_decay)
        average.load_state_dict(checkpoint.extra["ema_state"])
    optimizer.load_state_dict(checkpoint.optimizer_state)
    return average, _loop_state(checkpoint)


# ---------------------------------------------------------------------------------------- parts of the loop


def _learning_rate(state: LoopState, config: Config, total_steps: int) -> float:
    """`train.lr` times `learning_rate_factor` at `state`'s step; under a time limit the schedule follows whichever
    runs out first: time or epochs."""
    train_config = config.train
    progress_fraction = state.step / max(total_steps, 1)
    if train_config.time_limit > 0:
        progress_fraction = max(progress_fraction, state.elapsed / (train_config.time_limit * 60.0))
    step_points = [epoch / train_config.epochs for epoch in train_config.lr_steps]
    factor = learning_rate_factor(
        state.step, progress_fraction, train_config.warmup_iters, train_config.warmup_factor, train_config.final_lr_ratio,
        train_config.lr_schedule, step_points,
    )
    return train_config.lr * factor


def _out_of_time(state: LoopState, config: Config) -> bool:
    """`train.time_limit` (minutes; 0: none) is used up."""
    time_limit = config.train.time_limit * 60.0
    return time_limit > 0 and state.elapsed >= time_limit


def _last_metadata(metadata: CheckpointMetadata, state: LoopState, history: list[dict[str, Any]]) -> CheckpointMetadata:
    """`last`'s metadata: `metadata`, the epoch, the loop position, and the metrics rows of every finished epoch
    (so that metrics.csv can be rebuilt from it)."""
    return replace(metadata, epoch=state.epoch, loop=state.to_dict(), history=history)


def _check_resume_config(checkpoint: Checkpoint, requested: Config) -> None:
    """Refuse to resume under a different config, except for keys that do not change the run's meaning."""
    allowed = {
        "train.epochs", "train.time_limit", "train.device", "train.threads", "data.workers", "train.eval_every", "train.tensorboard",
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
    checkpoint.metadata.require(checkpoint.path, "loop")
    loop = checkpoint.metadata.loop
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


def _checkpoint_sizes(model: nn.Module, config: Config) -> dict[str, int]:
    """Expected bytes of `last` (weights + optimizer buffers: SGD momentum 1x, AdamW 2x the trainable weights)
    and `best` (weights), for the free-space check before training."""
    weights = sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())
    trainable = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters() if parameter.requires_grad)
    buffers = 2 if config.train.optimizer == "adamw" else (1 if config.train.momentum > 0 else 0)
    average = weights if config.train.ema_decay > 0 else 0  # `last` also holds the weights' average
    return {"last": weights + buffers * trainable + average, "best": weights}
