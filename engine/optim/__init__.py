"""Optimizers and learning-rate schedules, as ``torch.optim``."""

from engine.optim import lr_scheduler
from engine.optim.adam import Adam, AdamW
from engine.optim.optimizer import Optimizer
from engine.optim.sgd import SGD

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "lr_scheduler"]
