"""Checkpoints (atomic, resumable) and the in-memory copy of the last good weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import TrainingError

CHECKPOINT_FORMAT = "napari-dpn-checkpoint/1"


class _LastGood:
    """The last weights (and Adam moments) that gave a finite loss, copied into preallocated tensors.

    Taken before every update, so it must be cheap: ~1 ms for dpn on the CPU, where a
    ``deepcopy`` of the state dicts took 12 ms (and would dominate a 20 ms GPU step).
    """

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer):
        self.model, self.opt = model, opt
        self.step: int | None = None
        self._saved: list[torch.Tensor] = []
        self._had_state = False

    def _live(self) -> list[torch.Tensor]:
        params = [p for g in self.opt.param_groups for p in g["params"]]
        moments = [st[k] for p in params if (st := self.opt.state.get(p)) for k in sorted(st)]
        return [p.detach() for p in params] + moments

    @torch.no_grad()
    def save(self, step: int) -> None:
        live = self._live()
        if len(live) != len(self._saved):
            self._saved = [t.clone() for t in live]
        else:
            torch._foreach_copy_(self._saved, live)  # one launch, not ~300: matters for a few-ms GPU step
        self._had_state, self.step = bool(self.opt.state), step

    @torch.no_grad()
    def restore(self) -> None:
        if not self._had_state:
            self.opt.state.clear()
        for dst, src in zip(self._live(), self._saved):
            dst.copy_(src)


def _save_checkpoint(path: Path, payload: dict) -> Path:
    from ..errors import OutputError
    from ..image_io import atomic_write, ensure_output_folder

    ensure_output_folder(path.parent)
    try:
        with atomic_write(path) as tmp:
            torch.save(payload, tmp)
    except RuntimeError as exc:  # torch's zip writer reports a failed write (e.g. a full disk) this way
        if "write" not in str(exc).lower():
            raise
        raise OutputError(f"Cannot write {path}: the write failed (is the disk full?).") from None
    return path


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`train` (tensors on the CPU)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TrainingError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(f"{path.name} is not a readable checkpoint ({exc})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path.name} is not a napari-dpn training checkpoint")
    return ck


def average_checkpoints(paths, out) -> Path:
    """Write ``out``: a checkpoint whose weights are the mean of those of ``paths``, checkpoints of
    one run (stochastic weight averaging, Izmailov et al. 2018). At a low learning rate the weights
    wander around a minimum; their mean lies nearer its centre than any one of them, and dpn has no
    batch norm whose statistics would need re-estimating. Everything else (Adam state, step,
    losses) is the latest checkpoint's, so resuming from ``out`` with ``--steps`` at its step
    finishes the run with the averaged weights (threshold and card as any run's), and
    ``averaged_steps`` records which steps went into the mean."""
    cks = sorted((load_checkpoint(p) for p in paths), key=lambda ck: ck["step"])
    if len(cks) < 2:
        raise TrainingError("averaging needs at least two checkpoints")
    last = cks[-1]
    steps = [ck["step"] for ck in cks]
    if len(set(steps)) != len(steps):
        raise TrainingError(f"two of the checkpoints are of the same step ({steps})")
    for ck in cks[:-1]:
        if ck["architecture"] != last["architecture"] or ck["model"].keys() != last["model"].keys():
            raise TrainingError("the checkpoints are of different networks; only one run's can be averaged")
        if ck.get("pairs") != last.get("pairs"):
            raise TrainingError("the checkpoints were trained on different images; only one run's can be averaged")
    model = {
        k: (sum(ck["model"][k].double() for ck in cks) / len(cks)).to(last["model"][k].dtype) for k in last["model"]
    }
    return _save_checkpoint(Path(out), {**last, "model": model, "averaged_steps": steps})


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
