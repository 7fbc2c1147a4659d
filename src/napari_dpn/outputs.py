"""What ``segment`` writes for each image: a list of named writers, one file each.

``WRITERS`` decides the files (``<stem>_<name><suffix>`` in the output folder), their order (the
manifest's ``outputs`` and ``output_sha256``, the staging and the recovery follow it) and how each
is written.  A new output format is one more ``OutputWriter`` in this list (``docs/design.md``,
"Where to add an output format"); the probability map stays first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import image_writers


@dataclass(frozen=True)
class Maps:
    """What the writers write from: one segmented image, in the photograph's own pixels."""

    probability: np.ndarray  # float32 (H, W) in 0..1
    vessels: np.ndarray  # bool (H, W): thresholded, inside the FOV
    fov: np.ndarray  # bool (H, W)


@dataclass(frozen=True)
class OutputWriter:
    """One output file of each image: ``write(path, maps)`` writes it at ``path``, never replacing
    a file there (the staging folder is new; ``placement`` moves it into place)."""

    name: str  # the file is <stem>_<name><suffix>
    write: Callable[[Path, Maps], object]
    suffix: str | None = ".png"  # None: the run's probability suffix (--prob-suffix: .png or .tif)

    def ending(self, prob_suffix: str = ".png") -> str:
        return f"_{self.name}{prob_suffix if self.suffix is None else self.suffix}"


def _probability(path: Path, maps: Maps) -> None:
    image_writers.write_probability(path, maps.probability, overwrite=False)


def _vessels(path: Path, maps: Maps) -> None:
    image_writers.write_mask(path, maps.vessels, overwrite=False)


def _fov(path: Path, maps: Maps) -> None:
    image_writers.write_mask(path, maps.fov, overwrite=False)


WRITERS: list[OutputWriter] = [
    OutputWriter("probability", _probability, suffix=None),
    OutputWriter("vessels", _vessels),
    OutputWriter("fov", _fov),
]


def output_paths(image: str | os.PathLike, out: str | os.PathLike, prob_suffix: str = ".png") -> tuple[Path, ...]:
    """Where each writer's file of ``image`` goes in ``out``, in the order of ``WRITERS``."""
    stem = Path(image).stem
    return tuple(Path(out) / f"{stem}{w.ending(prob_suffix)}" for w in WRITERS)


def output_name_pattern() -> re.Pattern:
    """Any file name a writer gives (with ``.previous``: a replaced output kept until the end)."""
    endings = [re.escape(w.ending(s)) for w in WRITERS for s in ((".png", ".tif") if w.suffix is None else ("",))]
    return re.compile(f".+({'|'.join(endings)})(\\.previous)?", re.DOTALL)
