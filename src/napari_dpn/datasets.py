"""DRIVE, STARE, CHASE_DB1 and AV-WIDE in their release layouts, with the paper's splits (section 4.1).

File layouts: :mod:`napari_dpn.layouts` (one ``DatasetLayout`` per dataset; see SOURCES.md of
the datasets folder).  This module adds what the paper used per dataset and the splits.

Splits: ``"default"`` (DRIVE's official 20/20), ``"A/B"`` (first A images in sorted order train,
the remaining B test; e.g. STARE "10/10", CHASE "20/8", "14/14"), ``"loo-K"`` (leave-one-out:
image K, 1-based in sorted order or its name, is the test image), ``"all"`` (every image in
``test``, none in ``train``: for cross-dataset testing; use :attr:`Split.all` to train on them).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_dpn.errors import InputError
from napari_dpn.image_io import IMAGE_SUFFIXES, as_rgb, read_image, read_mask
from napari_dpn.layouts import LAYOUTS, DatasetLayout, layout_for


@dataclass(frozen=True)
class DatasetInfo:
    """What the paper used per dataset; the training code reads crop/clahe/iterations."""

    name: str
    folder: str  # folder name under the datasets root
    crop_size: int  # random training crop (section 4.3)
    clahe: bool  # CLAHE on the green channel before the network (section 4.2)
    iterations: int  # training iterations in the paper (section 4.3)
    default_split: str
    splits: tuple[str, ...]  # the paper's splits (others of the same forms also work)
    n_images: int
    # Scale (see scale.py): the camera's field angle in degrees, as the dataset paper states it,
    # and where that is written.  None where no circular FOV exists to divide by (AV-WIDE).
    field_angle: float | None = None
    field_angle_source: str = ""
    # Resampling factor to 1 working pixel per DRIVE pixel, for datasets without a field angle:
    # AV-WIDE's thickest annotated vessels (95th percentile of the skeleton width, 5.6 px) against
    # DRIVE's (7.1 px), i.e. x1.26.  Its "200 degrees" is the internal (eye-centre) angle of an
    # Optos-type camera, about 135 degrees external: 1300 px / 135 = 9.6 px/deg, DRIVE 12.0; the
    # two estimates agree.
    calibre_factor: float | None = None
    whole_frame_fov: bool = False  # no dark border: every pixel is retina (AV-WIDE)


DATASETS: dict[str, DatasetInfo] = {
    "drive": DatasetInfo(
        "drive",
        LAYOUTS["drive"].name,
        512,
        False,
        100_000,
        "default",
        ("default", "all"),
        40,
        45.0,
        "Staal et al., IEEE TMI 2004: Canon CR5 non-mydriatic 3CCD camera, 45 degree FOV",
    ),
    "stare": DatasetInfo(
        "stare",
        LAYOUTS["stare"].name,
        512,
        True,
        30_000,
        "10/10",
        ("10/10", "loo-K", "all"),
        20,
        35.0,
        "Hoover et al., IEEE TMI 2000: TopCon TRV-50 fundus camera at 35 degree field of view",
    ),
    "chase": DatasetInfo(
        "chase",
        LAYOUTS["chase"].name,
        736,
        False,
        100_000,
        "20/8",
        ("20/8", "14/14", "all"),
        28,
        30.0,
        "Owen et al., IOVS 2009 / Fraz et al., IEEE TBME 2012: Nidek NM-200-D, 30 degree FOV",
    ),
    "avwide": DatasetInfo(
        "avwide",
        LAYOUTS["avwide"].name,
        512,
        False,
        30_000,
        "20/10",
        ("20/10", "all"),
        30,
        None,
        "Estrada et al., IEEE TMI 2015: Optos-type ultra-widefield SLO, about 200 degrees "
        "(internal angle); no circular FOV",
        calibre_factor=1.26,
        whole_frame_fov=True,
    ),
}


def _whole_frame(dataset: str) -> bool:
    info = DATASETS.get(dataset)
    return bool(info and info.whole_frame_fov)


@dataclass(frozen=True)
class Sample:
    """One image with its ground truth and (optional) FOV mask."""

    name: str
    image_path: Path
    label_path: Path | None  # None only from folder_samples(..., require_labels=False)
    fov_path: Path | None
    dataset: str

    @property
    def fov_source(self) -> str:
        """'mask' (a FOV mask file), 'whole frame' (AV-WIDE) or 'estimated' (``fov.estimate_fov``)."""
        if self.fov_path:
            return "mask"
        return "whole frame" if _whole_frame(self.dataset) else "estimated"

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rgb float32 (H, W, 3) in 0..1, ground truth bool, FOV bool); FOV estimated if absent."""
        rgb = as_rgb(read_image(self.image_path))
        assert self.label_path is not None, f"{self.name} has no ground truth"  # only scored samples are loaded
        gt = read_mask(self.label_path)
        if self.fov_path:
            fov = read_mask(self.fov_path)
        elif _whole_frame(self.dataset):
            fov = np.ones(rgb.shape[:2], bool)
        else:
            from napari_dpn.fov import estimate_fov  # scipy/skimage: not when the napari reader loads

            fov = estimate_fov(rgb)
        for what, arr in (("ground truth", gt), ("FOV mask", fov)):
            if arr.shape != rgb.shape[:2]:
                raise InputError(
                    f"{self.name}: the {what} is {arr.shape[::-1]} but the image is {rgb.shape[1::-1]} (W x H)."
                )
        return rgb, gt, fov


