"""Resuming a training run from its checkpoint, and what a checkpoint holds: the two halves of
one format (``checkpoint.CHECKPOINT_FORMAT``), kept side by side so that a field written is a
field read back.  ``trainer._Trainer`` calls them with itself."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from ..errors import TrainingError
from .checkpoint import CHECKPOINT_FORMAT, to_cpu
from .data import fingerprint
from .events import MessageEvent

# ``t`` is the trainer (``trainer._Trainer``), typed Any: importing it here would make the two
# modules import each other.


def resume_run(t: Any, ck: dict, name: str) -> None:
    """The optimiser state, losses and history of a checkpoint; the given learning rate wins."""
    lr = t.config.lr
    restore_state(t, ck, name)
    saved_lr = t.opt.param_groups[0]["lr"] / t.opt.param_groups[0].get("lr_mult", 1.0)
    for group in t.opt.param_groups:  # load_state_dict brings back the old rate; --lr must win
        group["lr"] = lr * group.get("lr_mult", 1.0)
    t.step = int(ck["step"])
    t.losses = list(ck["losses"])
    t.metrics_before = ck.get("metrics_before")
    t.history = list(ck.get("history", []))
    t.seconds = float(ck.get("seconds", 0.0))
    t.lr_changes = list(ck.get("lr_changes", []))
    t.description = t.description or ck.get("description")
    t.averaged_steps = ck.get("averaged_steps")
    if ck.get("pairs") != fingerprint(t.train):
        t.emit(
            MessageEvent(
                "resuming with other training images than the checkpoint was made with; "
                "the run continues but will not match an uninterrupted one"
            )
        )
    t.emit(MessageEvent(f"resumed from step {t.step}"))
    if not math.isclose(saved_lr, lr, rel_tol=1e-6):
        t.lr_changes.append({"step": t.step, "lr": lr, "was": saved_lr})
        t.emit(MessageEvent(f"learning rate {lr:g} from here on (the run had {saved_lr:g})"))


def restore_state(t: Any, ck: dict, name: str) -> None:
    """The optimiser, gradient scaler and random state of a checkpoint; TrainingError with one
    sentence when they do not fit this run (a damaged or foreign file)."""
    try:
        t.opt.load_state_dict(ck["optimizer"])
        if t.scaler is not None and ck.get("scaler"):
            t.scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["torch_rng"])
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as exc:
        text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise TrainingError(
            f"{name} cannot be resumed: its optimiser or random state does not fit this network ({text})"
        ) from None


def checkpoint_payload(t: Any) -> dict:
    """Everything a resumed run needs, as of the trainer's current step."""
    step = t.step
    return {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "architecture": t.arch,
        "model": {k: v.detach().cpu() for k, v in t.model.state_dict().items()},
        "optimizer": to_cpu(t.opt.state_dict()),
        "scaler": t.scaler.state_dict() if t.scaler is not None else None,
        "torch_rng": torch.get_rng_state(),
        "config": dataclasses.asdict(t.config),
        "base_card": t.base_card,
        "input": t.input,
        "losses": t.losses[:step],
        "metrics_before": t.metrics_before,
        "history": [h for h in t.history if h["step"] <= step],
        "seconds": t.seconds,
        "lr_changes": [c for c in t.lr_changes if c["step"] <= step],
        "pairs": fingerprint(t.train),
        "description": t.description,
    }
