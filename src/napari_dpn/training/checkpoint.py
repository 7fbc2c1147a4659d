"""Checkpoints (atomic, resumable) and the in-memory copy of the last good weights."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import TrainingError

CHECKPOINT_FORMAT = "napari-dpn-checkpoint/1"


class LastGood:
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


def save_checkpoint(path: Path, payload: dict) -> Path:
    """Write ``payload`` atomically.  Serialised in memory first and written with plain file I/O,
    so a full disk is an OSError with its errno (torch's own zip writer reports only a message)
    and the OutputError says why in one sentence; the previous checkpoint stays as it was."""
    import io

    from ..files import atomic_write
    from ..image_writers import ensure_output_folder

    ensure_output_folder(path.parent)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getbuffer())
        f.flush()
        os.fsync(f.fileno())  # a full disk can surface only here (delayed allocation)
    return path


def _newer(fmt) -> bool:
    """True for a napari-dpn checkpoint format newer than this version reads."""
    if not (isinstance(fmt, str) and fmt.startswith("napari-dpn-checkpoint/")):
        return False
    try:
        return int(fmt.rsplit("/", 1)[1]) > int(CHECKPOINT_FORMAT.rsplit("/", 1)[1])
    except ValueError:
        return False


def _bad_field(ck: dict) -> str | None:
    """What is wrong with a checkpoint's fields, in a few words (None: they look usable)."""
    from dataclasses import fields

    from ..model import ARCHITECTURES
    from .config import TrainConfig

    step = ck.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"its step is {step!r}, not a whole number of 0 or more"
    if ck.get("architecture") not in ARCHITECTURES:
        return f"its architecture {ck.get('architecture')!r} is not one of {', '.join(ARCHITECTURES)}"
    model = ck.get("model")
    if not isinstance(model, dict) or not model or not all(isinstance(v, torch.Tensor) for v in model.values()):
        return "its weights ('model') are not a set of tensors"
    for key in ("optimizer", "config", "input"):
        if not isinstance(ck.get(key), dict):
            return f"its '{key}' is not a mapping"
    if not isinstance(ck.get("torch_rng"), torch.Tensor) or ck["torch_rng"].dtype != torch.uint8:
        return "its random-number state is not a byte tensor"
    losses = ck.get("losses")
    if not isinstance(losses, list) or not all(isinstance(v, (int, float)) for v in losses):
        return "its loss history is not a list of numbers"
    if ck.get("base_card") is not None and not isinstance(ck["base_card"], dict):
        return "its base model card is not a mapping"
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(ck["config"]) - known)
    if unknown:
        return f"its settings include {', '.join(unknown)}, unknown to this version (written by a newer napari-dpn?)"
    try:
        TrainConfig(**ck["config"]).check()
    except (TypeError, ValueError, TrainingError) as exc:
        return f"its settings are not valid ({str(exc).rstrip('.')})"
    return None


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`train` (tensors on the CPU); TrainingError with one
    sentence for a file that is not one, one from a newer version, or one with malformed fields."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TrainingError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types (pickle, zip, unpickling refusals)
        raise TrainingError(f"{path.name} is not a readable checkpoint ({exc})") from None
    fmt = ck.get("format") if isinstance(ck, dict) else None
    if _newer(fmt):
        raise TrainingError(
            f"{path.name} was written by a newer napari-dpn ({fmt}; this version reads "
            f"{CHECKPOINT_FORMAT}): update napari-dpn to resume it"
        )
    if fmt != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path.name} is not a napari-dpn training checkpoint")
    problem = _bad_field(ck)
    if problem:
        raise TrainingError(f"{path.name} cannot be resumed: {problem}")
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
    return save_checkpoint(Path(out), {**last, "model": model, "averaged_steps": steps})


def to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_cpu(v) for v in obj]
    return obj
