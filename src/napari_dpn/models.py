"""Model cards, weights files and the registry of models a user can pick by name.

A model is a ``NAME.safetensors`` weights file with a ``NAME.json`` model card
beside it.  The card is also embedded in the safetensors metadata, so a weights
file copied on its own still carries its input convention.  The card, not the
caller, decides how an image is fed to the network (the release model wants
BGR 0..255; feeding it RGB drops DRIVE AUC from 0.98 to about 0.5).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from .errors import WeightsError
from .model import ARCHITECTURES, build_model, flush_denormals_

WEIGHTS_SUFFIX = ".safetensors"
DEFAULT_MODEL = "dpn-release-drive"  # what the CLI and the widgets use when the user picks none
_CARD_KEY = "napari_dpn_card"

# Input convention of networks trained from scratch here: RGB scaled to 0..1, centred.
FRESH_INPUT = {"channel_order": "RGB", "scale": 1.0, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "clahe": False}


@dataclass
class ModelCard:
    """What a user (and the code) must know to use a weights file correctly."""

    name: str
    architecture: str
    description: str = ""
    input: dict = field(default_factory=lambda: dict(FRESH_INPUT))
    threshold: float = 0.5
    threshold_rule: str = ""
    base_model: str | None = None
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    licence: str = ""
    attribution: str = ""
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    sha256: str = ""
    # The scale the network works at (scale.py): working_ppd (pixels per degree of retina),
    # vessel_calibre_px (its own thickest-vessel width at that scale, for photographs without a
    # circular FOV), how both were measured.  Empty: inference can only run at the native scale.
    scale: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def summary(self) -> str:
        """One line for menus and tooltips."""
        parts = [self.architecture]
        auc = (self.metrics or {}).get("auc")
        if isinstance(auc, (int, float)):
            parts.append(f"AUC {auc:.4f} on {self.metrics.get('dataset', 'its test set')}")
        parts.append(f"threshold {self.threshold:.2f}")
        if self.input.get("clahe"):
            parts.append("CLAHE on green")
        text = self.description.strip().splitlines()[0] if self.description.strip() else ""
        return f"{self.name}: {text} ({', '.join(parts)})" if text else f"{self.name} ({', '.join(parts)})"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelCard:
        known = {f.name for f in dataclasses.fields(cls)}
        if "name" not in data or "architecture" not in data:
            raise WeightsError("the model card lacks 'name' or 'architecture'")
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = dict(kwargs.pop("extra", {}) or {})
        extra.update({k: v for k, v in data.items() if k not in known})
        card = cls(**kwargs, extra=extra)
        if card.architecture not in ARCHITECTURES:
            raise WeightsError(f"the model card names an unknown architecture {card.architecture!r}")
        card.input = {**FRESH_INPUT, **(card.input or {})}
        return card


@dataclass
class LoadedModel:
    """A network in evaluation mode together with its card."""

    model: nn.Module
    card: ModelCard
    path: Path | None = None


# --------------------------------------------------------------------------- locations


def shipped_models_dir() -> Path:
    """``weights/`` of the source tree, or ``napari_dpn/weights`` in an installed wheel."""
    here = Path(__file__).resolve().parent
    for cand in (here / "weights", here.parent.parent / "weights"):
        if cand.is_dir():
            return cand
    return here / "weights"


def user_models_dir() -> Path:
    """Where fine-tuned models are saved: ``$NAPARI_DPN_MODELS`` or ``~/.napari-dpn/models``."""
    env = os.environ.get("NAPARI_DPN_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".napari-dpn" / "models"


def _model_dirs() -> list[Path]:
    return [shipped_models_dir(), user_models_dir()]


def list_models() -> list[ModelCard]:
    """Cards of every shipped and user model, shipped first; unreadable ones are skipped."""
    cards, seen = [], set()
    for d in _model_dirs():
        if not d.is_dir():
            continue
        for path in sorted(d.glob(f"*{WEIGHTS_SUFFIX}")):
            if path.stem in seen:
                continue
            try:
                card = read_card(path)
            except WeightsError:
                continue
            card.extra["path"] = str(path)
            cards.append(card)
            seen.add(path.stem)
    return cards


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A model name (``dpn-release-drive``) or a path -> the weights file."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.suffix and (path.exists() or os.sep in text or "/" in text):
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
        return path
    for d in _model_dirs():
        cand = d / f"{text}{WEIGHTS_SUFFIX}"
        if cand.is_file():
            return cand
    if path.is_file():
        return path
    names = ", ".join(c.name for c in list_models()) or "none installed"
    raise WeightsError(f"no model named '{text}' (available: {names}); give a name or a path to a .safetensors file")


# --------------------------------------------------------------------------- reading and writing


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_card(weights_path: str | os.PathLike) -> ModelCard:
    """The card beside the weights file, else the one embedded in it."""
    weights_path = Path(weights_path)
    beside = weights_path.with_suffix(".json")
    try:
        if beside.is_file():
            return ModelCard.from_dict(json.loads(beside.read_text()))
        from safetensors import safe_open

        with safe_open(str(weights_path), framework="pt") as f:
            meta = f.metadata() or {}
        if _CARD_KEY not in meta:
            raise WeightsError(f"{weights_path.name} has no model card (neither {beside.name} nor embedded)")
        return ModelCard.from_dict(json.loads(meta[_CARD_KEY]))
    except WeightsError:
        raise
    except json.JSONDecodeError as exc:
        raise WeightsError(f"the model card of {weights_path.name} is not valid JSON ({exc.msg})") from None
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise WeightsError(f"{weights_path.name} is not a valid weights file ({exc})") from None


def load_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Build the card's architecture, load the weights, put it in evaluation mode on ``device``."""
    path = resolve_model_path(name_or_path)
    card = read_card(path)
    model = build_model(card.architecture)
    try:
        from safetensors.torch import load_file

        state = load_file(str(path))
    except Exception as exc:
        raise WeightsError(f"{path.name} is corrupt or not a safetensors file ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise WeightsError(f"{path.name} does not fit the '{card.architecture}' network: {first}") from None
    flush_denormals_(model)  # subnormal weights (left by weight decay) slow x86 convolutions ~100x
    model.eval().to(device)
    return LoadedModel(model=model, card=card, path=path)


def save_model(model: nn.Module, card: ModelCard, path: str | os.PathLike) -> Path:
    """Write ``path`` (.safetensors) and its card atomically; the card gets the file's sha256."""
    from safetensors.torch import save_file

    from .image_io import atomic_write

    path = Path(path)
    if path.suffix != WEIGHTS_SUFFIX:
        path = path.with_name(path.name + WEIGHTS_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    card.architecture = getattr(model, "architecture", card.architecture)
    embedded = dataclasses.replace(card, sha256="")
    with atomic_write(path) as tmp:
        save_file(state, str(tmp), metadata={_CARD_KEY: json.dumps(embedded.to_dict())})
        os.chmod(tmp, 0o644)  # safetensors writes 0600 files; weights are meant to be shared
    card.sha256 = file_sha256(path)
    with atomic_write(path.with_suffix(".json")) as tmp:
        Path(tmp).write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    return path


def rewrite_card(path: str | os.PathLike, card: ModelCard) -> Path:
    """Replace the card of a weights file (embedded and beside it) without touching its tensors."""
    from safetensors.torch import load_file, save_file

    from .image_io import atomic_write

    path = Path(path)
    state = load_file(str(path))
    embedded = dataclasses.replace(card, sha256="")
    with atomic_write(path) as tmp:
        save_file(state, str(tmp), metadata={_CARD_KEY: json.dumps(embedded.to_dict())})
        os.chmod(tmp, 0o644)
    card.sha256 = file_sha256(path)
    with atomic_write(path.with_suffix(".json")) as tmp:
        Path(tmp).write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    return path
