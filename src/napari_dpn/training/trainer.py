"""The training loop: one run from its data to a saved model, with validation, cancel and divergence stops."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import augment
from ..errors import OutputError, OutputExistsError, TrainingError
from ..model import build_model, flush_denormals_
from .checkpoint import (
    CHECKPOINT_FORMAT,
    _LastGood,
    _save_checkpoint,
    _to_cpu,
    load_checkpoint,
)
from .config import RUN_CONTROL, TrainConfig
from .data import Pair, _fingerprint, network_input, prepare_pairs
from .events import (
    CancelledEvent,
    CheckpointEvent,
    DoneEvent,
    MessageEvent,
    StepEvent,
    TrainResult,
    ValidationEvent,
)
from .loss import HEAD_NAMES, dpn_loss, param_groups

# A loss above MAX_LOSS, or SPIKE_FACTOR times the median of the last SPIKE_WINDOW losses, means
# the run diverged (a healthy loss starts near 4 x 0.7 and falls).
MAX_LOSS = 1e4
SPIKE_FACTOR = 100.0
SPIKE_WINDOW = 50
_clock = time.monotonic  # the time limit's clock (a name of our own, so tests can drive it)
FLUSH_EVERY = 100  # steps between zeroing subnormal weights (a step count, so runs stay reproducible)


def _device(name: str) -> torch.device:
    from ..devices import select_device

    return select_device(name)


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off":
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def summarise_metrics(report: dict, at: str | None = None) -> dict:
    """auc, se, sp, acc, f1 and threshold of a ``metrics.evaluate`` report: at the threshold it was
    given (``train_threshold``; ``at`` says whose, e.g. "the card's threshold") when there is one,
    else at the Youden point; ``youden_threshold`` always."""
    pooled = report["pooled"]
    given = pooled.get("train_threshold")
    y = given or pooled["youden"]
    return {
        "auc": pooled["auc"],
        "threshold": y["threshold"],
        "se": y["se"],
        "sp": y["sp"],
        "acc": y["acc"],
        "f1": y["f1"],
        "at": (at or "the given threshold") if given else "the Youden point",
        "youden_threshold": pooled["youden"]["threshold"],
    }


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


def _load_init(init, device: torch.device):
    """(network, base card or None) from None / a model name or path / a LoadedModel."""
    if init is None:
        return None, None, []
    if hasattr(init, "model") and hasattr(init, "card"):
        return copy.deepcopy(init.model), copy.deepcopy(init.card), []
    from ..models import load_model

    loaded = load_model(init, device="cpu")
    return loaded.model, loaded.card, loaded.warnings


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
        from ..models import FRESH_INPUT

        self.overwrite = overwrite
        self.emit = callback or (lambda event: None)
        self.should_stop = should_stop or (lambda: False)
        ck = load_checkpoint(resume) if resume is not None else None
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
        self.device = _device(config.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # every step has the same crop size: pick the fastest kernels once
        self.amp = _amp_dtype(config.amp, self.device)
        self.description = description

        # Model and its input convention.
        if ck is not None:
            self.base_card = ck["base_card"]
            self.arch = ck["architecture"]
            self.input = dict(ck["input"])
            torch.manual_seed(config.seed)
            model = build_model(self.arch)
            try:
                model.load_state_dict(ck["model"])
            except (RuntimeError, ValueError, TypeError) as exc:
                raise TrainingError(
                    f"{Path(resume).name} cannot be resumed: its weights do not fit a {self.arch} network "
                    f"({str(exc).strip().splitlines()[0][:160]})"
                ) from None
        else:
            model, card, warnings = _load_init(init, self.device)
            for text in warnings:
                self.emit(MessageEvent(f"warning: {text}"))
            self.base_card = card.to_dict() if card is not None else None
            if model is None:
                torch.manual_seed(config.seed)
                model = build_model(config.architecture)
            self.arch = getattr(model, "architecture", config.architecture)
            self.input = dict(card.input) if card is not None else dict(FRESH_INPUT)
            if config.clahe is not None:
                self.input["clahe"] = bool(config.clahe)
        self.input["clahe"] = bool(self.input.get("clahe", False))
        self.config.clahe = self.input["clahe"]
        self.config.architecture = self.arch
        self.crop_input = {**self.input, "clahe": False}  # CLAHE is applied to whole images, before cropping
        fmt = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = model.to(self.device).to(memory_format=fmt).train()
        self.fmt = fmt

        # Data.
        self.train = prepare_pairs(train_pairs, "training", self.emit)
        self.val = prepare_pairs(val_pairs, "validation", self.emit) if val_pairs else []
        self.working_ppd = None  # the base model's working scale the images were resampled to
        if config.scale is not None:
            self._to_working_scale()
        crop = config.crop or augment.default_crop(self.train[0].rgb.shape)
        self.config.crop = crop
        t0 = time.perf_counter()
        views = []
        robust = config.augment and config.augment_mode == "robust"
        for p in self.train:
            if robust:  # CLAHE per crop, after the camera jitter (augment.RobustSampler)
                views.append(augment.View(augment.to_uint8(p.rgb), p.label, p.fov, p.name))
            else:
                rgb = augment.clahe(p.rgb) if self.input["clahe"] else p.rgb
                views += augment.offline_views(rgb, p.label, p.fov, augment=config.augment, name=p.name)
        if robust:
            self.sampler = augment.RobustSampler(
                views, crop, seed=config.seed, clahe=self.input["clahe"], off=config.augment_off
            )
        else:
            self.sampler = augment.PatchSampler(views, crop, seed=config.seed, mirror=config.augment)
        self.emit(
            MessageEvent(
                f"prepared {len(views)} training views ({len(self.train)} image(s) x "
                f"{len(views) // len(self.train)}) in {time.perf_counter() - t0:.1f} s; crop {crop}"
            )
        )

        # Optimiser.
        decay = config.weight_decay / (crop * crop)  # the paper's lambda against a pixel-mean loss
        self.opt = torch.optim.Adam(param_groups(self.model, config.lr, decay, config.caffe_lr_mults), lr=config.lr)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        self.step = 0
        self.losses: list[float] = []
        self.metrics_before = None
        self.history: list[dict] = []
        self.seconds = 0.0
        self.lr_changes: list[dict] = []  # {"step", "lr"} where a resumed run took another rate
        self.averaged_steps: list[int] | None = None  # the weights are the mean of these steps' (average_checkpoints)
        if ck is not None:
            self._restore_state(ck, Path(resume).name)
            saved_lr = self.opt.param_groups[0]["lr"] / self.opt.param_groups[0].get("lr_mult", 1.0)
            for group in self.opt.param_groups:  # load_state_dict brings back the old rate; --lr must win
                group["lr"] = config.lr * group.get("lr_mult", 1.0)
            self.step = int(ck["step"])
            self.losses = list(ck["losses"])
            self.metrics_before = ck.get("metrics_before")
            self.history = list(ck.get("history", []))
            self.seconds = float(ck.get("seconds", 0.0))
            self.lr_changes = list(ck.get("lr_changes", []))
            self.description = self.description or ck.get("description")
            self.averaged_steps = ck.get("averaged_steps")
            if ck.get("pairs") != _fingerprint(self.train):
                self.emit(
                    MessageEvent(
                        "resuming with other training images than the checkpoint was made with; "
                        "the run continues but will not match an uninterrupted one"
                    )
                )
            self.emit(MessageEvent(f"resumed from step {self.step}"))
            if not math.isclose(saved_lr, config.lr, rel_tol=1e-6):
                self.lr_changes.append({"step": self.step, "lr": config.lr, "was": saved_lr})
                self.emit(MessageEvent(f"learning rate {config.lr:g} from here on (the run had {saved_lr:g})"))
        self.name = config.name or f"{self.arch}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        self.config.name = self.name
        self.out_dir = Path(out_dir).expanduser() if out_dir is not None else Path.cwd()
        self.ckpt_path = self.out_dir / f"{self.name}.ckpt.pt"
        if self.step % FLUSH_EVERY == 0:  # as an uninterrupted run would have at this step
            flush_denormals_(self.model)  # subnormal weights (e.g. in the release's) slow x86 convolutions ~100x
        self.good = _LastGood(self.model, self.opt)  # weights to fall back to on divergence
        self.stopped_early: str | None = None
        self.saved_step: int | None = int(ck["step"]) if ck is not None else None  # last checkpoint written
        self.recent: deque = deque(self.losses[-SPIKE_WINDOW:], maxlen=SPIKE_WINDOW)

    def _restore_state(self, ck: dict, name: str) -> None:
        """The optimiser, gradient scaler and random state of a checkpoint; TrainingError with one
        sentence when they do not fit this run (a damaged or foreign file)."""
        try:
            self.opt.load_state_dict(ck["optimizer"])
            if self.scaler is not None and ck.get("scaler"):
                self.scaler.load_state_dict(ck["scaler"])
            torch.set_rng_state(ck["torch_rng"])
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as exc:
            text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise TrainingError(
                f"{name} cannot be resumed: its optimiser or random state does not fit this network ({text})"
            ) from None

    def _to_working_scale(self) -> None:
        """Resample the pairs as ``segment`` will resample photographs for the base model."""
        from ..models import LoadedModel, ModelCard
        from ..scale import working_ppd
        from .data import to_working_scale

        card = ModelCard.from_dict(self.base_card) if self.base_card else None
        ppd = working_ppd(card) if card is not None else None
        if ppd is None:
            what = f"the base model {card.name} records" if card is not None else "a fresh network has"
            self.emit(MessageEvent(f"{what} no working scale: training on the images at their own scale"))
            return
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

    def predict(self, pairs: list[Pair]) -> list[np.ndarray]:
        """Whole-image probabilities, exactly as inference computes them."""
        from ..inference import predict
        from ..models import LoadedModel, ModelCard

        card = ModelCard(name=self.name, architecture=self.arch, input=dict(self.input))
        loaded = LoadedModel(model=self.model, card=card)
        try:
            # fp32: validation metrics and the card's threshold must not depend on the CPU's bf16 support
            return [predict(loaded, p.rgb, device=self.device, precision="fp32").probability for p in pairs]
        finally:
            self.model.train()

    def evaluate(self, pairs: list[Pair], threshold=None, at=None, probs=None) -> dict | None:
        """Metrics on ``pairs`` at ``threshold`` (labelled ``at``), or at their Youden point."""
        from .. import metrics
        from ..errors import DPNError

        probs = self.predict(pairs) if probs is None else probs
        try:
            report = metrics.evaluate(
                probs,
                [p.label for p in pairs],
                [p.fov for p in pairs],
                names=[p.name for p in pairs],
                train_threshold=threshold,
            )
        except DPNError as exc:
            self.emit(MessageEvent(f"validation skipped: {exc}"))
            return None
        return summarise_metrics(report, at)

    def validate(self) -> dict | None:
        """Metrics of the weights at this step: before training at the base model's own threshold
        (the one it is used with), during training at the Youden point."""
        if not self.val:
            return None
        base_t = (self.base_card or {}).get("threshold")
        if self.step == 0 and isinstance(base_t, (int, float)):
            m = self.evaluate(self.val, float(base_t), f"the threshold of {self.base_card.get('name', 'the base')}")
        else:
            m = self.evaluate(self.val)
        if m is not None:
            self.history.append({"step": self.step, **m})
            self.emit(ValidationEvent(self.step, m))
        return m

    def final_metrics(self) -> tuple[dict | None, float, str]:
        """(validation metrics at the card's threshold, that threshold, its rule) for these weights:
        the threshold by ``config.threshold_rule`` on the validation images (else the training
        images), and the validation metrics at exactly that threshold."""
        from .. import metrics
        from ..errors import DPNError

        rule = self.config.threshold_rule
        pairs, which = (self.val, "validation") if self.val else (self.train, "training")
        self.emit(MessageEvent(f"choosing the threshold on the {len(pairs)} {which} image(s)"))
        probs = self.predict(pairs)
        what = "Youden point" if rule == "youden" else "accuracy-maximising point"
        scale = f" at {self.working_ppd:g} px/deg" if self.working_ppd else ""
        try:
            t = float(
                metrics.choose_train_threshold(probs, [p.label for p in pairs], [p.fov for p in pairs], rule=rule)
            )
            text = f"{what} on the {len(pairs)} {which} images{scale}"
        except DPNError:
            t, text = 0.5, "default 0.5 (the annotations hold a single class)"
        after = None
        if self.val:
            after = self.evaluate(self.val, t, "the card's threshold", probs=probs)
            if after is not None:
                self.history.append({"step": self.step, **after})
                self.emit(ValidationEvent(self.step, after))
        return after, t, text

    def checkpoint(self) -> Path:
        step = self.step
        payload = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "architecture": self.arch,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": _to_cpu(self.opt.state_dict()),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "torch_rng": torch.get_rng_state(),
            "config": dataclasses.asdict(self.config),
            "base_card": self.base_card,
            "input": self.input,
            "losses": self.losses[:step],
            "metrics_before": self.metrics_before,
            "history": [h for h in self.history if h["step"] <= step],
            "seconds": self.seconds,
            "lr_changes": [c for c in self.lr_changes if c["step"] <= step],
            "pairs": _fingerprint(self.train),
            "description": self.description,
        }
        if self.weights_averaged():
            payload["averaged_steps"] = self.averaged_steps
        try:
            _save_checkpoint(self.ckpt_path, payload)
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
            self.metrics_before = self.validate()
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
                    after, t = self.final_metrics()[:2] if self.val else (None, None)
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
                    self.validate()
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

    def stop_diverged(self, problem: str, good: _LastGood) -> None:
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
        after, threshold, rule = self.final_metrics()
        card = self.make_card(after, threshold, rule)
        card.scale = self.scale_block(threshold)
        model_path = self.save(card)
        self.emit(DoneEvent(self.step, model_path, path, after))
        return self.result(cancelled=False, after=after, threshold=threshold, card=card, model_path=model_path)

    def scale_block(self, threshold: float) -> dict:
        """The card's ``scale``: the working scale the images were resampled to (``working_ppd`` of
        the dataset run, or the base model's for a fine-tune at its scale; else the base model's,
        inherited), the base's two-scale fusion when the new model works at the base's scale, and
        the network's own thickest-vessel calibre there, measured on the training images with a
        circular FOV (the reference of the calibre scale estimate)."""
        from ..scale import fov_diameter
        from ..segmentation import vessel_calibre

        base = dict((self.base_card or {}).get("scale") or {})
        ppd = self.config.working_ppd or self.working_ppd or base.get("working_ppd")
        if not ppd:
            return {}
        disc = [p for p in self.train if fov_diameter(p.fov) is not None][:8] or self.train[:8]
        calibres = [
            c
            for p, prob in zip(disc, self.predict(disc))
            if (c := vessel_calibre(prob >= threshold, p.fov)) is not None
        ]
        if self.config.working_ppd:
            how = f"training images resampled to {ppd:g} px/deg"
        elif self.working_ppd:
            how = (
                f"training images resampled to {ppd:g} px/deg (the working scale of "
                f"{base.get('name') or self.base_card.get('name')}) as segment resamples photographs"
            )
        else:
            how = f"inherited from {base.get('name') or (self.base_card or {}).get('name', 'the base model')}"
        block = {
            "working_ppd": float(ppd),
            "trained_ppd": float(ppd),
            "source": how,
            "vessel_calibre_px": round(float(np.mean(calibres)), 3) if calibres else None,
            "vessel_calibre_rule": f"95th percentile of the skeleton width of the map at the card's threshold, "
            f"mean over {len(calibres)} training images",
        }
        guessed = [p.name for p in self.train if p.scale and p.scale["method"] == "default-angle"]
        if self.working_ppd and guessed and base.get("vessel_calibre_px"):
            # Images scaled with the 45 degree guess are at 12 px/deg only if the guess is right: their
            # calibre is no reference for the calibre estimate; the base's, measured at a known scale, is.
            block["vessel_calibre_px"] = base["vessel_calibre_px"]
            block["vessel_calibre_rule"] = (
                f"inherited from {self.base_card.get('name')} ({len(guessed)} training image(s) were scaled "
                "with the 45 degree field-angle guess, so their own calibre is not at a known scale)"
            )
        if base.get("fusion") is not None and math.isclose(float(ppd), float(base.get("working_ppd") or 0)):
            # The same scale as the base: its measured two-scale setting holds for the new model too.
            block["fusion"] = base["fusion"]
            src = base.get("fusion_source")
            block["fusion_source"] = f"inherited from {self.base_card.get('name')}" + (f": {src}" if src else "")
        return block

    def save(self, card) -> Path:
        """Save the model as ``<name>.safetensors``; without ``overwrite`` an existing model of that
        name (one that appeared while this run trained) is kept and this one gets ``<name>-2``..."""
        from ..models import save_model

        base, n = self.name, 1
        while True:
            try:
                return save_model(self.model, card, self.out_dir / f"{card.name}.safetensors", overwrite=self.overwrite)
            except OutputExistsError:
                n += 1
                card.name = f"{base}-{n}"
                self.emit(
                    MessageEvent(
                        f"a model named {base} appeared in {self.out_dir} during training; "
                        f"kept it and saving this one as {card.name}"
                    )
                )
            except OutputError as exc:  # a full disk (errno-based, in atomic_write)
                raise OutputError(
                    f"the model was not saved: {str(exc).rstrip('.')}; its weights are in the checkpoint "
                    f"{self.ckpt_path} (step {self.step}): free some space and save them with "
                    f"napari-dpn train --resume {self.ckpt_path} (or Resume in the Fine-tune widget)"
                ) from None

    def make_card(self, after: dict | None, threshold: float, rule: str):
        from ..models import ModelCard

        cfg = self.config
        base = self.base_card or {}
        data = self.description or f"{len(self.train)} image(s): " + ", ".join(p.name for p in self.train[:10])
        metrics = dict(after or {})
        if after is not None:
            metrics["dataset"] = f"{len(self.val)} validation image(s)"
            metrics["before"] = self.metrics_before
        training = {
            "base_model": base.get("name"),
            "data": data,
            "n_images": len(self.train),
            "n_validation": len(self.val),
            "steps": self.step,
            "seconds": round(self.seconds, 1),
            "device": str(self.device),
            "settings": dataclasses.asdict(cfg),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "final_loss": float(np.mean(self.losses[-20:])) if self.losses else None,
            "steps_planned": cfg.steps,
            "stopped_early": self.stopped_early,
            "validation_history": self.history,
            "lr_changes": self.lr_changes,
        }
        if self.working_ppd:
            training["image_scales"] = [  # what the network saw: each image at the working scale
                {
                    "name": p.name,
                    "factor": round(float(p.scale["factor"]), 4),
                    "trained_shape": list(p.label.shape),
                    "how": p.scale["description"],
                }
                for p in self.train + self.val
                if p.scale
            ]
        averaged = self.weights_averaged()
        if averaged:
            training["weights_averaged_over_steps"] = averaged
        what = f"fine-tuned from {base['name']}" if base.get("name") else "trained from scratch"
        return ModelCard(
            name=self.name,
            architecture=self.arch,
            description=f"{self.arch} {what} with napari-dpn on {data} ({self.step} steps"
            + (f" of the {cfg.steps} planned: stopped by its time limit)" if self.stopped_early else ")")
            + (f"; weights: the mean of the checkpoints at steps {averaged}" if averaged else ""),
            input=dict(self.input),
            threshold=float(threshold),
            threshold_rule=rule,
            base_model=base.get("name"),
            training=training,
            metrics=metrics,
            licence=base.get("licence", ""),
            attribution=base.get("attribution", ""),
        )

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