# DRIVE's pixels per degree (FOV 539 px over 45 degrees, measured on its masks): the scale the
# calibre factors above are relative to.
DRIVE_PPD = 539.0 / 45.0


def sample_factor(sample: Sample, fov: np.ndarray, working_ppd: float) -> float:
    """Resampling factor that brings one dataset image to ``working_ppd`` pixels per degree."""
    from .scale import fov_diameter

    info = DATASETS[sample.dataset]
    if info.field_angle is None:
        assert info.calibre_factor is not None  # a dataset without a field angle records its calibre factor
        return float(info.calibre_factor) * working_ppd / DRIVE_PPD
    diameter = fov_diameter(fov)
    if diameter is None:
        raise InputError(f"{sample.name}: no circular FOV found, so its scale is unknown")
    return working_ppd / (diameter / info.field_angle)


@dataclass(frozen=True)
class ScaledSample:
    """A dataset sample resampled to a common scale (pixels per degree) when loaded."""

    sample: Sample
    working_ppd: float

    @property
    def name(self) -> str:
        return self.sample.name

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from .scale import resample_image, resample_mask, resampled_shape

        rgb, gt, fov = self.sample.load()
        size = resampled_shape(rgb.shape, sample_factor(self.sample, fov, self.working_ppd))
        return resample_image(rgb, size), resample_mask(gt, size), resample_mask(fov, size)


@dataclass(frozen=True)
class Split:
    train: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)

    @property
    def all(self) -> list[Sample]:
        """Train then test samples, e.g. to train on a whole dataset for cross-dataset tests."""
        return [*self.train, *self.test]


def dataset_key(dataset: str) -> str:
    """Normalise a dataset name: case-insensitive, with the layouts' aliases (CHASE_DB1, AV-WIDE)."""
    layout = layout_for(dataset)
    if layout is None or layout.key not in DATASETS:
        *others, last = DATASETS
        raise InputError(f"Unknown dataset '{dataset}'; use {', '.join(others)} or {last}.")
    return layout.key


# ------------------------------------------------------------------------------- file finding
def find_file(folder: Path, stem: str) -> Path | None:
    """The image file called ``stem`` plus any supported suffix, or None."""
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _require(folder: Path, stem: str, what: str) -> Path:
    path = find_file(folder, stem)
    if path is None:
        raise InputError(f"Missing {what}: no {folder / stem}.* file.")
    return path


