"""The training engine: the paper's loss and optimiser, with checkpoints, resume and cancel.

What the paper (sections 3.3, 4.2, 4.3) and the official release fix, and what we chose:

* Loss: class-balanced cross-entropy (eq. 1-2) on each of the four heads, summed (eq. 3).
  beta = N- / (N+ + N-) is recomputed every iteration from the label being trained on (per
  image of the batch).  It is computed from logits with ``logsigmoid`` so it never takes the
  log of a saturated sigmoid.
* Counted pixels (``fov_only``): the release's Caffe data layer counts the whole crop.  We
  count only pixels inside the FOV by default: the black border, the zero padding of small
  images and the corners rotated in by the 22/45/... degree views are not "annotated
  background" but no image at all; counting them adds trivially easy negatives that shift beta
  towards vessels and the loss towards the border, and user annotations often leave the
  outside of the fundus unlabelled.  ``fov_only=False`` reproduces the release.
* Normalisation: Caffe's HED-style loss layer sums over pixels.  We divide by the number of
  counted pixels, so the loss reads the same for any crop size, batch size or FOV coverage.
  Adam's steps do not depend on the scale of the loss, so this changes nothing for the data
  term; the weight decay is scaled to match: the paper's lambda (5e-4) acts on Caffe's loss
  summed over the crop, which is our mean times crop*crop pixels, so the optimiser gets
  lambda / crop**2.  Unscaled, 5e-4 against a pixel-mean loss would be ~262,000 times
  stronger than in the paper and pulls pretrained weights towards zero.
* Optimiser: Adam, lr 1e-3 (fixed, as in the release's solver), batch size 1, L2 weight decay
  5e-4 on convolution weights only (torch Adam's ``weight_decay`` adds it to the gradient, as
  Caffe does).  With ``caffe_lr_mults`` (default) the release's per-layer multipliers are
  used too: biases learn at 2x and get no decay; the four 1x1 heads learn at 0.1x (bias 0.2x).
* Initialisation: fresh models are Caffe-xavier initialised by ``model.build_model``; fresh
  models read RGB in 0..1 normalised as ``models.FRESH_INPUT``; fine-tuned models keep their
  base model's input convention (the release model wants BGR 0..255).
* AMP: ``auto`` uses bf16 autocast on CUDA GPUs that support it (else fp16 with a gradient
  scaler) and nothing on CPU/MPS: on the reference CPU bf16 autocast made a dpn step 4-5x
  slower (docs/training-speed.md).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import augment
from .errors import TrainingError
from .model import ARCHITECTURES, MIN_SIDE, build_model, flush_denormals_

HEAD_NAMES = ("aux1", "aux2", "aux3", "main")
CHECKPOINT_FORMAT = "napari-dpn-checkpoint/1"
# A loss above MAX_LOSS, or SPIKE_FACTOR times the median of the last SPIKE_WINDOW losses, means
# the run diverged (a healthy loss starts near 4 x 0.7 and falls).
MAX_LOSS = 1e4
SPIKE_FACTOR = 100.0
SPIKE_WINDOW = 50
_clock = time.monotonic  # the time limit's clock (a name of our own, so tests can drive it)
FLUSH_EVERY = 100  # steps between zeroing subnormal weights (a step count, so runs stay reproducible)
# Fields of TrainConfig that may change when a run is resumed; the others define the run.
RUN_CONTROL = ("steps", "checkpoint_every", "val_every", "device", "amp", "channels_last", "threads", "threshold_rule",
               "time_limit")


MAX_CROP = 4096  # larger crops only pad the views with zeros, at crop^2 bytes per view


@dataclass
class TrainConfig:
    """Settings of one training run; defaults are the paper's (DRIVE: 100k steps, crop 512)."""

    steps: int = 2000
    crop: int | None = None          # None: 512, or 736 for CHASE_DB1-sized images
    lr: float = 1e-3
    weight_decay: float = 5e-4
    batch_size: int = 1
    seed: int = 0
    augment: bool = True             # the 11 offline views + random mirror
    clahe: bool | None = None        # None: as the base model's card says (fresh: no CLAHE)
    fov_only: bool = True            # count only FOV pixels in the loss (see module docstring)
    checkpoint_every: int = 500
    val_every: int = 500             # 0: validate only before and after
    device: str = "auto"             # auto | cpu | cuda | mps
    amp: str = "auto"                # auto | off | bf16 | fp16
    channels_last: bool = True
    aux_heads: bool = True           # False: main head only (the paper's Table 5 ablation)
    caffe_lr_mults: bool = True      # the release's lr multipliers (bias 2x, heads 0.1x)
    architecture: str = "dpn"        # for fresh models
    threads: int | None = None       # torch CPU threads (None: torch's default)
    name: str | None = None          # name of the saved model (default: architecture + date)
    threshold_rule: str = "youden"   # the card's threshold: youden (ROC-optimal) | max_acc
    time_limit: float | None = None  # seconds of training in this session; then finish at the step reached
    augment_mode: str = "paper"      # paper: the 11 offline views + mirror; robust: any-camera (augment.RobustSampler)
    working_ppd: float | None = None  # pixels per degree the training images were resampled to (scale.py)

    def check(self) -> None:
        if self.steps < 0:
            raise TrainingError(f"steps must be 0 or more, got {self.steps}")
        if self.crop is not None and self.crop < MIN_SIDE:
            raise TrainingError(f"the crop must be at least {MIN_SIDE} pixels, got {self.crop}")
        if self.batch_size < 1:
            raise TrainingError(f"the batch size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise TrainingError(f"the learning rate must be positive, got {self.lr}")
        if self.architecture not in ARCHITECTURES:
            raise TrainingError(f"unknown architecture {self.architecture!r}; use {' or '.join(ARCHITECTURES)}")
        if self.threshold_rule not in ("youden", "max_acc"):
            raise TrainingError(f"threshold_rule must be youden or max_acc, got {self.threshold_rule!r}")
        if self.time_limit is not None and not self.time_limit > 0:
            raise TrainingError(f"the time limit must be positive seconds, got {self.time_limit}")
        if self.augment_mode not in ("paper", "robust"):
            raise TrainingError(f"augment_mode must be paper or robust, got {self.augment_mode!r}")
        if self.working_ppd is not None and not self.working_ppd > 0:
            raise TrainingError(f"the working scale must be positive pixels per degree, got {self.working_ppd}")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise TrainingError(f"amp must be auto, off, bf16 or fp16, got {self.amp!r}")
        if self.crop is not None and self.crop > MAX_CROP:
            raise TrainingError(f"the crop must be at most {MAX_CROP} pixels, got {self.crop}")
        if not 0 <= self.seed < 2**32:
            raise TrainingError(f"the seed must be a whole number from 0 to {2**32 - 1}, got {self.seed}")
        if self.threads is not None and not (isinstance(self.threads, int) and self.threads >= 1):
            raise TrainingError(f"the number of CPU threads must be 1 or more, got {self.threads}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise TrainingError(f"the weight decay must be 0 or more, got {self.weight_decay}")
        if not math.isfinite(self.lr):
            raise TrainingError(f"the learning rate must be a finite number, got {self.lr}")
        for key in ("checkpoint_every", "val_every"):
            if getattr(self, key) < 0:
                raise TrainingError(f"{key.replace('_', '-')} must be 0 (never) or more steps, got {getattr(self, key)}")


# --------------------------------------------------------------------------- events


@dataclass
class StepEvent:
    step: int                      # optimisation steps done
    total: int
    loss: float                    # sum over the heads trained
    head_losses: dict[str, float]  # aux1, aux2, aux3, main
    seconds_per_step: float        # running mean of the last 20 steps
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
    steps: int                      # optimisation steps done in total (including resumed ones)
    cancelled: bool
    checkpoint: Path | None
    model_path: Path | None         # None when cancelled
    losses: list[float]
    metrics_before: dict | None
    metrics_after: dict | None
    threshold: float | None
    card: Any = None                # models.ModelCard of the saved model
    model: nn.Module | None = None  # the trained network, evaluation mode


# --------------------------------------------------------------------------- loss


def class_balance_beta(label: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 2 per image: beta = N- / (N+ + N-) over the counted pixels; shape (N,)."""
    label = label.float()
    w = torch.ones_like(label) if mask is None else mask.float()
    n = w.sum(dim=(1, 2, 3))
    n_pos = (w * label).sum(dim=(1, 2, 3))
    return (n - n_pos) / n.clamp_min(1)


def balanced_bce(logits: torch.Tensor, label: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 1 from logits, mean over the counted pixels of each image, then over the batch.

    ``-(beta * sum_{y=1} log p + (1 - beta) * sum_{y=0} log(1 - p)) / n_counted``.
    """
    label = label.to(logits.dtype)
    w = torch.ones_like(logits) if mask is None else mask.to(logits.dtype)
    beta = class_balance_beta(label, w).view(-1, 1, 1, 1)
    per_pixel = beta * label * F.logsigmoid(logits) + (1 - beta) * (1 - label) * F.logsigmoid(-logits)
    per_image = -(per_pixel * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3)).clamp_min(1)
    return per_image.mean()


def dpn_loss(outputs: Sequence[torch.Tensor], label: torch.Tensor, mask: torch.Tensor | None = None,
             aux_heads: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Eq. 3 without the L2 term (that is the optimiser's weight decay): the sum of the heads' losses.

    Returns (total, per-head losses); without ``aux_heads`` only the main head counts.
    """
    per_head = [balanced_bce(o.float(), label, mask) for o in outputs]
    total = sum(per_head) if aux_heads else per_head[-1]
    return total, per_head


# --------------------------------------------------------------------------- optimiser


def param_groups(model: nn.Module, lr: float, weight_decay: float, caffe_lr_mults: bool = True) -> list[dict]:
    """Adam parameter groups: decay on conv weights only; optionally the release's lr multipliers."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_bias = name.endswith("bias")
        mult = 1.0
        if caffe_lr_mults:
            mult = (0.1 if name.startswith("heads.") else 1.0) * (2.0 if is_bias else 1.0)
        groups.setdefault((mult, 0.0 if is_bias else weight_decay), []).append(p)
    return [{"params": ps, "lr": lr * m, "weight_decay": wd, "lr_mult": m} for (m, wd), ps in groups.items()]


# --------------------------------------------------------------------------- data


@dataclass
class Pair:
    """A checked training or validation image: RGB float32 0..1, bool label, bool FOV."""

    name: str
    rgb: np.ndarray
    label: np.ndarray
    fov: np.ndarray


def _as_bool(mask) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    return mask >= 0.5 if np.issubdtype(mask.dtype, np.floating) else mask > 0


# What a vessel annotation must look like to be trained on (real ones: 7-17 % of the FOV is vessel,
# the FOV 69-74 % of the image; see /work/shared/datasets/SOURCES.md).  Outside these bounds the
# annotation is unfinished, inverted or all vessel, and training on it would teach nonsense.
MIN_VESSEL_FRACTION = 0.001   # of the FOV pixels
MAX_VESSEL_FRACTION = 0.60    # of the FOV pixels, and of the whole image
MIN_FOV_FRACTION = 0.05       # of the image
MIN_BACKGROUND_PIXELS = 100   # non-vessel FOV pixels, whatever the fractions


def check_annotation(name: str, label: np.ndarray, fov: np.ndarray) -> None:
    """TrainingError (one sentence naming the bounds) unless ``label`` holds both classes in
    plausible amounts inside a plausible ``fov``: the FOV covers at least 5 % of the image, and
    vessels make up 0.1-60 % of the FOV (and at most 60 % of the whole image)."""
    fov_pixels = int(np.count_nonzero(fov))
    if fov_pixels < MIN_FOV_FRACTION * fov.size:
        raise TrainingError(f"{name}: the FOV mask covers only {fov_pixels / fov.size:.1%} of the image; "
                            f"it must cover at least {MIN_FOV_FRACTION:.0%} (a fundus photograph's FOV "
                            "is usually about 70 %)")
    vessel = int(np.count_nonzero(label & fov))
    if vessel == 0:
        raise TrainingError(f"{name}: the annotation has no vessel pixels inside the FOV; "
                            "an empty annotation cannot be trained on")
    share, whole = vessel / fov_pixels, np.count_nonzero(label) / label.size
    bounds = (f"a vessel annotation must mark between {MIN_VESSEL_FRACTION:.1%} and "
              f"{MAX_VESSEL_FRACTION:.0%} of the FOV (real ones mark about 7-17 %)")
    if share > MAX_VESSEL_FRACTION or fov_pixels - vessel < MIN_BACKGROUND_PIXELS:
        raise TrainingError(f"{name}: the annotation marks {share:.1%} of the FOV as vessel; {bounds}, "
                            "so it looks inverted or filled")
    if whole > MAX_VESSEL_FRACTION:
        raise TrainingError(f"{name}: the annotation marks {whole:.1%} of the whole image as vessel; {bounds} "
                            "and of the image, so it looks inverted or filled outside the FOV")
    if share < MIN_VESSEL_FRACTION:
        raise TrainingError(f"{name}: the annotation marks only {share:.2%} of the FOV as vessel; {bounds}, "
                            "so it looks unfinished")


def prepare_pairs(pairs, what: str = "training", emit: Callable[[Any], None] | None = None) -> list[Pair]:
    """Load and check pairs: ``(rgb, label[, fov])`` tuples or dataset ``Sample`` objects.

    A missing FOV (None, or a Sample without mask) is estimated with ``fov.estimate_fov`` and
    reported through ``emit``; mismatched sizes and empty annotations are errors.
    """
    pairs = list(pairs or [])
    if not pairs:
        raise TrainingError(f"no {what} images were given")
    out = []
    for i, p in enumerate(pairs, 1):
        name = str(getattr(p, "name", "") or f"{what} image {i}")
        fov = None
        if hasattr(p, "load"):
            rgb, label, fov = p.load()
        else:
            if len(p) not in (2, 3):
                raise TrainingError(f"{name}: expected (image, label) or (image, label, fov), got {len(p)} items")
            rgb, label = p[0], p[1]
            fov = p[2] if len(p) == 3 else None
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise TrainingError(f"{name}: expected an RGB image (H, W, 3), got shape {rgb.shape}")
        rgb = rgb.astype(np.float32, copy=False)
        if rgb.size and float(rgb.max()) > 1.0 + 1e-3:
            raise TrainingError(f"{name}: image values go up to {rgb.max():g}; expected RGB in 0..1 (use image_io.as_rgb)")
        h, w = rgb.shape[:2]
        if min(h, w) < MIN_SIDE:
            raise TrainingError(f"{name}: the image is {w}x{h}; both sides must be at least {MIN_SIDE} pixels")
        if label is None:
            raise TrainingError(f"{name}: has no vessel annotation")
        label = _as_bool(label)
        if label.shape != (h, w):
            raise TrainingError(f"{name}: the annotation is {label.shape[1]}x{label.shape[0]} "
                                f"but the image is {w}x{h} (W x H); they must be the same size")
        if fov is None:
            from .fov import estimate_fov

            fov = estimate_fov(rgb)
            if emit:
                emit(MessageEvent(f"{name}: no FOV mask given; estimated it from the image "
                                  f"({fov.mean():.0%} of the image)"))
        fov = _as_bool(fov)
        if fov.shape != (h, w):
            raise TrainingError(f"{name}: the FOV mask is {fov.shape[1]}x{fov.shape[0]} "
                                f"but the image is {w}x{h} (W x H); they must be the same size")
        if not fov.any():
            raise TrainingError(f"{name}: the FOV mask is empty")
        check_annotation(name, label, fov)
        out.append(Pair(name, rgb, label, fov))
    return out


def _fingerprint(pairs: list[Pair]) -> list:
    return [[p.name, *p.label.shape, int(p.label.sum())] for p in pairs]


# --------------------------------------------------------------------------- helpers


def _device(name: str) -> torch.device:
    from .inference import select_device

    return select_device(name)


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off":
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def summarise_metrics(report: dict) -> dict:
    """auc and the Youden-point se, sp, acc, f1, threshold of a ``metrics.evaluate`` report."""
    pooled = report["pooled"]
    y = pooled["youden"]
    return {"auc": pooled["auc"], "threshold": y["threshold"], "se": y["se"], "sp": y["sp"],
            "acc": y["acc"], "f1": y["f1"]}


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


def network_input(crops: np.ndarray, convention: dict, device: torch.device) -> torch.Tensor:
    """uint8 crops (B, H, W, 3) -> (B, 3, H, W) float32 network input, computed on ``device``.

    The same arithmetic as ``preprocess.normalise`` (without CLAHE, which the training views
    already carry), but on the device: uploading uint8 and normalising there takes the ~10 ms per
    512 crop of NumPy work off the step (tested against ``normalise``).
    """
    x = torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float()  # a channels_last view
    if convention.get("channel_order", "RGB").upper() == "BGR":
        x = x.flip(1)
    mean = torch.tensor(convention.get("mean", [0, 0, 0]), dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(convention.get("std", [1, 1, 1]), dtype=torch.float32, device=device).view(1, 3, 1, 1)
    scale = float(convention.get("scale", 1.0)) / 255.0
    return (x * scale - mean) / std


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
    from .errors import OutputError
    from .image_io import atomic_write, ensure_output_folder

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


def _load_init(init, device: torch.device):
    """(network, base card or None) from None / a model name or path / a LoadedModel."""
    if init is None:
        return None, None, []
    if hasattr(init, "model") and hasattr(init, "card"):
        return copy.deepcopy(init.model), copy.deepcopy(init.card), []
    from .models import load_model

    loaded = load_model(init, device="cpu")
    return loaded.model, loaded.card, loaded.warnings


# --------------------------------------------------------------------------- the engine


class _Trainer:
    """One run; :func:`train` is the public entry point."""

    def __init__(self, config: TrainConfig, train_pairs, val_pairs, init, out_dir, resume, callback,
                 should_stop, description, overwrite=True):
        from .models import FRESH_INPUT

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
            model.load_state_dict(ck["model"])
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
        crop = config.crop or augment.default_crop(self.train[0].rgb.shape)
        self.config.crop = crop
        t0 = time.perf_counter()
        views = []
        robust = config.augment and config.augment_mode == "robust"
        for p in self.train:
            rgb = augment.clahe(p.rgb) if self.input["clahe"] else p.rgb
            if robust:
                views.append(augment.View(augment.to_uint8(rgb), p.label, p.fov, p.name))
            else:
                views += augment.offline_views(rgb, p.label, p.fov, augment=config.augment, name=p.name)
        if robust:
            self.sampler = augment.RobustSampler(views, crop, seed=config.seed)
        else:
            self.sampler = augment.PatchSampler(views, crop, seed=config.seed, mirror=config.augment)
        self.emit(MessageEvent(f"prepared {len(views)} training views ({len(self.train)} image(s) x "
                               f"{len(views) // len(self.train)}) in {time.perf_counter() - t0:.1f} s; crop {crop}"))

        # Optimiser.
        decay = config.weight_decay / (crop * crop)  # the paper's lambda against a pixel-mean loss
        self.opt = torch.optim.Adam(param_groups(self.model, config.lr, decay, config.caffe_lr_mults), lr=config.lr)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        self.step = 0
        self.losses: list[float] = []
        self.metrics_before = None
        self.history: list[dict] = []
        self.seconds = 0.0
        if ck is not None:
            self.opt.load_state_dict(ck["optimizer"])
            if self.scaler is not None and ck.get("scaler"):
                self.scaler.load_state_dict(ck["scaler"])
            torch.set_rng_state(ck["torch_rng"])
            self.step = int(ck["step"])
            self.losses = list(ck["losses"])
            self.metrics_before = ck.get("metrics_before")
            self.history = list(ck.get("history", []))
            self.seconds = float(ck.get("seconds", 0.0))
            self.description = self.description or ck.get("description")
            if ck.get("pairs") != _fingerprint(self.train):
                self.emit(MessageEvent("resuming with other training images than the checkpoint was made with; "
                                       "the run continues but will not match an uninterrupted one"))
            self.emit(MessageEvent(f"resumed from step {self.step}"))
        self.name = config.name or f"{self.arch}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        self.config.name = self.name
        self.out_dir = Path(out_dir).expanduser() if out_dir is not None else Path.cwd()
        self.ckpt_path = self.out_dir / f"{self.name}.ckpt.pt"
        if self.step % FLUSH_EVERY == 0:  # as an uninterrupted run would have at this step
            flush_denormals_(self.model)  # subnormal weights (e.g. in the release's) slow x86 convolutions ~100x
        self.good = _LastGood(self.model, self.opt)  # weights to fall back to on divergence
        self.stopped_early: str | None = None
        self.recent: deque = deque(self.losses[-SPIKE_WINDOW:], maxlen=SPIKE_WINDOW)

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
        from .inference import predict
        from .models import LoadedModel, ModelCard

        card = ModelCard(name=self.name, architecture=self.arch, input=dict(self.input))
        loaded = LoadedModel(model=self.model, card=card)
        try:
            # fp32: validation metrics and the card's threshold must not depend on the CPU's bf16 support
            return [predict(loaded, p.rgb, device=self.device, precision="fp32").probability for p in pairs]
        finally:
            self.model.train()

    def evaluate(self, pairs: list[Pair]) -> dict | None:
        from . import metrics
        from .errors import DPNError

        probs = self.predict(pairs)
        try:
            report = metrics.evaluate(probs, [p.label for p in pairs], [p.fov for p in pairs],
                                      names=[p.name for p in pairs])
        except DPNError as exc:
            self.emit(MessageEvent(f"validation skipped: {exc}"))
            return None
        return summarise_metrics(report)

    def validate(self) -> dict | None:
        if not self.val:
            return None
        m = self.evaluate(self.val)
        if m is not None:
            self.history.append({"step": self.step, **m})
            self.emit(ValidationEvent(self.step, m))
        return m

    def checkpoint(self) -> Path:
        step = self.step
        payload = {
            "format": CHECKPOINT_FORMAT, "step": step, "architecture": self.arch,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": _to_cpu(self.opt.state_dict()),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "torch_rng": torch.get_rng_state(), "config": dataclasses.asdict(self.config),
            "base_card": self.base_card, "input": self.input, "losses": self.losses[:step],
            "metrics_before": self.metrics_before, "history": [h for h in self.history if h["step"] <= step],
            "seconds": self.seconds, "pairs": _fingerprint(self.train), "description": self.description,
        }
        _save_checkpoint(self.ckpt_path, payload)
        self.emit(CheckpointEvent(step, self.ckpt_path))
        return self.ckpt_path

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
                    self.stopped_early = (f"time limit of {cfg.time_limit:g} s reached after "
                                          f"{self.step} of {cfg.steps} steps")
                    self.emit(MessageEvent(self.stopped_early))
                    break
                if self.should_stop():
                    path = self.checkpoint()
                    self.emit(CancelledEvent(self.step, path))
                    return self.result(cancelled=True)
                t0 = time.perf_counter()
                values = self.train_step()
                if self.step % FLUSH_EVERY == 0:
                    flush_denormals_(self.model)  # weight decay keeps driving idle weights towards them
                dt = time.perf_counter() - t0
                times.append(dt)
                self.seconds += dt
                sps = sum(times) / len(times)
                self.emit(StepEvent(self.step, cfg.steps, values[0], dict(zip(HEAD_NAMES, values[1:])),
                                    sps, sps * (cfg.steps - self.step)))
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
                self.losses = self.losses[:good.step]
                self.checkpoint()
            raise
        return self.finish()

    def stop_diverged(self, problem: str, good: _LastGood) -> None:
        lr, failed = self.config.lr, self.step + 1
        if good.step is None:
            raise TrainingError(f"training stopped at step {failed}: {problem}; no update had been made, "
                                f"so nothing was saved (try a learning rate below {lr:g})")
        good.restore()
        self.step = good.step
        self.losses = self.losses[:good.step]
        path = self.checkpoint()
        raise TrainingError(f"training stopped at step {failed}: {problem}; the last good weights "
                            f"(step {good.step}) are in {path} (try a learning rate below {lr:g})")

    def finish(self) -> TrainResult:
        path = self.checkpoint()
        after = self.validate() if self.val else None
        threshold, rule = self.recommend_threshold(after)
        card = self.make_card(after, threshold, rule)
        card.scale = self.scale_block(threshold)
        model_path = self.save(card)
        self.emit(DoneEvent(self.step, model_path, path, after))
        return self.result(cancelled=False, after=after, threshold=threshold, card=card, model_path=model_path)

    def scale_block(self, threshold: float) -> dict:
        """The card's ``scale``: the working scale the images were resampled to (else the base
        model's), and the network's own thickest-vessel calibre there, measured on the training
        images with a circular FOV (the reference of the calibre scale estimate)."""
        from .scale import fov_diameter
        from .segmentation import vessel_calibre

        base = dict((self.base_card or {}).get("scale") or {})
        ppd = self.config.working_ppd or base.get("working_ppd")
        if not ppd:
            return {}
        disc = [p for p in self.train if fov_diameter(p.fov) is not None][:8] or self.train[:8]
        calibres = [c for p, prob in zip(disc, self.predict(disc))
                    if (c := vessel_calibre(prob >= threshold, p.fov)) is not None]
        how = (f"training images resampled to {ppd:g} px/deg" if self.config.working_ppd
               else f"inherited from {base.get('name', 'the base model')}")
        return {"working_ppd": float(ppd), "trained_ppd": float(ppd), "source": how,
                "vessel_calibre_px": round(float(np.mean(calibres)), 3) if calibres else None,
                "vessel_calibre_rule": f"95th percentile of the skeleton width of the map at the card's threshold, "
                                       f"mean over {len(calibres)} training images"}

    def save(self, card) -> Path:
        """Save the model as ``<name>.safetensors``; without ``overwrite`` an existing model of that
        name (one that appeared while this run trained) is kept and this one gets ``<name>-2``..."""
        from .errors import OutputExistsError
        from .models import save_model

        base, n = self.name, 1
        while True:
            try:
                return save_model(self.model, card, self.out_dir / f"{card.name}.safetensors", overwrite=self.overwrite)
            except OutputExistsError:
                n += 1
                card.name = f"{base}-{n}"
                self.emit(MessageEvent(f"a model named {base} appeared in {self.out_dir} during training; "
                                       f"kept it and saving this one as {card.name}"))

    def recommend_threshold(self, after: dict | None) -> tuple[float, str]:
        """The card's threshold: ``config.threshold_rule`` on the validation images, else the training images."""
        from . import metrics
        from .errors import DPNError

        if self.config.threshold_rule == "youden" and after is not None:
            return after["threshold"], f"Youden point on the {len(self.val)} validation images"
        pairs, which = (self.val, "validation") if self.val else (self.train, "training")
        self.emit(MessageEvent(f"choosing the threshold on the {len(pairs)} {which} image(s)"))
        probs = self.predict(pairs)
        try:
            t = metrics.choose_train_threshold(probs, [p.label for p in pairs], [p.fov for p in pairs],
                                               rule=self.config.threshold_rule)
        except DPNError:
            return 0.5, "default 0.5 (the annotations hold a single class)"
        what = "Youden point" if self.config.threshold_rule == "youden" else "accuracy-maximising point"
        return float(t), f"{what} on the {len(pairs)} {which} images"

    def make_card(self, after: dict | None, threshold: float, rule: str):
        from .models import ModelCard

        cfg = self.config
        base = self.base_card or {}
        data = self.description or f"{len(self.train)} image(s): " + ", ".join(p.name for p in self.train[:10])
        metrics = dict(after or {})
        if after is not None:
            metrics["dataset"] = f"{len(self.val)} validation image(s)"
            metrics["before"] = self.metrics_before
        training = {
            "base_model": base.get("name"), "data": data, "n_images": len(self.train),
            "n_validation": len(self.val), "steps": self.step, "seconds": round(self.seconds, 1),
            "device": str(self.device), "settings": dataclasses.asdict(cfg),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "final_loss": float(np.mean(self.losses[-20:])) if self.losses else None,
            "steps_planned": cfg.steps, "stopped_early": self.stopped_early,
            "validation_history": self.history,
        }
        what = f"fine-tuned from {base['name']}" if base.get("name") else "trained from scratch"
        return ModelCard(
            name=self.name, architecture=self.arch,
            description=f"{self.arch} {what} with napari-dpn on {data} ({self.step} steps"
                        + (f" of the {cfg.steps} planned: stopped by its time limit)" if self.stopped_early else ")"),
            input=dict(self.input), threshold=float(threshold), threshold_rule=rule,
            base_model=base.get("name"), training=training, metrics=metrics,
            licence=base.get("licence", ""), attribution=base.get("attribution", ""),
        )

    def result(self, cancelled: bool, after=None, threshold=None, card=None, model_path=None) -> TrainResult:
        self.model.eval()
        return TrainResult(steps=self.step, cancelled=cancelled, checkpoint=self.ckpt_path, model_path=model_path,
                           losses=list(self.losses), metrics_before=self.metrics_before, metrics_after=after,
                           threshold=threshold, card=card, model=self.model)


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def train(config: TrainConfig, train_pairs, val_pairs=None, init=None, out_dir=None, resume=None,
          callback: Callable[[Any], None] | None = None, should_stop: Callable[[], bool] | None = None,
          description: str | None = None, overwrite: bool = True) -> TrainResult:
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
    """
    return _Trainer(config, train_pairs, val_pairs, init, out_dir, resume, callback, should_stop, description,
                    overwrite).run()
