"""Planning a ``segment`` run: which files are photographs, where each image's outputs go, and which
images to segment, skip as done, or segment again (another model or other options).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .annotations import not_a_photograph, photographs_in, same_stem, same_stem_message
from .errors import InputError
from .files import sha256_of
from .image_io import IMAGE_SUFFIXES
from .manifest import SEP, Manifest, image_key, split_names
from .outputs import output_paths


def images_in(paths: list[str]) -> tuple[list[Path], list[str]]:
    """(photographs to segment, notes about files left out).

    In a folder, annotations, masks and probability maps (ours: ``*_vessels.png``...; the
    datasets': ``*_manual1.gif``, ``*_1stHO.png``, ``*.ah.ppm``...) are left out with one summary
    note; a file named explicitly (or by a shell glob) that is one of them is left out with a note.
    """
    found: list[Path] = []
    notes: list[str] = []
    for text in paths:
        p = Path(text).expanduser()
        if p.is_dir():
            photos = photographs_in(p)
            left = [
                q
                for q in p.iterdir()
                if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES and not q.name.startswith(".") and q not in photos
            ]
            found += photos
            if left:
                notes.append(
                    f"left out {len(left)} file(s) in {p} that are annotations, masks or probability "
                    f"maps, not photographs (e.g. {sorted(left)[0].name})"
                )
        elif p.is_file():
            why = not_a_photograph(p)
            if why:
                notes.append(f"left out {p.name}: it is {why}, not a photograph")
            else:
                found.append(p)
        else:
            raise InputError(f"no such file or folder: {p}")
    if not found:
        raise InputError(
            "no photographs found in "
            + ", ".join(paths)
            + (
                f"; {notes[0]}"
                if len(notes) == 1
                else " (only annotations, masks or probability maps)"
                if notes
                else ""
            )
        )
    return found, notes


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Job:
    """One image to segment and where its outputs go (one per ``outputs.WRITERS``, in its order).

    ``overwrite``: replace whatever is there (``--overwrite``).  ``replaceable``: {output path:
    sha256} of outputs an earlier run wrote with another model and nobody changed since; only
    these may be replaced without ``overwrite`` (checked again just before the replacement).
    """

    index: int
    image: str
    outputs: tuple[str, ...]  # probability, vessels, FOV (outputs.WRITERS)
    overwrite: bool = False
    replaceable: tuple[tuple[str, str], ...] = ()
    previous_model: str | None = None

    @property
    def name(self) -> str:
        return Path(self.image).name


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # manifest rows: outputs in the way
    done: list[str] = field(default_factory=list)  # image names done earlier with this model
    rerun: list[Job] = field(default_factory=list)  # jobs that replace another model's outputs


def _existing(paths) -> list[Path]:
    return [Path(p) for p in paths if Path(p).exists() or Path(p).is_symlink()]


def _ours_unchanged(row: dict, outputs: tuple[Path, ...]) -> dict[str, str] | None:
    """{path: sha256} of the existing outputs if every one of them is exactly what the manifest row
    says napari-dpn wrote; None if one was changed (a correction saved from napari) or is unknown."""
    names = split_names(row.get("outputs") or "")
    shas = [s for s in (row.get("output_sha256") or "").split(SEP) if s]
    recorded = dict(zip(names, shas)) if len(names) == len(shas) else {}
    found = {}
    for path in _existing(outputs):
        want = recorded.get(path.name)
        if not want or not path.is_file() or path.is_symlink() or sha256_of(path) != want:
            return None
        found[str(path)] = want
    return found


def plan_outputs(
    images: list[Path],
    out: Path,
    prob_suffix: str,
    overwrite: bool,
    manifest: Manifest | None = None,
    model_sha256: str = "",
    options: str = "",
) -> Plan:
    """What to do with each image.

    Refuses two images whose outputs would share a name.  An image none of whose outputs exists is
    segmented; with ``overwrite`` every image is.  Otherwise an image the manifest records as done
    with this model (same sha256) and the same ``options`` (threshold, scale) is skipped as done; one
    done with another model or other options whose outputs are unchanged since is segmented again
    (its outputs replaced); one any of whose outputs exists for another reason (e.g. a correction
    saved from napari as ``<stem>_vessels.png``) is skipped.
    """
    clashes = same_stem(images)
    if clashes:
        raise InputError(same_stem_message(clashes))
    plan = Plan()
    for path in images:
        outputs = output_paths(path, out, prob_suffix)
        # The probability map last: a correction saved as <stem>_vessels.png is what a user would lose.
        existing = _existing(outputs[1:] + outputs[:1])
        job = Job(index=len(plan.jobs), image=str(path), outputs=tuple(str(o) for o in outputs), overwrite=overwrite)
        if not existing or overwrite:
            plan.jobs.append(job)
            continue
        row = manifest.get(path) if manifest is not None else None
        if row and row["status"] == "done" and len(existing) == len(outputs):
            same_model = bool(model_sha256) and row.get("model_sha256") == model_sha256
            if same_model and row.get("options", "") == options:
                plan.done.append(path.name)
                continue
            mine = _ours_unchanged(row, outputs)
            if mine is not None:
                before = row.get("model") or "another model"
                if same_model:
                    before += f" and other options ({row.get('options') or 'unknown'})"
                job = Job(
                    index=job.index,
                    image=job.image,
                    outputs=job.outputs,
                    replaceable=tuple(mine.items()),
                    previous_model=before,
                )
                plan.jobs.append(job)
                plan.rerun.append(job)
                continue
            what = f"{existing[0].name} was changed after napari-dpn wrote it in {out}"
        elif row and row["status"] == "skipped" and row["error"].startswith(existing[0].name + " "):
            what = row["error"]  # the same file is still in the way: the same sentence
        else:
            what = f"{existing[0].name} already exists in {out}"
        plan.skipped.append(skipped_row(path, what))
    return plan


def skipped_row(image, sentence: str) -> dict:
    return {"image": image_key(image), "status": "skipped", "error": sentence}