def _images(folder: Path, pattern: str) -> list[Path]:
    regex = re.compile(pattern, re.IGNORECASE)
    if not folder.is_dir():
        raise InputError(f"Missing folder {folder}.")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and regex.fullmatch(p.stem))
    if not found:
        raise InputError(f"No images found in {folder}.")
    return found


def _looks_like(layout: DatasetLayout, folder: Path) -> bool:
    """True when ``folder`` is a dataset folder of ``layout`` (its parts, or one part folder)."""
    if layout.parts:
        return all((folder / part).is_dir() for part in layout.parts)
    if not all((folder / sub).is_dir() for sub in layout.required_dirs):
        return False
    try:
        samples = part_samples(layout, folder, require_labels=False)
    except InputError:
        return False
    return bool(layout.labels_dir) or any(s.label_path for s in samples)


def _dataset_dir(key: str, root: Path) -> Path:
    """Accept the folder holding DRIVE/STARE/CHASE_DB1/AV-WIDE, or the dataset folder itself."""
    if not root.is_dir():
        raise InputError(f"The datasets folder {root} does not exist.")
    layout = LAYOUTS[key]
    children = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    for name in layout.all_folder_names:
        if name.lower() in children:
            return children[name.lower()]
    if _looks_like(layout, root):
        return root
    raise InputError(f"No {layout.name} folder in {root}.")


def detect_layout(folder: str | Path) -> tuple[str, Path] | None:
    """(dataset key, folder to give as ``--root``) when ``folder`` is a dataset release folder, one
    of its sub-folders (DRIVE ``training/``, ``test/``, ``images/``...), or the folder holding
    them; else None.  For messages that suggest ``--dataset``."""
    folder = Path(folder).expanduser()
    candidates = [folder, folder.parent, folder.parent.parent]
    for cand in candidates:
        if not cand.is_dir():
            continue
        for key in DATASETS:
            try:
                found = _dataset_dir(key, cand)
            except (InputError, OSError):
                continue
            if folder in (cand, found) or found in folder.parents:
                return key, cand
    return None


def part_samples(layout: DatasetLayout, folder: Path, require_labels: bool = True) -> list[Sample]:
    """The samples of one part folder of ``layout`` (a DRIVE split folder, the STARE folder...)."""
    samples = []
    for img in _images(folder / layout.images_dir, layout.image_pattern):
        stem = layout.label_name(img.stem) or img.stem
        what = f"{layout.name} label for {img.name}"
        labels = folder / layout.labels_dir
        label = _require(labels, stem, what) if require_labels else find_file(labels, stem)
        fov_stem = layout.fov_name(img.stem)
        fov = find_file(folder / layout.fov_dir, fov_stem) if fov_stem else None
        samples.append(Sample(img.stem, img, label, fov, layout.key))
    return samples


def folder_samples(key: str, folder: str | Path, require_labels: bool = True) -> list[Sample]:
    """The samples of one folder as released: a DRIVE split folder (``training/`` or ``test/``),
    the STARE, CHASE_DB1 or AV-WIDE folder.  InputError when the layout is not there; with
    ``require_labels=False`` an image without its annotation gets ``label_path=None``."""
    return part_samples(LAYOUTS[key], Path(folder), require_labels)


def _parts(key: str, folder: Path) -> dict[str, list[Sample]]:
    """Each split part's samples (DRIVE: training, test); one "" part for a flat dataset."""
    layout = LAYOUTS[key]
    if not layout.parts:
        return {"": part_samples(layout, folder)}
    return {part: part_samples(layout, folder / part) for part in layout.parts}


def list_samples(dataset: str, root: str | Path) -> list[Sample]:
    """All samples of a dataset in sorted order (DRIVE: training then test)."""
    key = dataset_key(dataset)
    return [s for part in _parts(key, _dataset_dir(key, Path(root))).values() for s in part]


