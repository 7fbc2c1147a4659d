"""The training loop: one run from its data to a saved model, with validation, cancel and divergence stops."""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import augment
from ..devices import select_device
from ..errors import OutputError, TrainingError
from ..model import NETWORKS, build_model, flush_denormals_
from ..models import LoadedModel, ModelCard
from ..scale import working_ppd
from .card import make_card, save_model_of, scale_block
from .checkpoint import LastGood, load_checkpoint, save_checkpoint
from .config import RUN_CONTROL, TrainConfig
from .data import network_input, prepare_pairs, to_working_scale
from .events import (
    CancelledEvent,
    CheckpointEvent,
    DoneEvent,
    MessageEvent,
    StepEvent,
    TrainResult,
)
from .loss import HEAD_NAMES, dpn_loss, param_groups
from .resume import checkpoint_payload, resume_run
from .setup import amp_dtype, load_init, make_sampler, resumed_network
from .validation import final_metrics, validate

# A loss above MAX_LOSS, or SPIKE_FACTOR times the median of the last SPIKE_WINDOW losses, means
# the run diverged (a healthy loss starts near 4 x 0.7 and falls).
MAX_LOSS = 1e4
SPIKE_FACTOR = 100.0
SPIKE_WINDOW = 50
_clock = time.monotonic  # the time limit's clock (a name of our own, so tests can drive it)
FLUSH_EVERY = 100  # steps between zeroing subnormal weights (a step count, so runs stay reproducible)


def _bad_loss(value: float, history: deque) -> str | None:
    if not math.isfinite(value):
        return "the loss became NaN or infinite"
    if value > MAX_LOSS:
        return f"the loss exploded to {value:.3g}"
    if len(history) >= 20:
        med = float(np.median(history))
        if value > SPIKE_FACTOR * med:
            return f"the loss jumped to {value:.3g}, {value / med:.0f}x its recent median"
    return None


