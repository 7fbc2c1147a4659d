"""Where the Fine-tune widget's training and validation pairs come from (no Qt).

Viewer layers: every image whose vessels layer the user *corrected* (a bare network output is
never a training pair), and every image with a ground truth.  Folders: saved annotations
(``<image>_vessels.png``, DRIVE-style labels) or a DRIVE/STARE/CHASE_DB1 release folder.
:class:`LayerPair` carries a layer's pixels to the engine, which loads it in the worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from napari.layers import Labels

from napari_dpn.annotations import FilePair, find_pairs, folder_pairs
from napari_dpn.datasets import DATASETS, detect_layout, load_split
from napari_dpn.errors import DPNError
from napari_dpn.image_io import as_rgb

from . import _roles
from ._segment_widget import SegmentWidget

NO_PAIRS_MESSAGE = (
    "No training pairs: segment an image with 'Segment vessels' and correct its "
    "'<image> vessels' layer, or choose a folder of saved annotations."
)
NONE_FOUND = (
    "0 annotated image(s): looked for <image>_vessels.png beside each image, or one label "
    "sharing the image's leading number (as DRIVE's 21_manual1.gif beside 21_training.tif); "
    "none found (images in sub-folders are not searched)"
)


@dataclass(frozen=True)
class LayerPair:
    """An image with its masks, taken from viewer layers when a run starts (``load()`` as
    :class:`napari_dpn.annotations.FilePair`, so the engine names it in its messages).

    ``image`` is the layer's pixels as they are: the engine calls ``load()`` in the worker
    thread, where the float conversion of a large photograph does not stall the viewer.
    """

    name: str
    image: np.ndarray
    label: np.ndarray
    fov: np.ndarray | None
    field_angle: float | None = None  # the camera's, when the layer records it (training's scale)

    def load(self):
        return as_rgb(self.image), self.label, self.fov


def _layer_data(layer) -> np.ndarray:
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return np.asarray(data)


def linked_labels(layers, image, role: str):
    """The labels layer of ``role`` belonging to ``image`` (by metadata, else by name)."""
    name = {"vessels": _roles.vessels_name, "fov": _roles.fov_name, "ground_truth": _roles.ground_truth_name}[role](
        image.name
    )
    by_name = None
    for lyr in layers:
        if not isinstance(lyr, Labels):
            continue
        info = _roles.info_of(lyr)
        if info.get("role") == role and info.get("image") == image.name:
            return lyr
        if lyr.name == name and info.get("role") in (role, None):
            by_name = lyr
    return by_name


def train_candidates(layers, images) -> list[tuple]:
    """(image, vessels layer, FOV layer or None) for every image with a *corrected* vessels layer:
    edited, saved, or opened from a saved annotation.  A network output nobody looked at is not
    an annotation."""
    out = []
    for image in images:
        vessels = linked_labels(layers, image, "vessels")
        if vessels is not None and _roles.is_corrected(vessels):
            out.append((image, vessels, linked_labels(layers, image, "fov")))
    return out


def val_candidates(layers, images, manual) -> list[tuple]:
    """(image, ground truth, FOV layer or None): linked ones, then those ``manual``ly added."""
    layers = list(layers)
    out, seen = [], set()
    linked = [(image, linked_labels(layers, image, "ground_truth")) for image in images]
    for image, gt in [(i, g) for i, g in linked if g is not None] + list(manual):
        if image in layers and gt in layers and (id(image), id(gt)) not in seen:
            out.append((image, gt, linked_labels(layers, image, "fov")))
            seen.add((id(image), id(gt)))
    return out


def layer_pair(image, masks, fov) -> LayerPair:
    """The pair of three layers (the image checked on the GUI thread, converted in the worker)."""
    data = SegmentWidget.image_data(image)
    label = _layer_data(masks) > 0
    fov_mask = _layer_data(fov) > 0 if fov is not None else None
    angle = _roles.info_of(masks).get("field_angle") or _roles.info_of(image).get("field_angle")
    return LayerPair(image.name, data, label, fov_mask, angle if isinstance(angle, (int, float)) else None)


def _release_samples(folder: Path) -> tuple[list, str]:
    """In a DRIVE/STARE/CHASE_DB1 release folder, that split part's images with their labels."""
    layout = detect_layout(folder)
    if not layout:
        return [], ""
    key, root = layout
    try:
        split = load_split(key, root)
    except DPNError:
        return [], ""
    test = "test" in {p.lower() for p in folder.resolve().relative_to(root.resolve()).parts}
    samples = split.test if test else split.train
    what = "test" if test else "training"
    return samples, f"the {DATASETS[key].folder} release: its {len(samples)} {what} images with their manual labels"


def scan_folder(folder: Path) -> tuple[list, str]:
    """(pairs, what they are) of a folder: saved annotations (``<image>_vessels.png``, or one
    label sharing an image's leading number, as DRIVE's ``21_manual1.gif``); else, in a
    DRIVE/STARE/CHASE_DB1 release folder, that split part's images with their manual labels."""
    found = find_pairs(folder)
    if found:
        no_fov = sum(1 for p in found if p[2] is None)
        extra = f", {no_fov} without FOV mask (estimated)" if no_fov else ""
        return [FilePair(i.stem, i, lab, fov) for i, lab, fov in found], f"{len(found)} annotated image(s){extra}"
    samples, what = _release_samples(folder)
    if samples:
        return samples, what
    return [], NONE_FOUND


def folder_text(folder: Path | None) -> str:
    """The line under a pair list: the folder and what it holds."""
    return "Folder: none" if folder is None else f"Folder: {folder} — {scan_folder(folder)[1]}"


def pairs_of_folder(folder: Path) -> list:
    """A release folder's samples, else ``folder_pairs`` (with its checks and messages)."""
    found = scan_folder(folder)[0]
    if found and hasattr(found[0], "dataset"):
        return found
    return folder_pairs(folder)
