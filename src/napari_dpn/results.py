"""What one image of a ``segment`` run becomes: the run's settings (the same for every image), and
each image's ``Result`` with its manifest row; a problem with one image is its row's one sentence.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from . import messages
from .manifest import image_key
from .planning import Job


@dataclass(frozen=True)
class Settings:
    """Everything a task needs besides its image, the same for every image of a run (picklable)."""

    model: str  # the name or path the user gave
    model_path: str  # resolved on the planning machine
    model_sha256: str
    model_name: str
    device: str = "auto"  # resolved where the task runs
    threshold: float | None = None
    scale: str | float = "auto"
    field_angle: float | None = None
    fusion: float | None = None  # two-scale factor (segmentation.segment); cohort.settings_for reads the card's
    precision: str = "auto"
    torch_threads: int | None = None  # set in each worker process; None: leave as it is

    @property
    def options(self) -> str:
        """What besides the model decides the outputs, as the manifest records it: a re-run with
        other options segments again (like one with another model)."""
        threshold = "card" if self.threshold is None else f"{float(self.threshold):g}"
        angle = "-" if self.field_angle is None else f"{float(self.field_angle):g}"
        fusion = "none" if self.fusion is None else f"{float(self.fusion):g}"
        return f"threshold={threshold} scale={self.scale} field_angle={angle} fusion={fusion}"


@dataclass
class Result:
    """What a task returns: its manifest row and what the caller prints or reports."""

    row: dict
    name: str = ""
    summary: dict | None = None  # Segmentation.summary() (the --json report)
    notes: list[str] = field(default_factory=list)
    describe: str = ""  # the scale used, in words
    grey: bool = False
    network_seconds: float | None = None

    @property
    def status(self) -> str:
        return self.row["status"]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def make_row(job: Job, settings: Settings, status: str, error: str = "", seconds: float | None = None, **more) -> dict:
    return {
        "image": image_key(job.image),
        "status": status,
        "error": error,
        "seconds": None if seconds is None else round(seconds, 3),
        "model": settings.model_name,
        "model_sha256": settings.model_sha256,
        "options": settings.options,
        **more,
    }


OUT_OF_MEMORY = (
    "out of memory while segmenting it; use fewer workers per machine, a smaller --batch-size or --device cpu"
)


def sentence(exc: BaseException) -> str:
    """Why an image failed: ``messages.sentence`` on one line of at most 300 characters (a row)."""
    return messages.sentence(exc, doing="segmentation", out_of_memory=OUT_OF_MEMORY, limit=300)


def failed_result(job: Job, settings: Settings, exc: BaseException, t0: float) -> Result:
    """The row of an image that could not be read or segmented: its one sentence."""
    return Result(make_row(job, settings, "failed", sentence(exc), time.perf_counter() - t0), job.name)


def skipped_result(name: str, exc: BaseException, like: dict) -> Result:
    """The row of an image whose output appeared while the run went on (``exc`` says which)."""
    row = {k: like.get(k) for k in ("image", "model", "model_sha256", "options")}
    return Result({**row, "status": "skipped", "error": str(exc), "seconds": like.get("seconds")}, name)
