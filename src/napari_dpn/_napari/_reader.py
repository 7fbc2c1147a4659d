"""Readers: STARE .ppm/.pgm, DRIVE GIF annotations and masks, saved annotations, dataset folders.

- Files (``*.ppm``, ``*.pgm``, ``*.gif``, and annotations by name: ``<image>_vessels.png`` /
  ``<image>_fov.png`` as *Save annotation* writes them, CHASE_DB1's ``<image>_1stHO.png``) are
  opened by content: a colour or many-valued greyscale picture becomes an image layer; a
  picture with at most two grey values (a vessel annotation or a FOV mask, whatever its
  extension says) becomes a labels layer with values 0/1.  When the file name says whose
  annotation it is (:func:`annotation_of`), the labels layer is named and tagged as the
  widgets name theirs: ``"<image> vessels"`` (a saved correction, which *Segment vessels*
  resumes), ``"<image> FOV"``, ``"<image> ground truth"``.
- A folder in a dataset's layout (:mod:`napari_dpn.layouts`: DRIVE, STARE, CHASE_DB1, AV-WIDE)
  opens its **first** image (sorted by name) as up to three layers: the photograph,
  ``"<name> ground truth"`` (first observer) and ``"<name> FOV"`` (hidden; only DRIVE and STARE
  ship masks).  A notification says how many
  images the folder holds and where they are.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from napari_dpn import layouts
from napari_dpn.datasets import find_dataset

from . import _roles

FILE_SUFFIXES = (".ppm", ".pgm", ".gif")
# Suffixes an annotation named by :func:`annotation_of` may have to be opened by this reader.
ANNOTATION_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm")

# File stems of our own annotations (annotations.py); the datasets' come from their layouts.
_OWN_STEMS = (
    (re.compile(r"^(?P<image>.+)_vessels$", re.I), "vessels", 1, None),
    (re.compile(r"^(?P<image>.+)_fov$", re.I), "fov", 1, None),
)


def _annotation_stems():
    """(pattern, role, observer, image-name hook) for our names, then every dataset layout's
    (DRIVE NN_manual1 / NN_test_mask, STARE imNNNN.ah / imNNNN_mask, CHASE_DB1 Image_NNX_1stHO...)."""
    stems = list(_OWN_STEMS)
    for a, layout in layouts.annotation_names():
        pattern = re.compile(f"^(?P<image>{a.image}){a.suffix}$", re.I)
        stems.append((pattern, a.role, a.observer, layout.label_image_name if a.image != ".+" else None))
    return stems


def annotation_of(path_or_name) -> tuple[str, str, int] | None:
    """(role, image layer name, observer) when a file or layer name is an annotation's, else None.

    ``eye_vessels.png`` -> ("vessels", "eye", 1); ``Image_01L_1stHO.png`` -> ("ground_truth",
    "Image_01L", 1); ``01_manual1.gif`` in DRIVE/test/1st_manual -> ("ground_truth", "01_test", 1).
    """
    path = Path(path_or_name) if isinstance(path_or_name, Path) else None
    text = str(path_or_name)
    stem = path.stem if path is not None else text
    if path is None and Path(text).suffix.lower() in ANNOTATION_SUFFIXES:
        stem = Path(text).stem
    for pattern, role, observer, image_name in _annotation_stems():
        m = pattern.match(stem)
        if m is None:
            continue
        image = m.group("image")
        if not observer:  # the name says which observer (DRIVE's NN_manual2)
            observer = int(m.group("observer"))
        if image_name is not None:  # a label named by a number (DRIVE): its photograph's name
            image = image_name(image, path)
        return role, image, observer
    return None


def annotation_layer_name(role: str, image: str, observer: int = 1) -> str:
    if role == "vessels":
        return _roles.vessels_name(image)
    if role == "fov":
        return _roles.fov_name(image)
    name = _roles.ground_truth_name(image)
    return name if observer == 1 else f"{name} (2nd observer)"


def _single_path(path):
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return Path(path)


# --------------------------------------------------------------------------- files


def get_reader(path):
    """npe2 reader for single ``.ppm``/``.pgm``/``.gif`` files and annotations named as such."""
    p = _single_path(path)
    if p is None or p.is_dir():
        return None
    suffix = p.suffix.lower()
    if suffix in FILE_SUFFIXES or (suffix in ANNOTATION_SUFFIXES and annotation_of(p) is not None):
        return read_files
    return None


def _arrange_viewer() -> None:
    """Whatever the opening order, the viewer stacks the layers by role and selects the vessels
    layer (``_roles.keep_arranged``), with or without a napari-dpn widget docked."""
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:  # noqa: BLE001 - no viewer (a script): nothing to arrange
        return
    if viewer is not None:
        _roles.keep_arranged(getattr(viewer, "__wrapped__", viewer))


def read_files(path):
    p = _single_path(path)
    _arrange_viewer()
    return [file_layer(p)]


def _grey_if_equal_channels(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return rgb[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        return arr[..., 0]
    return arr


def _two_valued(arr: np.ndarray) -> np.ndarray | None:
    """0/1 uint8 labels if ``arr`` holds at most two values (one per pixel), else None."""
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        colours = np.unique(arr[..., :3].reshape(-1, 3), axis=0)
        if len(colours) > 2:
            return None
        luma = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        arr = luma
    if arr.ndim != 2:
        return None
    # Two passes over the pixels (min/max, then a count), not np.unique's sort: an 8-Mpx
    # ground truth is read on the GUI thread.
    lo, hi = arr.min(), arr.max()
    if lo != hi and np.count_nonzero(arr == lo) + np.count_nonzero(arr == hi) != arr.size:
        return None
    values = np.array([lo] if lo == hi else [lo, hi], dtype=arr.dtype)
    if len(values) == 2:
        return (arr > (float(values[0]) + float(values[1])) / 2).view(np.uint8)  # bool -> 0/1, no copy
    top = (
        1.0
        if arr.dtype == bool or (arr.dtype.kind == "f" and values[0] <= 1)
        else (65535 if arr.dtype == np.uint16 else 255)
    )
    return (arr > top / 2).view(np.uint8)


def file_layer(p: Path):
    """One layer-data tuple for an image or mask file, by content."""
    from napari_dpn.image_io import read_image

    arr = read_image(p)
    arr = _grey_if_equal_channels(np.asarray(arr))
    labels = _two_valued(arr)
    if labels is not None:
        named = annotation_of(p)
        if named is not None:
            role, image, observer = named
            meta = _roles.meta(
                role,
                image=image,
                path=str(p),
                source="file",
                corrected=True if role == "vessels" else None,
                observer=observer if observer != 1 else None,
            )
            kwargs = {"name": annotation_layer_name(role, image, observer), "metadata": meta, **_roles.style(role)}
            if role == "fov":
                kwargs["visible"] = False
            return labels, kwargs, "labels"
        role = "fov" if "mask" in p.stem.lower() else "mask"
        kwargs = {"name": p.stem, "metadata": _roles.meta(role, path=str(p), source="file"), **_roles.style(role)}
        return labels, kwargs, "labels"
    kwargs = {"name": p.stem, "metadata": _roles.meta("image", path=str(p))}
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        kwargs["rgb"] = True
    elif arr.ndim == 2:
        kwargs["colormap"] = "gray"
    return arr, kwargs, "image"


# --------------------------------------------------------------------------- folders


def get_folder_reader(path):
    """npe2 reader for a dataset folder in one of the layouts (at any level of the layout)."""
    p = _single_path(path)
    if p is None or not p.is_dir() or find_dataset(p) is None:
        return None
    return read_folder


def read_folder(path, index: int = 0):
    from napari_dpn.image_io import read_image, read_mask

    p = _single_path(path)
    found = find_dataset(p)
    if found is None:  # pragma: no cover - get_folder_reader checked this
        return []
    entry = found.entries[index]
    name = entry.name
    _arrange_viewer()
    rgb = np.asarray(read_image(entry.image_path))
    layers = [
        (
            rgb,
            {
                "name": name,
                "rgb": rgb.ndim == 3 and rgb.shape[-1] in (3, 4),
                "metadata": _roles.meta("image", path=str(entry.image_path), dataset=found.dataset),
            },
            "image",
        )
    ]
    if entry.label_path is not None:
        gt = read_mask(entry.label_path).astype(np.uint8)
        layers.append(
            (
                gt,
                {
                    "name": _roles.ground_truth_name(name),
                    "metadata": _roles.meta("ground_truth", image=name, path=str(entry.label_path)),
                    **_roles.style("ground_truth"),
                },
                "labels",
            )
        )
    if entry.fov_path is not None:
        fov = read_mask(entry.fov_path).astype(np.uint8)
        layers.append(
            (
                fov,
                {
                    "name": _roles.fov_name(name),
                    "visible": False,
                    **_roles.style("fov"),
                    "metadata": _roles.meta("fov", image=name, source="file", path=str(entry.fov_path)),
                },
                "labels",
            )
        )
    extras = [
        what for what, have in (("ground truth", entry.label_path), ("FOV mask", entry.fov_path)) if have is not None
    ]
    _notify_folder(found.dataset, name, len(found.entries), found.root, extras)
    return layers


def folder_message(dataset: str, name: str, n: int, root: Path, extras: list[str]) -> str:
    with_ = f" with its {' and '.join(extras)}" if extras else ""
    if n > 1:
        return f"{dataset} folder: opened {name}{with_}, the first of its {n} images; the others are in {root}."
    return f"{dataset} folder: opened {name}{with_}."


def _notify_folder(dataset, name, n, root, extras) -> None:
    from napari.utils.notifications import show_info

    show_info(folder_message(dataset, name, n, root, extras))
