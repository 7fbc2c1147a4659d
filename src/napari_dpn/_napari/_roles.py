"""Layer metadata shared by the readers and the widgets.

Every layer napari-dpn creates carries ``metadata["napari_dpn"] = {"role": ..., ...}``:

- ``"image"``         a fundus photograph; ``"path"`` is its file (also for images from a folder).
- ``"ground_truth"``  a manual vessel annotation (labels 0/1); ``"image"`` names its photograph.
- ``"fov"``           a field-of-view mask (labels 0/1); ``"source"`` is ``"file"`` or ``"estimated"``.
- ``"mask"``          any other two-valued file opened by the reader.
- ``"probability"``, ``"vessels"``, ``"errors"``  outputs of the "Segment vessels" widget.
"""
from __future__ import annotations

KEY = "napari_dpn"


def meta(role: str, **extra) -> dict:
    return {KEY: {"role": role, **{k: v for k, v in extra.items() if v is not None}}}


def role_of(layer) -> str | None:
    info = getattr(layer, "metadata", {}).get(KEY) or {}
    return info.get("role")


def info_of(layer) -> dict:
    return dict(getattr(layer, "metadata", {}).get(KEY) or {})


# Names of the widget's output layers for an image layer called ``image``.
def probability_name(image: str) -> str:
    return f"{image} vessel probability"


def vessels_name(image: str) -> str:
    return f"{image} vessels"


def fov_name(image: str) -> str:
    return f"{image} FOV"


def errors_name(image: str) -> str:
    return f"{image} errors"


def ground_truth_name(image: str) -> str:
    return f"{image} ground truth"
