"""The model card: what a user (and the code) must know to use a weights file correctly (its input
convention, threshold, scale, provenance), and the checks that turn a hand-edited card with a wrong
field into one sentence naming that field.  Torch-free: the widgets read cards when they dock.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .architectures import ARCHITECTURES, FRESH_INPUT
from .errors import WeightsError


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_card_fields(card: ModelCard) -> None:
    """WeightsError naming the first field of the card that has the wrong type or value."""

    def bad(field_name: str, rule: str, value) -> WeightsError:
        return WeightsError(f"the model card's '{field_name}' must be {rule}, got {value!r}")

    for key in ("name", "architecture"):
        if not isinstance(getattr(card, key), str) or not getattr(card, key).strip():
            raise bad(key, "a non-empty text", getattr(card, key))
    for key in ("description", "threshold_rule", "licence", "attribution", "created", "sha256"):
        if not isinstance(getattr(card, key), str):
            raise bad(key, "a text", getattr(card, key))
    for key in ("training", "metrics", "extra"):
        if not isinstance(getattr(card, key), dict):
            raise bad(key, "a JSON object", getattr(card, key))
    if card.base_model is not None and not isinstance(card.base_model, str):
        raise bad("base_model", "a model name or null", card.base_model)
    if not (_is_number(card.threshold) and 0.0 <= card.threshold <= 1.0):
        raise bad("threshold", "a number between 0 and 1", card.threshold)
    if not isinstance(card.input, dict):
        raise bad("input", "a JSON object", card.input)
    inp = card.input
    order = inp.get("channel_order")
    if not (isinstance(order, str) and order.upper() in ("RGB", "BGR")):
        raise bad("input.channel_order", "'RGB' or 'BGR'", order)
    if not (_is_number(inp.get("scale")) and inp["scale"] > 0):
        raise bad("input.scale", "a number above 0", inp.get("scale"))
    for key, positive in (("mean", False), ("std", True)):
        v = inp.get(key)
        if not (
            isinstance(v, (list, tuple))
            and len(v) == 3
            and all(_is_number(x) for x in v)
            and (not positive or all(x > 0 for x in v))
        ):
            raise bad(f"input.{key}", "a list of 3 numbers" + (" above 0" if positive else ""), v)
    if not isinstance(inp.get("clahe"), bool):
        raise bad("input.clahe", "true or false", inp.get("clahe"))
    _check_scale_block(card.scale, bad)


# The numbers of a card's ``scale`` block that inference reads (scale.py), and their rules.
_SCALE_NUMBERS = ("working_ppd", "trained_ppd", "vessel_calibre_px")


def _check_scale_block(block, bad) -> None:
    """The ``scale`` block is a JSON object whose numbers are numbers: a hand-edited ``"big"``
    must be one sentence here, not an AttributeError deep inside a segmentation."""
    if not isinstance(block, dict):
        raise bad("scale", 'a JSON object such as {"working_ppd": 12.0}', block)
    for key in _SCALE_NUMBERS:
        value = block.get(key)
        if value is not None and not (_is_number(value) and value > 0):
            raise bad(f"scale.{key}", "a number above 0 (or absent)", value)
    fusion = block.get("fusion")
    if fusion is not None and not (_is_number(fusion) and 1.0 <= fusion <= 3.0):
        raise bad("scale.fusion", "a number between 1 and 3 (or absent)", fusion)


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
        if not isinstance(card.architecture, str) or card.architecture not in ARCHITECTURES:
            raise WeightsError(f"the model card names an unknown architecture {card.architecture!r}")
        if card.input is not None and not isinstance(card.input, dict):
            raise WeightsError(f"the model card's 'input' must be a JSON object, got {card.input!r}")
        card.input = {**FRESH_INPUT, **(card.input or {})}
        for key in ("training", "metrics", "scale"):
            if getattr(card, key) is None:
                setattr(card, key, {})
        check_card_fields(card)
        return card
