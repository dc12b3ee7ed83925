"""Shared fixtures: one CPU thread, a tiny synthetic dataset, and tiny-model overrides for API/CLI runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from anchorfree.data.synth import write_synthetic_dataset
from anchorfree.models.backbones import forget_unavailable_weights


@pytest.fixture(autouse=True, scope="session")
def single_thread() -> None:
    """The test machine is shared (2 cores): keep torch on one thread."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never read or write the user's cache folder (image checks, synthetic data)."""
    os.environ["ANCHORFREE_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def fresh_weights_memo() -> None:
    """Each test starts as a new process would: no remembered ImageNet-weights failure, no warning given yet."""
    forget_unavailable_weights()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 train / 8 val synthetic shape images (6 classes), written once per session."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("tiny") / "shapes", num_train=16, num_val=8, seed=1)


@pytest.fixture(scope="session")
def tiny_overrides(tiny_dataset: Path) -> Callable[..., dict[str, Any]]:
    """tiny_overrides(project, **extra) -> dotted overrides for a ~1 s training run on `tiny_dataset`.

    Extra keys use "__" for "." (train__epochs=2 -> "train.epochs": 2). The tiny FCOS head's keys are left out
    when extra names another family (model__name=centernet): a family's keys apply to that family only.
    """

    def make(project: Path, **extra: Any) -> dict[str, Any]:
        tiny_fcos = {"model.fcos.fpn_channels": 32, "model.fcos.head_convs": 1, "model.fcos.norm_groups": 8}
        overrides = {
            "data.train": str(tiny_dataset / "instances_train.json"),
            "data.val": str(tiny_dataset / "instances_val.json"),
            "model.backbone": "mobilenet_v2",
            "model.backbone_width": 0.25,
            "model.pretrained_backbone": False,
            **(tiny_fcos if extra.get("model__name", "fcos") == "fcos" else {}),
            "data.train_sizes": [128],
            "data.val_size": 128,
            "data.max_size": 160,
            "data.workers": 0,
            "train.batch_size": 4,
            "train.epochs": 1,
            "train.eval_every": 1,
            "train.project": str(project),
        }
        overrides.update({key.replace("__", "."): value for key, value in extra.items()})
        return overrides

    return make


def train_on_one_batch(model: torch.nn.Module, images: torch.Tensor, targets: list[dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
    """Optimise `model` on one batch for `steps` steps; returns the total loss before each step."""
    model.train()
    totals = []
    for _ in range(steps):
        total = sum(model(images, targets).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    return totals


@pytest.fixture
def overfit() -> Callable[..., list[float]]:
    """`overfit(model, images, targets, optimizer, steps)`: the losses of a short training run on one batch."""
    return train_on_one_batch
