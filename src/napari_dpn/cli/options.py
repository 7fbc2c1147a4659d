"""Options and helpers shared by the subcommands: each option that several commands take
(``--model``, ``--device``, ``--scale``, ``--field-angle``, ``--fusion``, ``--overwrite``,
``--json``, ``--precision``, ``--quiet``) is defined once here, with the wording per command
passed in where the commands differ."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..devices import PRECISIONS
from ..errors import OutputError, OutputExistsError
from ..files import atomic_write
from ..image_writers import ensure_output_folder
from ..models import DEFAULT_MODEL
from ..scale import check_field_angle, check_fusion, parse_scale

# --------------------------------------------------------------------------- messages


def warn(lines) -> None:
    for line in lines:
        print(f"napari-dpn: warning: {line}", file=sys.stderr)


def say(lines, prefix: str = "") -> None:
    """``napari-dpn: PREFIXline`` on stderr for each line."""
    for line in lines:
        print(f"napari-dpn: {prefix}{line}", file=sys.stderr)


def some(lines: list[str], limit: int = 10) -> list[str]:
    """At most ``limit`` lines, then one that counts the rest (a cohort skips thousands)."""
    return lines if len(lines) <= limit else [*lines[:limit], f"{len(lines) - limit} more image(s)"]


# --------------------------------------------------------------------------- argument types


def scale_arg(text: str):
    try:
        return parse_scale(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def fusion_arg(text: str):
    try:
        return check_fusion(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def angle_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the field angle must be degrees such as 45, got {text!r}") from None
    try:
        angle = check_field_angle(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert angle is not None  # a number in, a number out
    return angle


def dataset_angle_arg(text: str):
    """evaluate's --field-angle: 'dataset', 'unknown' or degrees."""
    key = text.strip().lower()
    return key if key in ("dataset", "unknown") else angle_arg(text)


# --------------------------------------------------------------------------- options


def add_model(p) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME_OR_PATH")


def add_device(p, help: str | None = None) -> None:
    p.add_argument("--device", default="auto", help=help)


def add_precision(p, default: str, help: str) -> None:
    p.add_argument("--precision", choices=PRECISIONS, default=default, help=help)


def add_overwrite(p, help: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=help)


def add_json(p, help: str) -> None:
    p.add_argument("--json", default=None, metavar="FILE", help=help)


def add_scale(p, default: str, metavar: str, help: str) -> None:
    p.add_argument("--scale", type=scale_arg, default=default, metavar=metavar, help=help)


def add_field_angle(p, help: str, default=None, metavar: str = "DEG", type=angle_arg) -> None:
    p.add_argument("--field-angle", type=type, default=default, metavar=metavar, help=help)


def add_fusion(p, default, help: str) -> None:
    p.add_argument("--fusion", type=fusion_arg, default=default, metavar="auto|FACTOR|none", help=help)


def add_quiet(p, help: str | None = None) -> None:
    p.add_argument("--quiet", action="store_true", help=help)


# --------------------------------------------------------------------------- the --json report


def json_target(text: str | None, overwrite: bool = False) -> Path | None:
    """The --json file, checked before a long run: not a folder, its folder writable, and no file
    there unless --overwrite (``--json photo.png`` replaced a photograph; a report from an earlier
    run is kept too, as every output is: nothing is overwritten without asking)."""
    if not text:
        return None
    path = Path(text).expanduser()
    if path.is_dir():
        raise OutputError(f"--json {path} is a folder; give a file name such as {path / 'results.json'}")
    if not overwrite and (path.exists() or path.is_symlink()):
        what = "a report" if path.suffix.lower() == ".json" else "a file that is not a .json report"
        raise OutputExistsError(
            f"--json {path} already exists ({what}); give a new file name, or --overwrite to replace it"
        )
    ensure_output_folder(path.parent if str(path.parent) else Path("."), "the folder of --json")
    return path


def write_json(path: Path, data: dict, overwrite: bool = False) -> Path:
    """Atomically; without ``overwrite`` never over a file (not even one that appeared during the run)."""
    with atomic_write(path, overwrite=overwrite) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1) + "\n")
    return path
