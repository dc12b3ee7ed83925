"""The run folder: everything a training run writes, and the one place that writes it.

    runs/<name>/
      config.yaml            the resolved config, paths absolute (what `--resume`, `val` and `predict` read)
      metrics.csv            one row per finished epoch: epoch, step, lr, loss/<term>, images_per_second, val/<stat>
      results.png            metrics.csv's curves
      weights/               last.safetensors (resumes training) and best.safetensors, each with its .json mirror
      plots/                 the analysis of the `best` evaluation: per_class.csv, PR / F1 curves, confusion matrices,
                             sample predictions
      tensorboard/           metrics.csv's scalars and the best epoch's val_predictions.png (train.tensorboard=true)

Training writes into its run folder through a `RunFolder` only, never directly: under distributed training the
rank-0 process alone holds one, so no other process or code path of training writes there. Every file is
written atomically (`anchorfree.files`, checkpoints through `anchorfree.checkpoint`). Figures are a convenience:
one that fails warns once and training goes on.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any, Callable

from torch import nn
from torch.optim import Optimizer

from anchorfree.checkpoint import Checkpoint, CheckpointMetadata, check_free_space_for_run, save_checkpoint
from anchorfree.config import Config, dump_yaml
from anchorfree.data.records import DetectionData
from anchorfree.evaluation import EvaluationResult
from anchorfree.files import atomic_write_text, remove_stale_temporaries
from anchorfree.plots import TensorBoardLogger, plot_results, write_evaluation_plots


class RunFolder:
    """A run folder (see the module docstring for its files), and every write into it.

    `with run:` opens its TensorBoard log for the epochs (nothing with `tensorboard=False`) and closes it after.

    Args:
        path: the run folder, e.g. runs/fcos_cpu (`create` makes a new one).
        tensorboard: also log each epoch's metrics row to <path>/tensorboard/ (`train.tensorboard`).
    """

    def __init__(self, path: str | Path, tensorboard: bool = False) -> None:
        self.path = Path(path)
        self.weights = self.path / "weights"
        self.plots = self.path / "plots"
        self.metrics_file = self.path / "metrics.csv"
        self.last_checkpoint = self.weights / "last.safetensors"
        self.tensorboard = tensorboard
        self._logger: TensorBoardLogger | None = None
        self._failed_plots: set[str] = set()  # figures that failed once: they warn no more

    @classmethod
    def create(cls, project: str | Path, name: str, tensorboard: bool = False) -> RunFolder:
        """A new folder <project>/<name>, or <name>2, <name>3... if taken, so a new run never overwrites an old one."""
        root = Path(project)
        root.mkdir(parents=True, exist_ok=True)
        candidate, suffix = root / name, 2
        while candidate.exists():
            candidate, suffix = root / f"{name}{suffix}", suffix + 1
        candidate.mkdir(parents=True)
        return cls(candidate, tensorboard)

    @classmethod
    def of_checkpoint(cls, last: str | Path, tensorboard: bool = False) -> RunFolder:
        """The run folder a `last` checkpoint (<run>/weights/last.safetensors) belongs to."""
        return cls(Path(last).parent.parent, tensorboard)

    # -------------------------------------------------------------------------------------------- start of a run

    def prepare(self, checkpoint_bytes: dict[str, int]) -> None:
        """Make weights/, remove the temporaries of writes a kill interrupted, and check that the disk holds the
        run's checkpoints (`checkpoint_bytes`: their expected sizes by name), before the first step."""
        self.weights.mkdir(exist_ok=True)
        remove_stale_temporaries(self.weights)
        remove_stale_temporaries(self.path)
        check_free_space_for_run(self.weights, checkpoint_bytes)

    def write_config(self, config: Config) -> None:
        """config.yaml: the resolved config as the run trains it."""
        atomic_write_text(self.path / "config.yaml", dump_yaml(config))

    # ------------------------------------------------------------------------------------------------ metrics.csv

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """metrics.csv with `rows`, one per finished epoch; the columns are every key in the order first seen,
        floats with 6 significant digits."""
        columns: list[str] = []
        for row in rows:
            columns += [key for key in row if key not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: (f"{value:.6g}" if isinstance(value, float) else value) for key, value in row.items()})
        atomic_write_text(self.metrics_file, buffer.getvalue())

    def read_metrics(self) -> list[dict[str, Any]]:
        """metrics.csv's rows as strings (none when there is no file)."""
        if not self.metrics_file.is_file():
            return []
        with self.metrics_file.open(newline="") as handle:
            return [dict(row) for row in csv.DictReader(handle)]

    def resumed_history(self, checkpoint: Checkpoint, epochs_done: int) -> list[dict[str, Any]]:
        """One metrics row per finished epoch: `last`'s own history, or (older checkpoints) metrics.csv's rows up
        to `last`'s epoch, the newest row of each epoch kept."""
        if checkpoint.metadata.history is not None:
            return [dict(row) for row in checkpoint.metadata.history]
        rows_by_epoch: dict[int, dict[str, Any]] = {}
        for row in self.read_metrics():
            epoch = str(row.get("epoch", ""))
            if epoch.isdigit() and 1 <= int(epoch) <= epochs_done:
                rows_by_epoch[int(epoch)] = row
        return [rows_by_epoch[epoch] for epoch in sorted(rows_by_epoch)]

    # ---------------------------------------------------------------------------------------------------- weights/

    def save_last(self, model: nn.Module, optimizer: Optimizer, average: nn.Module | None, metadata: CheckpointMetadata) -> Path:
        """weights/last.safetensors, which resumes training: the trained weights, the optimizer and the weights'
        average (in its own tensors), with `metadata` (its loop position and metrics history)."""
        return save_checkpoint(self.last_checkpoint, model, metadata, optimizer, average)

    def save_best(self, model: nn.Module, metadata: CheckpointMetadata) -> Path:
        """weights/best.safetensors: the weights evaluation scored (the average when there is one), weights only."""
        return save_checkpoint(self.weights / "best.safetensors", model, metadata)

    # ------------------------------------------------------------------------------------------ figures, TensorBoard

    def plot(self, what: str, draw: Callable[[], Any]) -> bool:
        """Draw a figure; a failure warns once per figure (`what`) and training goes on. True if it was drawn."""
        try:
            draw()
            return True
        # Any exception: figures are a convenience, and a matplotlib, font or disk problem in one of them must
        # not end a run of hours. KeyboardInterrupt is not an Exception, so Ctrl-C still stops at once.
        except Exception as error:  # noqa: BLE001
            if what not in self._failed_plots:
                self._failed_plots.add(what)
                warnings.warn(f"could not write {what} in {self.path} ({type(error).__name__}: {error}); training goes on", stacklevel=2)
            return False

    def write_results_plot(self) -> bool:
        """results.png from metrics.csv (`plot_results`); True if it was written."""
        return self.plot("results.png", lambda: plot_results(self.metrics_file, self.path / "results.png"))

    def write_evaluation_plots(self, result: EvaluationResult, data: DetectionData, detections: list[dict]) -> bool:
        """plots/: the analysis of an evaluation (`write_evaluation_plots`) of `data`; True if it was written."""
        ground_truth = data.coco_ground_truth()
        return self.plot("plots/", lambda: write_evaluation_plots(result, ground_truth, detections, data, self.plots))

    def log_epoch(self, row: dict[str, Any], epoch: int, predictions: bool = False) -> None:
        """The epoch's metrics row in TensorBoard, and with `predictions` plots/val_predictions.png (only inside
        `with run:`, and only with `tensorboard`)."""
        if self._logger is None:
            return
        self._logger.log_scalars(row, epoch)
        if predictions:
            self._logger.log_image("val_predictions", self.plots / "val_predictions.png", epoch)

    def __enter__(self) -> RunFolder:
        self._logger = TensorBoardLogger(self.path / "tensorboard", enabled=self.tensorboard)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._logger is not None:
            self._logger.close()
            self._logger = None
