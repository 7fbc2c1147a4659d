"""Settings of one training run (the paper's defaults) and which of them a resumed run may change."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..augment import AUGMENT_PARTS
from ..errors import TrainingError
from ..model import ARCHITECTURES, MIN_SIDE
from ..scale import check_field_angle, parse_scale

# Fields of TrainConfig that may change when a run is resumed; the others define the run.
RUN_CONTROL = (
    "steps",
    "lr",  # a lower rate for a last phase, by hand; the card lists the changes
    "checkpoint_every",
    "val_every",
    "device",
    "amp",
    "channels_last",
    "threads",
    "threshold_rule",
    "time_limit",
)
AMP_MODES = ("auto", "off", "bf16", "fp16")  # mixed precision of the training forward pass
MAX_CROP = 4096  # larger crops only pad the views with zeros, at crop^2 bytes per view


@dataclass
class TrainConfig:
    """Settings of one training run; defaults are the paper's (DRIVE: 100k steps, crop 512)."""

    steps: int = 2000
    crop: int | None = None  # None: 512, or 736 for CHASE_DB1-sized images
    lr: float = 1e-3
    weight_decay: float = 5e-4
    batch_size: int = 1
    seed: int = 0
    augment: bool = True  # the 11 offline views + random mirror
    clahe: bool | None = None  # None: as the base model's card says (fresh: no CLAHE)
    fov_only: bool = True  # count only FOV pixels in the loss (see module docstring)
    checkpoint_every: int = 500
    val_every: int = 500  # 0: validate only before and after
    device: str = "auto"  # auto | cpu | cuda | mps
    amp: str = "auto"  # auto | off | bf16 | fp16
    channels_last: bool = True
    aux_heads: bool = True  # False: main head only (the paper's Table 5 ablation)
    caffe_lr_mults: bool = True  # the release's lr multipliers (bias 2x, heads 0.1x)
    architecture: str = "dpn"  # for fresh models
    threads: int | None = None  # torch CPU threads (None: torch's default)
    name: str | None = None  # name of the saved model (default: architecture + date)
    # The card's threshold, chosen on the validation images (else the training images): max_acc (the
    # accuracy-maximising point, the rule of every shipped model) | youden (ROC-optimal).
    threshold_rule: str = "max_acc"
    time_limit: float | None = None  # seconds of training in this session; then finish at the step reached
    augment_mode: str = "paper"  # paper: the 11 offline views + mirror; robust: any-camera (augment.RobustSampler)
    working_ppd: float | None = None  # pixels per degree the training images were resampled to (scale.py)
    augment_off: tuple[str, ...] = ()  # robust mode: parts of augment.AUGMENT_PARTS left out (an ablation)
    # Fine-tuning: resample every training and validation image as ``segment`` would for the base
    # model (segmentation.choose_scale: 'auto' = FOV diameter / field angle to the card's working
    # scale; a number: that factor); None trains on the images as given (the paper's protocol).
    scale: str | float | None = None
    field_angle: float | None = None  # degrees, with scale 'auto' (None: the 45 degree guess, as segment)

    def check(self) -> None:
        """TrainingError with one sentence for the first setting that cannot be used; normalises
        ``augment_off`` and ``scale`` (a parsed scale; 'native' is None)."""
        self._check_schedule()
        self._check_augment()
        self._check_scale()
        self._check_limits()

    def _check_schedule(self) -> None:
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

    def _check_augment(self) -> None:
        self.augment_off = tuple(sorted(set(self.augment_off)))
        unknown = [p for p in self.augment_off if p not in AUGMENT_PARTS]
        if unknown:
            raise TrainingError(f"unknown augmentation part(s) {', '.join(unknown)}; known: {', '.join(AUGMENT_PARTS)}")
        if self.augment_off and not (self.augment and self.augment_mode == "robust"):
            raise TrainingError(
                "leaving out augmentation parts needs the any-camera augmentation (augment_mode robust)"
            )

    def _check_scale(self) -> None:
        if self.working_ppd is not None and not self.working_ppd > 0:
            raise TrainingError(f"the working scale must be positive pixels per degree, got {self.working_ppd}")
        if self.scale is not None:
            try:
                self.scale = parse_scale(self.scale)
                self.field_angle = check_field_angle(self.field_angle)
            except (TypeError, ValueError) as exc:
                raise TrainingError(str(exc)) from None
            if self.scale == "native":
                self.scale = None

    def _check_limits(self) -> None:
        if self.amp not in AMP_MODES:
            raise TrainingError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
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
                raise TrainingError(
                    f"{key.replace('_', '-')} must be 0 (never) or more steps, got {getattr(self, key)}"
                )


def finetune_config(**settings) -> TrainConfig:
    """The settings of a fine-tune on a user's annotations, shared by ``train --images``, the
    Fine-tune widget and ``Session.finetune``: images resampled to the base model's working scale
    as ``segment`` resamples photographs (``scale='auto'``, the same field-angle rule), so the card's
    scale and fusion stay true; the shipped models' threshold rule (max accuracy); a gentle
    learning rate (1e-4: 1e-3 from a trained model undoes it in a few steps).  ``settings``
    override any field."""
    base = dict(scale="auto", threshold_rule="max_acc", lr=1e-4, val_every=0)
    return TrainConfig(**{**base, **settings})