class _Trainer:
    """One run; :func:`train` is the public entry point."""

    def __init__(
        self,
        config: TrainConfig,
        train_pairs,
        val_pairs,
        init,
        out_dir,
        resume,
        callback,
        should_stop,
        description,
        overwrite=True,
    ):
        self.overwrite = overwrite
        self.emit = callback or (lambda event: None)
        self.should_stop = should_stop or (lambda: False)
        ck = load_checkpoint(resume) if resume is not None else None
        self._configure(config, ck, init)
        self.description = description
        self._set_model(ck, init, resume)
        self._set_data(train_pairs, val_pairs)
        self._set_optimiser()
        if ck is not None:
            resume_run(self, ck, Path(resume).name)
        self.name = self.config.name or f"{self.arch}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        self.config.name = self.name
        self.out_dir = Path(out_dir).expanduser() if out_dir is not None else Path.cwd()
        self.ckpt_path = self.out_dir / f"{self.name}.ckpt.pt"
        if self.step % FLUSH_EVERY == 0:  # as an uninterrupted run would have at this step
            flush_denormals_(self.model)  # subnormal weights (e.g. in the release's) slow x86 convolutions ~100x
        self.good = LastGood(self.model, self.opt)  # weights to fall back to on divergence
        self.stopped_early: str | None = None
        self.saved_step: int | None = int(ck["step"]) if ck is not None else None  # last checkpoint written
        self.recent: deque = deque(self.losses[-SPIKE_WINDOW:], maxlen=SPIKE_WINDOW)

    def _configure(self, config: TrainConfig, ck: dict | None, init) -> None:
        """The run's settings (a resumed run's own, but for the run-control ones), device and precision."""
        config = dataclasses.replace(config)  # never modify the caller's object
        if ck is not None:
            saved = TrainConfig(**ck["config"])
            config = dataclasses.replace(saved, **{k: getattr(config, k) for k in RUN_CONTROL})
            if init is not None:
                self.emit(MessageEvent("resuming: the model comes from the checkpoint, the given init is ignored"))
        config.check()
        self.config = config
        if config.threads:
            torch.set_num_threads(int(config.threads))
        self.device = select_device(config.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # every step has the same crop size: pick the fastest kernels once
        self.amp = amp_dtype(config.amp, self.device)

    # Model and its input convention.
    def _set_model(self, ck: dict | None, init, resume) -> None:
        config = self.config
        if ck is not None:
            self.base_card, self.arch, self.input = ck["base_card"], ck["architecture"], dict(ck["input"])
            model = resumed_network(ck, config.seed, Path(resume).name)
        else:
            model, card, warnings = load_init(init)
            for text in warnings:
                self.emit(MessageEvent(f"warning: {text}"))
            self.base_card = card.to_dict() if card is not None else None
            if model is None:
                torch.manual_seed(config.seed)
                model = build_model(config.architecture)
            self.arch = getattr(model, "architecture", config.architecture)
            self.input = dict(card.input) if card is not None else dict(NETWORKS[self.arch].input)
            if config.clahe is not None:
                self.input["clahe"] = bool(config.clahe)
        self.input["clahe"] = bool(self.input.get("clahe", False))
        self.config.clahe = self.input["clahe"]
        self.config.architecture = self.arch
        self.crop_input = {**self.input, "clahe": False}  # CLAHE is applied to whole images, before cropping
        fmt = torch.channels_last if config.channels_last else torch.contiguous_format
        # Module.to takes memory_format at run time; torch's stubs omit it from every overload.
        self.model = model.to(self.device).to(memory_format=fmt).train()  # type: ignore[call-overload]
        self.fmt = fmt

    # Data.
    def _set_data(self, train_pairs, val_pairs) -> None:
        config = self.config
        self.train = prepare_pairs(train_pairs, "training", self.emit)
        self.val = prepare_pairs(val_pairs, "validation", self.emit) if val_pairs else []
        self.working_ppd: float | None = None  # the base model's working scale the images were resampled to
        if config.scale is not None:
            self._to_working_scale()
        self.config.crop = config.crop or augment.default_crop(self.train[0].rgb.shape)
        self.sampler = make_sampler(self.train, config, self.input["clahe"], self.emit)

    # Optimiser.
    def _set_optimiser(self) -> None:
        config, crop = self.config, self.config.crop
        assert crop is not None  # _set_data chose it
        decay = config.weight_decay / (crop * crop)  # the paper's lambda against a pixel-mean loss
        self.opt = torch.optim.Adam(param_groups(self.model, config.lr, decay, config.caffe_lr_mults), lr=config.lr)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        self.step = 0
        self.losses: list[float] = []
        self.metrics_before: dict | None = None
        self.history: list[dict] = []
        self.seconds = 0.0
        self.lr_changes: list[dict] = []  # {"step", "lr"} where a resumed run took another rate
        self.averaged_steps: list[int] | None = None  # the weights are the mean of these steps' (average_checkpoints)

    def _to_working_scale(self) -> None:
        """Resample the pairs as ``segment`` will resample photographs for the base model."""
        card = ModelCard.from_dict(self.base_card) if self.base_card else None
        ppd = working_ppd(card) if card is not None else None
        if ppd is None:
            what = f"the base model {card.name} records" if card is not None else "a fresh network has"
            self.emit(MessageEvent(f"{what} no working scale: training on the images at their own scale"))
            return
        assert card is not None  # ppd came from it
        loaded = LoadedModel(model=self.model, card=card)
        try:
            self.train = to_working_scale(self.train, loaded, self.config.scale, self.config.field_angle, self.emit)
            self.val = to_working_scale(self.val, loaded, self.config.scale, self.config.field_angle, self.emit)
        finally:
            self.model.train()
        if any(p.scale and p.scale["method"] != "fallback" for p in self.train):
            self.working_ppd = ppd  # else segment too keeps such photographs at their own scale

    # ---------------------------------------------------------------- pieces

    def batch(self, step: int):
        """Network input, label and loss mask of the crops of one step, on the device."""
        b = self.config.batch_size
        crops = [self.sampler.sample(step * b + j) for j in range(b)]
        x = network_input(np.stack([c[0] for c in crops]), self.crop_input, self.device)
        y = torch.from_numpy(np.stack([c[1] for c in crops])[:, None]).to(self.device)
        fov = np.stack([c[2] for c in crops])[:, None]
        m = torch.from_numpy(fov if self.config.fov_only else np.ones_like(fov)).to(self.device)
        return x.contiguous(memory_format=self.fmt), y, m

    def forward_loss(self, x, y, m):
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            outputs = self.model(x)
        return dpn_loss(outputs, y, m, self.config.aux_heads)

    def checkpoint(self) -> Path:
        step = self.step
        payload = checkpoint_payload(self)
        if self.weights_averaged():
            payload["averaged_steps"] = self.averaged_steps
        try:
            save_checkpoint(self.ckpt_path, payload)
        except OutputError as exc:  # a full disk, a read-only folder: errno-based, one sentence
            kept = (
                f"the checkpoint of step {self.saved_step} is kept: free some space and continue with "
                f"--resume {self.ckpt_path} (or Resume in the Fine-tune widget)"
                if self.saved_step is not None
                else "no checkpoint had been written yet"
            )
            raise OutputError(f"training stopped at step {step}: {str(exc).rstrip('.')}; {kept}") from None
        self.saved_step = step
        self.emit(CheckpointEvent(step, self.ckpt_path))
        return self.ckpt_path

    def weights_averaged(self) -> list[int] | None:
        """The steps whose mean the weights are, while no step has changed them since."""
        return self.averaged_steps if self.averaged_steps and self.step == max(self.averaged_steps) else None

    # ---------------------------------------------------------------- loop

    def train_step(self) -> list[float]:
        """One optimisation step; returns [total, aux1, aux2, aux3, main] losses.

        Raises TrainingError (after restoring and saving the last good weights) on divergence.
        """
        x, y, m = self.batch(self.step)
        total, heads = self.forward_loss(x, y, m)
        values = [float(v) for v in torch.stack([total.detach(), *(h.detach() for h in heads)]).cpu()]
        problem = _bad_loss(values[0], self.recent)
        if problem:
            self.stop_diverged(problem, self.good)
        self.good.save(self.step)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            total.backward()
            self.opt.step()
        self.step += 1
        self.losses.append(values[0])
        self.recent.append(values[0])
        return values

    def run(self) -> TrainResult:
        cfg = self.config
        if self.step == 0 and self.val and self.metrics_before is None:
            self.metrics_before = validate(self)
        times: deque = deque(maxlen=20)
        started = _clock()
        try:
            while self.step < cfg.steps:
                if cfg.time_limit is not None and _clock() - started >= cfg.time_limit:
                    # A budgeted run (a leased GPU, a night): finish properly, and say how far it got.
                    self.stopped_early = (
                        f"time limit of {cfg.time_limit:g} s reached after {self.step} of {cfg.steps} steps"
                    )
                    self.emit(MessageEvent(self.stopped_early))
                    break
                if self.should_stop():
                    path = self.checkpoint()
                    self.emit(CancelledEvent(self.step, path))
                    # What these weights would be worth saved (the widget's before/after table).
                    after, t = final_metrics(self)[:2] if self.val else (None, None)
                    return self.result(cancelled=True, after=after, threshold=t)
                t0 = time.perf_counter()
                values = self.train_step()
                if self.step % FLUSH_EVERY == 0:
                    flush_denormals_(self.model)  # weight decay keeps driving idle weights towards them
                dt = time.perf_counter() - t0
                times.append(dt)
                self.seconds += dt
                sps = sum(times) / len(times)
                self.emit(
                    StepEvent(
                        self.step,
                        cfg.steps,
                        values[0],
                        dict(zip(HEAD_NAMES, values[1:])),
                        sps,
                        sps * (cfg.steps - self.step),
                    )
                )
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                    self.checkpoint()
                if cfg.val_every and self.step % cfg.val_every == 0 and self.step < cfg.steps:
                    validate(self)
        except KeyboardInterrupt:
            # The interrupt may land inside an update: keep the last consistent weights.
            good = self.good
            if good.step is not None:
                good.restore()
                self.step = good.step
                self.losses = self.losses[: good.step]
                self.checkpoint()
            raise
        return self.finish()

    def stop_diverged(self, problem: str, good: LastGood) -> None:
        lr, failed = self.config.lr, self.step + 1
        if good.step is None:
            raise TrainingError(
                f"training stopped at step {failed}: {problem}; no update had been made, "
                f"so nothing was saved (try a learning rate below {lr:g})"
            )
        good.restore()
        self.step = good.step
        self.losses = self.losses[: good.step]
        path = self.checkpoint()
        raise TrainingError(
            f"training stopped at step {failed}: {problem}; the last good weights "
            f"(step {good.step}) are in {path} (try a learning rate below {lr:g})"
        )

    def finish(self) -> TrainResult:
        path = self.checkpoint()
        after, threshold, rule = final_metrics(self)
        card = make_card(self, after, threshold, rule)
        card.scale = scale_block(self, threshold)
        model_path = save_model_of(self, card)
        self.emit(DoneEvent(self.step, model_path, path, after))
        return self.result(cancelled=False, after=after, threshold=threshold, card=card, model_path=model_path)

    def result(self, cancelled: bool, after=None, threshold=None, card=None, model_path=None) -> TrainResult:
        self.model.eval()
        return TrainResult(
            steps=self.step,
            cancelled=cancelled,
            checkpoint=self.ckpt_path,
            model_path=model_path,
            losses=list(self.losses),
            metrics_before=self.metrics_before,
            metrics_after=after,
            threshold=threshold,
            card=card,
            model=self.model,
        )


def train(
    config: TrainConfig,
    train_pairs,
    val_pairs=None,
    init=None,
    out_dir=None,
    resume=None,
    callback: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    description: str | None = None,
    overwrite: bool = True,
) -> TrainResult:
    """Train or fine-tune a DPN; returns when done, cancelled, or raises TrainingError on divergence.

    ``train_pairs`` / ``val_pairs``: ``(rgb float32 (H, W, 3) 0..1, label bool, fov bool or None)``
    tuples or dataset ``Sample`` objects.  ``init``: None (fresh ``config.architecture``), a
    model name or path, or a ``LoadedModel`` (copied, not modified).  ``out_dir`` receives
    ``<name>.ckpt.pt`` (every ``checkpoint_every`` steps, on cancel and at the end) and the final
    ``<name>.safetensors`` + ``.json`` card.  ``resume``: a checkpoint to continue from (its
    settings win except the run-control ones in ``RUN_CONTROL``).  ``callback(event)`` receives
    the event dataclasses above; ``should_stop()`` is polled before every step.  With
    ``overwrite=False`` an existing ``<name>.safetensors`` or ``.json`` in ``out_dir`` is never
    replaced: the model is saved as ``<name>-2`` (and so on) with a message.

    Parameters
    ----------
    config : TrainConfig
        The run's settings (steps, crop, learning rate, device, the model's name...).
    train_pairs, val_pairs, init, out_dir, resume, callback, should_stop, description, overwrite
        As above.

    Returns
    -------
    TrainResult
        Steps done, whether it was cancelled, the saved model's path and card, the losses and the
        metrics before and after.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from napari_dpn import TrainConfig, train
    >>> yy, xx = np.mgrid[:64, :64]
    >>> fov = (yy - 32) ** 2 + (xx - 32) ** 2 < 30**2
    >>> rgb = np.where(fov[..., None], np.float32([0.8, 0.4, 0.2]), np.float32(0))
    >>> vessels = np.zeros((64, 64), bool)
    >>> vessels[30:33, 4:60] = True
    >>> rgb[vessels] *= 0.5
    >>> config = TrainConfig(steps=2, crop=32, device="cpu", name="tiny", val_every=0)
    >>> result = train(config, [(rgb, vessels, fov)], out_dir=tempfile.mkdtemp())
    >>> result.steps, result.cancelled, result.model_path.name
    (2, False, 'tiny.safetensors')
    """
    return _Trainer(
        config, train_pairs, val_pairs, init, out_dir, resume, callback, should_stop, description, overwrite
    ).run()