# -------------------------------------------------------------------------------------- splits
def _loo_index(token: str, samples: list[Sample]) -> int:
    names = [s.name.lower() for s in samples]
    if token.lower() in names:
        return names.index(token.lower())
    if token.isdigit() and 1 <= int(token) <= len(samples):
        return int(token) - 1
    raise InputError(f"Leave-one-out image '{token}' is neither 1..{len(samples)} nor an image name of the dataset.")


def load_split(dataset: str, root: str | Path, split: str | None = None) -> Split:
    """The train/test samples of one of the paper's splits (default: the dataset's main one)."""
    key = dataset_key(dataset)
    split = (split or DATASETS[key].default_split).strip().lower()
    if split == "default":
        split = DATASETS[key].default_split
    folder = _dataset_dir(key, Path(root))
    if len(LAYOUTS[key].parts) == 2 and split == "default":  # DRIVE's official training/test
        train, test = _parts(key, folder).values()
        return Split(train=train, test=test)
    samples = list_samples(key, folder)
    if split == "all":
        return Split(train=[], test=samples)
    if split.startswith("loo-"):
        k = _loo_index(split[4:], samples)
        return Split(train=samples[:k] + samples[k + 1 :], test=[samples[k]])
    match = re.fullmatch(r"(\d+)/(\d+)", split)
    if match:
        n_train, n_test = int(match[1]), int(match[2])
        if n_train + n_test != len(samples):
            raise InputError(
                f"Split {split} needs {n_train + n_test} {DATASETS[key].folder} images but {folder} has {len(samples)}."
            )
        return Split(train=samples[:n_train], test=samples[n_train:])
    raise InputError(
        f"Unknown split '{split}' for {DATASETS[key].folder}; use one of "
        f"{', '.join(DATASETS[key].splits)} (or A/B, loo-K, all)."
    )


def leave_one_out(dataset: str, root: str | Path) -> Iterator[tuple[str, Split]]:
    """Yield (test image name, Split) for every leave-one-out fold (STARE: 20 folds)."""
    samples = list_samples(dataset, root)
    for k, sample in enumerate(samples):
        yield sample.name, Split(train=samples[:k] + samples[k + 1 :], test=[sample])


# ------------------------------------------------------------------ a dataset folder opened in napari
# The folder reader recognises a folder at several levels (``DRIVE``, ``DRIVE/test``,
# ``DRIVE/test/images``), and an image whose annotation is missing still opens (without it).


@dataclass
class DatasetFolder:
    """A dataset folder as the napari reader opens it: its name, where its images are, its samples."""

    dataset: str  # the layout's name: "DRIVE", "STARE", "CHASE_DB1", "AV-WIDE"
    root: Path  # the folder that holds the images
    entries: list[Sample]


def _detect(folder: Path, layout: DatasetLayout) -> DatasetFolder | None:
    """A part folder of ``layout`` is recognised by its sub-folders (a DRIVE split, STARE,
    AV-WIDE), a flat one (CHASE_DB1) by at least one annotated image."""
    if not all((folder / sub).is_dir() for sub in layout.required_dirs):
        return None
    try:
        samples = part_samples(layout, folder, require_labels=False)
    except InputError:  # not this layout (no images of its naming)
        return None
    if not layout.required_dirs and not any(s.label_path for s in samples):
        return None
    return DatasetFolder(layout.name, samples[0].image_path.parent, samples)


def find_dataset(folder: str | Path) -> DatasetFolder | None:
    """The dataset layout of ``folder`` (or of its parent / its last split part, DRIVE's test), else None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    candidates = [folder]
    if any(folder.name in layout.dir_names for layout in LAYOUTS.values()):
        candidates.append(folder.parent)
    # a dataset root: prefer the last part (DRIVE's test split), then the others
    parts = dict.fromkeys(p for layout in LAYOUTS.values() for p in reversed(layout.parts))
    candidates += [folder / part for part in parts]
    for cand in candidates:
        for layout in LAYOUTS.values():
            found = _detect(cand, layout) if cand.is_dir() else None
            if found is not None:
                return found
    return None
