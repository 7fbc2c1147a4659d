"""What a training run starts from: its precision, its network (fresh, a base model or a
checkpoint's) and the sampler of its crops.  ``trainer._Trainer`` puts them together."""

from __future__ import annotations

import copy
import time

import torch

from .. import augment
from ..errors import TrainingError
from ..model import build_model
from ..models import load_model
from .config import TrainConfig
from .events import MessageEvent


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off":
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def load_init(init):
    """(network, base card, warnings) from None / a model name or path / a LoadedModel (copied)."""
    if init is None:
        return None, None, []
    if hasattr(init, "model") and hasattr(init, "card"):
        return copy.deepcopy(init.model), copy.deepcopy(init.card), []
    loaded = load_model(init, device="cpu")
    return loaded.model, loaded.card, loaded.warnings


def resumed_network(ck: dict, seed: int, name: str) -> torch.nn.Module:
    """The network of checkpoint ``ck`` (file ``name``); TrainingError when its weights do not fit."""
    arch = ck["architecture"]
    torch.manual_seed(seed)
    model = build_model(arch)
    try:
        model.load_state_dict(ck["model"])
    except (RuntimeError, ValueError, TypeError) as exc:
        raise TrainingError(
            f"{name} cannot be resumed: its weights do not fit a {arch} network "
            f"({str(exc).strip().splitlines()[0][:160]})"
        ) from None
    return model


def make_sampler(train: list, config: TrainConfig, clahe: bool, emit):
    """The crop sampler of the prepared training pairs: the paper's offline views + mirror, or the
    robust per-crop augmentation (CLAHE per crop there, after the camera jitter)."""
    crop = config.crop
    t0 = time.perf_counter()
    views = []
    robust = config.augment and config.augment_mode == "robust"
    for p in train:
        if robust:
            views.append(augment.View(augment.to_uint8(p.rgb), p.label, p.fov, p.name))
        else:
            rgb = augment.clahe(p.rgb) if clahe else p.rgb
            views += augment.offline_views(rgb, p.label, p.fov, augment=config.augment, name=p.name)
    sampler: augment.RobustSampler | augment.PatchSampler
    assert crop is not None  # the config check sets it
    if robust:
        sampler = augment.RobustSampler(views, crop, seed=config.seed, clahe=clahe, off=config.augment_off)
    else:
        sampler = augment.PatchSampler(views, crop, seed=config.seed, mirror=config.augment)
    emit(
        MessageEvent(
            f"prepared {len(views)} training views ({len(train)} image(s) x "
            f"{len(views) // len(train)}) in {time.perf_counter() - t0:.1f} s; crop {crop}"
        )
    )
    return sampler
