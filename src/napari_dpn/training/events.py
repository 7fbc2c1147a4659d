"""What a training run reports while it runs (progress bars, the widget's plot) and what it returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn


@dataclass
class StepEvent:
    step: int  # optimisation steps done
    total: int
    loss: float  # sum over the heads trained
    head_losses: dict[str, float]  # aux1, aux2, aux3, main
    seconds_per_step: float  # running mean of the last 20 steps
    eta_seconds: float


@dataclass
class ValidationEvent:
    step: int
    metrics: dict  # auc, threshold (Youden), se, sp, acc, f1 pooled over the validation FOVs


@dataclass
class CheckpointEvent:
    step: int
    path: Path


@dataclass
class MessageEvent:
    text: str


@dataclass
class CancelledEvent:
    step: int
    checkpoint: Path


@dataclass
class DoneEvent:
    step: int
    model_path: Path
    checkpoint: Path
    metrics: dict | None


@dataclass
class TrainResult:
    steps: int  # optimisation steps done in total (including resumed ones)
    cancelled: bool
    checkpoint: Path | None
    model_path: Path | None  # None when cancelled
    losses: list[float]
    metrics_before: dict | None
    metrics_after: dict | None
    threshold: float | None
    card: Any = None  # models.ModelCard of the saved model
    model: nn.Module | None = None  # the trained network, evaluation mode
