"""Where each public dataset keeps its files: one :class:`DatasetLayout` per dataset.

Everything that spells a dataset's file names reads it from here, so the places cannot drift
apart: the loaders (:mod:`napari_dpn.datasets`), the photograph filter and label pairing
(:mod:`napari_dpn.annotations`), the folder session's ground-truth and FOV lookup
(:mod:`napari_dpn.session`), the napari folder and file readers, and the CLI help texts.
Adding a dataset is one :func:`register` call (docs/design.md, "Where to add a dataset layout").
File facts are in SOURCES.md of the datasets folder.  No Qt, numpy or image imports: the napari
reader imports this when napari starts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AnnotationName:
    """How a dataset names one kind of annotation file after its photograph.

    ``suffix`` is a regex of the end of the file's stem (``_1stHO``; DRIVE ``_manual(?P<observer>\\d)``
    takes the observer from the name); ``image`` a regex of the part before it that names the
    photograph.  A narrower ``image`` than ``.+`` (DRIVE: only its number) means the part is not
    the photograph's name: the layout's ``label_image_name`` gives that.
    """

    suffix: str
    role: str  # "ground_truth" or "fov"
    observer: int = 1  # 0: read from the suffix's "observer" group
    image: str = ".+"


@dataclass(frozen=True)
class DatasetLayout:
    """One dataset's folders and file names, as released.

    A *part folder* holds one set of photographs (DRIVE ``training/`` or ``test/``, the STARE
    folder, the flat CHASE_DB1 folder); ``images_dir`` / ``labels_dir`` / ``fov_dir`` are
    relative to it ("" = the part folder itself).  ``image_pattern`` matches a photograph's stem
    (any case); its group ``id`` is what ``label_stem`` uses as ``{id}``, the whole stem is ``{stem}``.
    """

    key: str  # "drive": what --dataset takes
    name: str  # "DRIVE": shown in messages, and the dataset folder's usual name
    image_pattern: str
    label_stem: str  # first observer's ground truth, e.g. "{id}_manual1", "{stem}.ah"
    images_dir: str = ""
    labels_dir: str = ""
    fov_stem: str | None = None  # the dataset's FOV mask, e.g. "{stem}_mask"; None: none shipped
    fov_dir: str = ""
    parts: tuple[str, ...] = ()  # split sub-folders in load order (DRIVE: training, test)
    other_dirs: tuple[str, ...] = ()  # further annotation folders (a 2nd observer's)
    folder_names: tuple[str, ...] = ()  # other spellings of the dataset folder's name
    aliases: tuple[str, ...] = ()  # other spellings of ``key``
    annotations: tuple[AnnotationName, ...] = ()  # every annotation name, for filters and the reader
    # False where the label name is also this plugin's own saved annotation (AV-WIDE's
    # ``<stem>_vessels.png``): its ground truth is looked up only in ``labels_dir``.
    labels_beside_images: bool = True
    # A label named by a number (DRIVE ``21_manual1``) -> its photograph's name (``21_training``).
    label_image_name: Callable[[str, Path | None], str] | None = None

    # ---------------------------------------------------------------------- names
    def image_match(self, stem: str) -> re.Match | None:
        return re.fullmatch(self.image_pattern, stem, re.IGNORECASE)

    def label_name(self, image_stem: str) -> str | None:
        """The ground truth's stem for a photograph's stem (None: not one of this dataset's names)."""
        return self._format(self.label_stem, image_stem)

    def fov_name(self, image_stem: str) -> str | None:
        """The dataset FOV mask's stem for a photograph's stem, or None."""
        return self._format(self.fov_stem, image_stem) if self.fov_stem else None

    def _format(self, template: str, stem: str) -> str | None:
        if "{id}" not in template:
            return template.format(stem=stem)
        m = self.image_match(stem)
        if m is None:
            return None
        return template.format(stem=stem, id=m.groupdict().get("id") or stem)

    # ---------------------------------------------------------------------- folders
    @property
    def dir_names(self) -> tuple[str, ...]:
        """Sub-folder names of a part folder (to step up from ``DRIVE/test/images`` to ``DRIVE/test``)."""
        return tuple(d for d in (self.images_dir, self.labels_dir, self.fov_dir, *self.other_dirs) if d)

    @property
    def required_dirs(self) -> tuple[str, ...]:
        """Sub-folders a part folder must have to be recognised as this layout."""
        return tuple(d for d in (self.images_dir, self.labels_dir) if d)

    @property
    def all_folder_names(self) -> tuple[str, ...]:
        return (self.name, *self.folder_names)


# ---------------------------------------------------------------------------- registry

LAYOUTS: dict[str, DatasetLayout] = {}


def register(layout: DatasetLayout) -> DatasetLayout:
    """Make a dataset layout known to the loaders, readers, filters and lookups (by ``key``)."""
    LAYOUTS[layout.key] = layout
    return layout


def layout_for(key: str) -> DatasetLayout | None:
    """The layout whose key, alias or folder name is ``key`` (any case), or None."""
    k = str(key).strip().lower()
    for layout in LAYOUTS.values():
        names = (layout.key, *layout.aliases, *layout.all_folder_names)
        if k in (n.lower() for n in names):
            return layout
    return None


def keys_text() -> str:
    """``drive, stare, chase or avwide``: for help texts and messages."""
    keys = list(LAYOUTS)
    return keys[0] if len(keys) == 1 else f"{', '.join(keys[:-1])} or {keys[-1]}"


def folders_text() -> str:
    """``DRIVE/, STARE/, CHASE_DB1/, AV-WIDE/``: the dataset folders a --root holds."""
    return ", ".join(f"{layout.name}/" for layout in LAYOUTS.values())


def names_text() -> str:
    """``DRIVE, STARE, CHASE_DB1 or AV-WIDE``."""
    names = [layout.name for layout in LAYOUTS.values()]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def annotation_names() -> list[tuple[AnnotationName, DatasetLayout]]:
    """Every dataset's annotation names, in registration order."""
    return [(a, layout) for layout in LAYOUTS.values() for a in layout.annotations]


def label_suffix_regex() -> str:
    """One regex alternation of the stem endings of every dataset's annotation files."""
    seen: list[str] = []
    for a, _ in annotation_names():
        plain = re.sub(r"\(\?P<\w+>", "(", a.suffix)  # names would clash in one regex
        if plain not in seen:
            seen.append(plain)
    return "|".join(seen)


def fov_suffix_regex() -> str:
    """The stem endings of the datasets' FOV masks (``_mask``)."""
    return "|".join(dict.fromkeys(a.suffix for a, _ in annotation_names() if a.role == "fov"))


# ---------------------------------------------------------------------------- the four datasets


def _drive_image_name(number: str, path: Path | None) -> str:
    """DRIVE names the annotation NN_manual1.gif and its photograph NN_test.tif / NN_training.tif:
    the split is the folder above 1st_manual, else a photograph of that number beside it, else
    DRIVE's numbering (01-20 test, 21-40 training)."""
    if path is not None:
        split = path.parent.parent.name.lower()
        if split in DRIVE.parts:
            return f"{number}_{split}"
        images = path.parent.parent / DRIVE.images_dir
        if images.is_dir():
            for cand in sorted(images.glob(f"{number}_*")):
                return cand.stem
    n = int(number)
    return f"{number}_test" if 1 <= n <= 20 else f"{number}_training" if 21 <= n <= 40 else number


_MASK = AnnotationName("_mask", "fov")

DRIVE = register(
    DatasetLayout(
        key="drive",
        name="DRIVE",
        image_pattern=r"(?P<id>\d+)_(training|test)",
        label_stem="{id}_manual1",
        images_dir="images",
        labels_dir="1st_manual",
        fov_stem="{stem}_mask",
        fov_dir="mask",
        parts=("training", "test"),
        other_dirs=("2nd_manual",),
        annotations=(AnnotationName(r"_manual(?P<observer>\d)", "ground_truth", 0, r"\d+"), _MASK),
        label_image_name=_drive_image_name,
    )
)
STARE = register(
    DatasetLayout(
        key="stare",
        name="STARE",
        image_pattern=r"im\d+",
        label_stem="{stem}.ah",
        images_dir="images",
        labels_dir="labels-ah",
        fov_stem="{stem}_mask",  # third-party masks (SOURCES.md); without them the FOV is estimated
        fov_dir="mask",
        other_dirs=("labels-vk",),
        annotations=(
            AnnotationName(r"\.ah", "ground_truth", 1),
            AnnotationName(r"\.vk", "ground_truth", 2),
            _MASK,
        ),
    )
)
CHASE_DB1 = register(
    DatasetLayout(
        key="chase",
        name="CHASE_DB1",
        image_pattern=r"Image_\d+[LR]",
        label_stem="{stem}_1stHO",  # flat, no FOV masks (estimated)
        folder_names=("CHASEDB1", "CHASE-DB1", "CHASE"),
        aliases=("chase_db1", "chasedb1", "chase-db1"),
        annotations=(
            AnnotationName("_1stHO", "ground_truth", 1),
            AnnotationName("_2ndHO", "ground_truth", 2),
        ),
    )
)
AV_WIDE = register(
    DatasetLayout(
        key="avwide",
        name="AV-WIDE",
        image_pattern=r"wide_image_\d+",
        label_stem="{stem}_vessels",  # ultra-widefield: no circular FOV, no masks
        images_dir="images",
        labels_dir="manual",
        folder_names=("AV_WIDE", "AVWIDE"),
        aliases=("av-wide", "av_wide", "wide"),
        labels_beside_images=False,
    )
)
