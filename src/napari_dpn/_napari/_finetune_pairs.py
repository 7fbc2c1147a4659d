"""The Fine-tune widget's training and validation pairs: from viewer layers and from folders.

:class:`PairsMixin` lists every image whose vessels layer the user *corrected* (a bare network
output is never a training pair) and every image with a ground truth, keeps the user's ticks
across refreshes, and turns the ticked ones (plus a folder of saved annotations) into pairs for
the training engine when a run starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractItemView, QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QToolButton

from napari_dpn.errors import DPNError, InputError

from . import _roles
from ._dock import wrapped_label

NO_PAIRS_MESSAGE = (
    "No training pairs: segment an image with 'Segment vessels' and correct its "
    "'<image> vessels' layer, or choose a folder of saved annotations."
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
        from napari_dpn.image_io import as_rgb

        return as_rgb(self.image), self.label, self.fov


def _layer_data(layer) -> np.ndarray:
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return np.asarray(data)


def _pair_list(tooltip: str) -> QListWidget:
    """A short list of tickable (image, masks) pairs; the training and validation boxes share it."""
    lst = QListWidget()
    lst.setSelectionMode(QAbstractItemView.NoSelection)
    lst.setMaximumHeight(58)
    lst.setToolTip(tooltip)
    lst.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)  # long names are elided instead
    lst.setTextElideMode(Qt.ElideMiddle)
    return lst


def _folder_row(box_layout, tooltip: str) -> tuple[QLabel, QToolButton, QToolButton]:
    """'Folder: none'  […] [×] under a pair list; returns (label, choose button, clear button)."""
    row = QHBoxLayout()
    label = wrapped_label("Folder: none")
    choose = QToolButton()
    choose.setText("…")
    choose.setToolTip(tooltip)
    clear = QToolButton()
    clear.setText("×")
    clear.setToolTip("Do not use a folder.")
    row.addWidget(label, 1)
    row.addWidget(choose)
    row.addWidget(clear)
    box_layout.addLayout(row)
    return label, choose, clear


class PairsMixin:
    """Which images train and which validate (part of :class:`FinetuneWidget`).

    Uses the widget's ``viewer``, ``_image_layers``, ``_gt_candidates``, ``_ask_folder``, ``_error``,
    ``_manual_val``, ``_checked``, ``_train_folder``, ``_val_folder`` and the list, combo and
    folder controls built in ``_build_ui``.
    """

    # ------------------------------------------------------------------ viewer -> lists

    def _linked_labels(self, image, role: str, name: str):
        """The labels layer of ``role`` belonging to ``image`` (by metadata, else by name)."""
        by_name = None
        for lyr in self.viewer.layers:
            if not isinstance(lyr, Labels):
                continue
            info = _roles.info_of(lyr)
            if info.get("role") == role and info.get("image") == image.name:
                return lyr
            if lyr.name == name and info.get("role") in (role, None):
                by_name = lyr
        return by_name

    def vessels_layer(self, image):
        return self._linked_labels(image, "vessels", _roles.vessels_name(image.name))

    def fov_layer(self, image):
        return self._linked_labels(image, "fov", _roles.fov_name(image.name))

    def ground_truth_layer(self, image):
        return self._linked_labels(image, "ground_truth", _roles.ground_truth_name(image.name))

    def train_candidates(self) -> list[tuple]:
        """(image, vessels layer, FOV layer or None) for every image with a *corrected* vessels
        layer: edited, saved, or opened from a saved annotation.  A network output nobody
        looked at is not an annotation."""
        out = []
        for image in self._image_layers():
            vessels = self.vessels_layer(image)
            if vessels is not None and _roles.is_corrected(vessels):
                out.append((image, vessels, self.fov_layer(image)))
        return out

    def val_candidates(self) -> list[tuple]:
        """(image, ground truth, FOV layer or None): linked ones, then those added by hand."""
        layers = list(self.viewer.layers)
        out, seen = [], set()
        for image in self._image_layers():
            gt = self.ground_truth_layer(image)
            if gt is not None:
                out.append((image, gt, self.fov_layer(image)))
                seen.add((id(image), id(gt)))
        for image, gt in self._manual_val:
            if image in layers and gt in layers and (id(image), id(gt)) not in seen:
                out.append((image, gt, self.fov_layer(image)))
                seen.add((id(image), id(gt)))
        return out

    def _fill_list(self, lst: QListWidget, key: str, entries, default) -> None:
        lst.blockSignals(True)
        lst.clear()
        for entry in entries:
            image, masks, fov = entry
            what = f"{masks.name} + {fov.name}" if fov is not None else f"{masks.name} (FOV estimated)"
            item = QListWidgetItem(f"{image.name}  —  {what}")
            item.setToolTip(item.text())
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            checked = self._checked.get((key, id(image), id(masks)), default(entry))
            item.setCheckState(Qt.Checked if checked else Qt.Unchecked)
            item.setData(Qt.UserRole, (key, entry))
            lst.addItem(item)
        if not entries:
            item = QListWidgetItem("(none in the viewer)" if key == "train" else "(none)")
            item.setFlags(Qt.NoItemFlags)
            lst.addItem(item)
        lst.blockSignals(False)

    def _on_item_changed(self, item) -> None:
        data = item.data(Qt.UserRole)
        if data:
            key, (image, masks, _) = data
            self._checked[(key, id(image), id(masks))] = item.checkState() == Qt.Checked

    def refresh_layers(self) -> None:
        """Re-list the training and validation pairs and the validation combos."""
        train = self.train_candidates()
        val = self.val_candidates()
        val_ids = {id(e[0]) for e in val}
        # An image with a ground truth is a validation image: it stays ticked there, and its
        # corrected layer is offered for training unticked (never both by default).
        self._fill_list(self.train_list, "train", train, lambda e: id(e[0]) not in val_ids)
        self._fill_list(self.val_list, "val", val, lambda e: True)
        n_train = sum(1 for e in self._checked_entries(self.train_list))
        n_val = sum(1 for e in self._checked_entries(self.val_list))
        self.train_section.set_summary(f"{n_train} ticked")
        self.val_section.set_summary(f"{n_val} ticked")
        for combo, layers in ((self.val_image_combo, self._image_layers()), (self.val_gt_combo, self._gt_candidates())):
            keep = combo.currentData()
            combo.blockSignals(True)
            combo.clear()
            for lyr in layers:
                combo.addItem(lyr.name, lyr)
            idx = next((i for i in range(combo.count()) if combo.itemData(i) is keep), 0)
            combo.setCurrentIndex(idx if combo.count() else -1)
            combo.blockSignals(False)

    def _checked_entries(self, lst: QListWidget) -> list[tuple]:
        out = []
        for i in range(lst.count()):
            item = lst.item(i)
            data = item.data(Qt.UserRole)
            if data and item.checkState() == Qt.Checked:
                out.append(data[1])
        return out

    def set_checked(self, which: str, image_name: str, checked: bool) -> None:
        """Tick or untick the pair of ``image_name`` in the 'train' or 'val' list."""
        lst = self.train_list if which == "train" else self.val_list
        for i in range(lst.count()):
            data = lst.item(i).data(Qt.UserRole)
            if data and data[1][0].name == image_name:
                lst.item(i).setCheckState(Qt.Checked if checked else Qt.Unchecked)
                return
        raise ValueError(f"no {which} pair for {image_name!r}")

    def add_validation_pair(self, *_, image=None, ground_truth=None) -> bool:
        image = image if image is not None else self.val_image_combo.currentData()
        gt = ground_truth if ground_truth is not None else self.val_gt_combo.currentData()
        if image is None or gt is None:
            self._error("Choose an image layer and its ground-truth labels layer to add a validation pair.")
            return False
        self._manual_val.append((image, gt))
        self._checked[("val", id(image), id(gt))] = True
        self.refresh_layers()
        return True

    # ------------------------------------------------------------------ folders

    def choose_train_folder(self, *_) -> None:
        folder = self._ask_folder("Folder of images with saved annotations")
        if folder is not None:
            self.set_train_folder(folder)

    def choose_val_folder(self, *_) -> None:
        folder = self._ask_folder("Folder of validation images with ground truth")
        if folder is not None:
            self.set_val_folder(folder)

    @staticmethod
    def _folder_pairs(folder: Path) -> tuple[list, str]:
        """(pairs, what they are) of a folder: saved annotations (``<image>_vessels.png``, or one
        label sharing an image's leading number, as DRIVE's ``21_manual1.gif``); else, in a
        DRIVE/STARE/CHASE_DB1 release folder, that split part's images with their manual labels."""
        from napari_dpn.annotations import FilePair, find_pairs
        from napari_dpn.datasets import DATASETS, detect_layout, load_split

        found = find_pairs(folder)
        if found:
            no_fov = sum(1 for p in found if p[2] is None)
            extra = f", {no_fov} without FOV mask (estimated)" if no_fov else ""
            return [FilePair(i.stem, i, lab, fov) for i, lab, fov in found], f"{len(found)} annotated image(s){extra}"
        layout = detect_layout(folder)
        if layout:
            key, root = layout
            try:
                split = load_split(key, root)
            except DPNError:
                split = None
            if split is not None:
                test = "test" in {p.lower() for p in folder.resolve().relative_to(root.resolve()).parts}
                samples = split.test if test else split.train
                if samples:
                    what = "test" if test else "training"
                    return samples, (
                        f"the {DATASETS[key].folder} release: its {len(samples)} {what} images with their manual labels"
                    )
        return [], (
            "0 annotated image(s): looked for <image>_vessels.png beside each image, or one label "
            "sharing the image's leading number (as DRIVE's 21_manual1.gif beside 21_training.tif); "
            "none found (images in sub-folders are not searched)"
        )

    @classmethod
    def _release_pairs(cls, folder: Path) -> list:
        """A dataset release folder's samples, or [] (then ``folder_pairs``, with its checks, applies)."""
        found = cls._folder_pairs(folder)[0]
        return found if found and hasattr(found[0], "dataset") else []

    @classmethod
    def _folder_text(cls, folder: Path | None) -> str:
        if folder is None:
            return "Folder: none"
        return f"Folder: {folder} — {cls._folder_pairs(folder)[1]}"

    def set_train_folder(self, folder) -> None:
        self._train_folder = Path(folder).expanduser() if folder else None
        self.train_folder_label.setText(self._folder_text(self._train_folder))

    def set_val_folder(self, folder) -> None:
        self._val_folder = Path(folder).expanduser() if folder else None
        self.val_folder_label.setText(self._folder_text(self._val_folder))

    def _layer_pair(self, image, masks, fov) -> LayerPair:
        from ._segment_widget import SegmentWidget

        data = SegmentWidget.image_data(image)  # checks only; converted in the worker
        label = _layer_data(masks) > 0
        fov_mask = _layer_data(fov) > 0 if fov is not None else None
        angle = _roles.info_of(masks).get("field_angle") or _roles.info_of(image).get("field_angle")
        return LayerPair(image.name, data, label, fov_mask, angle if isinstance(angle, (int, float)) else None)

    def collect_pairs(self) -> tuple[list, list, list[str]]:
        """(training pairs, validation pairs, names without a FOV mask); InputError if unusable."""
        from napari_dpn.annotations import folder_pairs

        train, val, no_fov = [], [], []
        for image, vessels, fov in self._checked_entries(self.train_list):
            train.append(self._layer_pair(image, vessels, fov))
        if self._train_folder is not None:
            train += self._release_pairs(self._train_folder) or folder_pairs(self._train_folder)
        if not train:
            raise InputError(NO_PAIRS_MESSAGE)
        for image, gt, fov in self._checked_entries(self.val_list):
            val.append(self._layer_pair(image, gt, fov))
        if self._val_folder is not None:
            val += self._release_pairs(self._val_folder) or folder_pairs(self._val_folder)
        no_fov = [p.name for p in train + val if getattr(p, "fov", None) is None and not hasattr(p, "dataset")]
        return train, val, no_fov
