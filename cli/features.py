"""Cached backbone features, for runs that train only the head (`data.cache_features`).

When nothing but `fc` trains, every BatchNorm layer is in eval mode and the
training transform draws no random numbers, the backbone maps each image to
the same features in every epoch. They are then computed once, in one
forward pass over the images, and the loop trains `fc` on them: each epoch
becomes a matrix product instead of a pass through the network. The features
are held in memory: 4 bytes x fc.in_features (512 for resnet18/34, 2,048 for
resnet50) per image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import engine
from cli.build import Trainee
from cli.data import DataLoader, ImageDataset
from engine import nn


def head_only(trainee: Trainee, dataset: ImageDataset) -> bool:
    """Whether the backbone's output for each image stays the same for the whole run."""
    model = trainee.model
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    return (
        all(name.startswith("fc.") for name in trainable)
        and len(trainee.frozen_batchnorms) == len(batchnorms)
        and dataset.deterministic
    )


class Features:
    """Backbone features and labels, which the DataLoader reads as it reads images."""

    deterministic = True

    def __init__(self, features: np.ndarray, labels: np.ndarray) -> None:
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, index: int, rng: Any = None) -> tuple[np.ndarray, int]:
        return self.features[index], int(self.labels[index])


def backbone_features(model: nn.Module, loader: DataLoader) -> Features:
    """The input of `model.fc` for every image of the loader, in order, computed in eval mode."""
    captured: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    hook = model.fc.register_forward_pre_hook(
        lambda fc, args: captured.append(args[0].numpy().copy())
    )
    model.eval()
    try:
        with engine.no_grad():
            for images, batch_labels in loader:
                model(engine.from_numpy(images))
                labels.append(batch_labels)
    finally:
        hook.remove()
    if not labels:
        return Features(np.empty((0, model.fc.in_features), np.float32), np.empty(0, np.int64))
    return Features(np.concatenate(captured), np.concatenate(labels))
