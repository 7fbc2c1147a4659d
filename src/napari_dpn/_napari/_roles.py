"""Layer metadata shared by the readers and the widgets.

Every layer napari-dpn creates carries ``metadata["napari_dpn"] = {"role": ..., ...}``:

- ``"image"``         a fundus photograph; ``"path"`` is its file (also for images from a folder).
- ``"ground_truth"``  a manual vessel annotation (labels 0/1); ``"image"`` names its photograph.
- ``"fov"``           a field-of-view mask (labels 0/1); ``"source"`` is ``"file"`` or ``"estimated"``.
- ``"mask"``          any other two-valued file opened by the reader.
- ``"probability"``, ``"vessels"``, ``"errors"``  outputs of the "Segment vessels" widget.
  A ``"vessels"`` layer carries ``"corrected": True`` once the user edited it, saved it, or it was
  opened from a saved annotation file; only such layers are training pairs for "Fine-tune DPN".

Every layer of a role looks the same whichever widget or reader made it (:func:`style`), and the
layers of a viewer stay stacked by role (:func:`keep_arranged`): the photograph at the bottom,
then the probability, the FOV, the ground truth, the errors, and the vessels on top; after an
open or a resume the vessels layer of that image is the selected one (the brush paints it).
"""

from __future__ import annotations

import weakref

KEY = "napari_dpn"
SESSION_KEY = "napari_dpn_session"  # the Correct-a-folder widget's layers (image, uncertainty, vessels)

# One colour scheme, for contrast on fundus photographs (an orange-red retina with dark red
# vessels): no label colour is red, orange or brown, and each role has its own hue.
VESSEL_COLOUR = "#00e5ff"  # cyan, the complement of the retina's red
GROUND_TRUTH_COLOUR = "#ffd600"  # yellow
FOV_COLOUR = "#2962ff"  # blue, faint: it covers the whole retina
FP_COLOUR = "#ff00ff"  # errors: false positive, magenta
FN_COLOUR = "#39ff14"  # errors: false negative, green
PROBABILITY_COLORMAP = "gray"  # added to the photograph: a likely vessel turns white, whatever its hue

_LABEL_STYLES = {
    "vessels": ({1: VESSEL_COLOUR}, 0.8),
    "ground_truth": ({1: GROUND_TRUTH_COLOUR}, 0.6),
    "mask": ({1: GROUND_TRUTH_COLOUR}, 0.6),
    "fov": ({1: FOV_COLOUR}, 0.25),
    "errors": ({1: FP_COLOUR, 2: FN_COLOUR}, 0.9),
}


def label_colormap(colours: dict):
    """Labels colours: 0 (and unknown labels) transparent, each given label its colour."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", **colours})


def style(role: str) -> dict:
    """The keyword arguments (colours, opacity, blending) every layer of ``role`` is made with."""
    if role in _LABEL_STYLES:
        colours, opacity = _LABEL_STYLES[role]
        return {"colormap": label_colormap(colours), "opacity": opacity}
    if role == "probability":
        return {
            "colormap": PROBABILITY_COLORMAP,
            "contrast_limits": (0.0, 1.0),
            "opacity": 0.7,
            "blending": "additive",
        }
    return {}


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


# ----------------------------------------------------------------------------- stacking by role

# Bottom to top.  A layer without napari-dpn metadata is placed by its kind: an image is a
# photograph, a labels layer an annotation (a vessels one when named "<image> vessels").
_RANK = {"image": 0, "probability": 1, "uncertainty": 1, "fov": 2, "ground_truth": 3, "mask": 3, "errors": 4}
VESSELS_RANK = 5
OTHER_RANK = 6  # points, shapes, ...: above everything


def _kind(layer) -> str:
    return type(layer).__name__.lower()


def stack_role(layer) -> str | None:
    """The role that places ``layer`` in the stack (its napari-dpn role, else a guess)."""
    role = role_of(layer)
    if role is not None:
        return role
    kind = _kind(layer)
    meta = getattr(layer, "metadata", {}) or {}
    if kind == "image":
        return "uncertainty" if meta.get(SESSION_KEY) and not getattr(layer, "rgb", False) else "image"
    if kind == "labels":
        return "vessels" if meta.get(SESSION_KEY) or str(layer.name).endswith(" vessels") else "mask"
    return None


def rank(layer) -> int:
    role = stack_role(layer)
    if role == "vessels":
        return VESSELS_RANK
    return _RANK.get(role, OTHER_RANK)


def image_of(layer) -> str | None:
    """The name of the photograph a layer belongs to."""
    info = info_of(layer)
    if info.get("image"):
        return info["image"]
    meta = getattr(layer, "metadata", {}) or {}
    if meta.get(SESSION_KEY) and meta.get("image"):
        return meta["image"]
    role = stack_role(layer)
    name = str(layer.name)
    if role == "image":
        return name
    if role == "vessels" and name.endswith(" vessels"):
        return name[: -len(" vessels")]
    return None


def arrange(viewer) -> None:
    """Stack the layers by role (stable: layers of one role keep their order)."""
    layers = viewer.layers
    want = sorted(layers, key=rank)
    if list(layers) == want:
        return
    for target, layer in enumerate(want):
        current = layers.index(layer)
        if current != target:
            layers.move(current, target)


def add_in_place(viewer, layer):
    """Insert ``layer`` where its role belongs in the stack (above the layers of its rank and
    below): no move afterwards, which would cost another repaint and re-listing."""
    r = rank(layer)
    index = next((i for i, other in enumerate(viewer.layers) if rank(other) > r), len(viewer.layers))
    viewer.layers.insert(index, layer)
    return layer


def select_vessels(viewer, added) -> None:
    """After layers were added (an open, a resume): select the vessels layer among them, else the
    vessels layer of their photograph when the selection is one of them (a FOV, a ground truth,
    the photograph): the brush must never paint a FOV."""
    live = [lyr for lyr in added if lyr in viewer.layers]
    if not live:
        return
    vessels = [lyr for lyr in live if stack_role(lyr) == "vessels"]
    if vessels:
        viewer.layers.selection.active = vessels[-1]
        return
    active = viewer.layers.selection.active
    if active is not None and active not in live:
        return  # the user chose another layer meanwhile
    images = {image_of(lyr) for lyr in live} - {None}
    for lyr in reversed(list(viewer.layers)):
        if stack_role(lyr) == "vessels" and image_of(lyr) in images:
            viewer.layers.selection.active = lyr
            return


_ARRANGED: dict = {}  # id(viewer.layers) -> weak reference to the viewer


def keep_arranged(viewer) -> None:
    """From now on, whenever layers are added to ``viewer`` (by any reader or widget, in any
    order), stack them by role and select the vessels layer (:func:`select_vessels`) once the
    event loop is back: one arrangement per batch of added layers.  Idempotent."""
    key = id(viewer.layers)
    ref = _ARRANGED.get(key)
    if ref is not None and ref() is viewer:
        return
    viewer_ref = weakref.ref(viewer)
    pending: list = []

    def settle() -> None:
        added = list(pending)
        pending.clear()
        v = viewer_ref()
        if v is None:
            return
        try:
            arrange(v)
            select_vessels(v, added)
        except (RuntimeError, ValueError, KeyError):  # the viewer is closing
            pass

    def on_inserted(event) -> None:
        from qtpy.QtCore import QTimer

        if not pending:
            QTimer.singleShot(0, settle)
        pending.append(event.value)

    viewer.layers.events.inserted.connect(on_inserted)
    for k in [k for k, r in _ARRANGED.items() if r() is None]:
        del _ARRANGED[k]
    _ARRANGED[key] = viewer_ref
