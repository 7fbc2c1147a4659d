"""Layer metadata shared by the readers and the widgets.

Every layer napari-dpn creates carries ``metadata["napari_dpn"] = {"role": ..., ...}``:

- ``"image"``         a fundus photograph; ``"path"`` is its file (also for images from a folder).
- ``"ground_truth"``  a manual vessel annotation (labels 0/1); ``"image"`` names its photograph.
- ``"fov"``           a field-of-view mask (labels 0/1); ``"source"`` is ``"file"`` or ``"estimated"``.
- ``"mask"``          any other two-valued file opened by the reader.
- ``"probability"``, ``"vessels"``, ``"errors"``  outputs of the "Segment vessels" widget.
  A ``"vessels"`` layer carries ``"corrected": True`` once the user edited it, saved it, or it was
  opened from a saved annotation file; only such layers are training pairs for "Fine-tune DPN".
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


def set_info(layer, **changes) -> None:
    """Update a layer's napari-dpn metadata (None removes a key).

    The metadata dict is replaced, not mutated, so napari emits ``layer.events.metadata`` and the
    other widget (the fine-tune lists) hears about it.
    """
    info = info_of(layer)
    for key, value in changes.items():
        if value is None:
            info.pop(key, None)
        else:
            info[key] = value
    if info == info_of(layer):
        return
    layer.metadata = {**dict(getattr(layer, "metadata", {}) or {}), KEY: info}


def is_corrected(layer) -> bool:
    """True for a vessels layer that holds a user's annotation, not a bare network output.

    A layer without napari-dpn metadata is one the user made (e.g. named ``"<image> vessels"``):
    it counts as an annotation.
    """
    info = info_of(layer)
    role = info.get("role")
    if role is None:
        return True
    return role == "vessels" and bool(info.get("corrected"))


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
