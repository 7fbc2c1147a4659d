"""``napari-dpn segment``: probability map, vessel mask and FOV mask of each photograph, as a cohort
(every run records each image in the output folder's manifest; a re-run skips what is done)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import tqdm  # tqdm.tqdm is looked up at each run: a test stands in for the bar

from ..cohort import SCHEDULER_TIMEOUT, Cohort, check_options, settings_for
from ..devices import available_devices, select_device
from ..errors import InputError
from ..image_writers import ensure_output_folder
from ..manifest import MANIFEST_NAME
from ..planning import images_in
from ..results import Settings
from . import options as o

_SCALE_HELP = (
    "auto (default): resample each photograph to the model's working scale (pixels per "
    "degree of retina) and the map back; native: no resampling; calibre: estimate the scale from the "
    "width of the main vessels (experimental); disc: from the optic disc's diameter, about 6 degrees "
    "in adults (experimental); or a factor such as 0.5"
)
_FUSION_HELP = (
    "average the map with a second pass at FACTOR x the working scale, which finds more thin "
    "vessels at about 3x the time; auto (default): as the model card recommends (dpn-universal: 1.5; "
    "the single-dataset models: none); none: one pass; skipped for very large images and with "
    "--batch-size above 1. Without --field-angle (45 degrees guessed) a pass at the working scale "
    "/ FACTOR joins the mean too, as the guess may be too fine"
)


def register(sub) -> None:
    p = sub.add_parser("segment", help="segment fundus images: probability map, vessel mask, FOV mask")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--out", required=True, metavar="DIR")
    o.add_model(p)
    o.add_device(p, "auto, cpu, cuda or mps (here: " + ", ".join(available_devices()) + ")")
    p.add_argument("--threshold", type=float, default=None, help="vessel threshold (default: the model card's)")
    p.add_argument("--prob-format", choices=("png", "tiff"), default="png", help="16-bit PNG or float32 TIFF")
    o.add_precision(
        p, "auto", "auto: bf16 on CPUs with AMX or AVX512-BF16 (about 2x faster, AUC within 0.0001), else fp32"
    )
    o.add_overwrite(
        p,
        "replace existing outputs (default: skip an image whose outputs exist, e.g. a correction saved "
        "from napari) and an existing --json file",
    )
    o.add_scale(p, "auto", "auto|native|calibre|disc|FACTOR", _SCALE_HELP)
    o.add_field_angle(
        p,
        "the camera's field of view in degrees (30, 35, 45, 50, 55 ...); default: estimated "
        "(45 degrees assumed for a circular FOV; without one, the native scale)",
    )
    o.add_fusion(p, "auto", _FUSION_HELP)
    o.add_json(p, "also write a report: scale, device and timing per image (a new file; --overwrite replaces one)")
    _add_cluster_options(p)
    o.add_quiet(p)
    p.set_defaults(func=cmd_segment)


def _add_cluster_options(p) -> None:
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="segment on a local Dask cluster of N processes (one image at a time each); "
        f"every run records each image in OUT/{MANIFEST_NAME}, and a re-run skips what is done",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="segment on an existing Dask cluster whose workers see the same files: its address "
        "(tcp://host:8786) or its scheduler file (dask scheduler --scheduler-file FILE); see docs/cohort.md",
    )
    p.add_argument(
        "--scheduler-timeout",
        type=float,
        default=SCHEDULER_TIMEOUT,
        metavar="SECONDS",
        help=f"how long --scheduler waits for the scheduler to answer (default {SCHEDULER_TIMEOUT:g})",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="images per forward pass in one process (default: 8 on a GPU, decoded in parallel "
        "and grouped by size; 1 on a CPU, where batches are not faster)",
    )
    p.add_argument(
        "--loader-workers",
        type=int,
        default=None,
        metavar="N",
        help="with --batch-size above 1: processes that read and prepare the images (default: CPUs - 1, at most 16)",
    )


@dataclasses.dataclass
class _Run:
    """What one ``segment`` call has decided and gathered, from its options to its last line."""

    args: argparse.Namespace
    out: Path
    settings: Settings
    json_path: Path | None
    run_options: dict[str, Any]
    skipped: list = dataclasses.field(default_factory=list)
    done: list = dataclasses.field(default_factory=list)
    failed: list = dataclasses.field(default_factory=list)
    grey: list = dataclasses.field(default_factory=list)
    seconds: list = dataclasses.field(default_factory=list)
    devices: list = dataclasses.field(default_factory=list)
    report: dict = dataclasses.field(default_factory=dict)

    def kept(self) -> str:
        why = []
        if self.skipped:
            why.append(f"{len(self.skipped)} skipped because their outputs exist (--overwrite replaces them)")
        if self.done:
            why.append(f"{len(self.done)} skipped because they were done with this model and options")
        return "".join(f"; {w}" for w in why)


def _prepare(args: argparse.Namespace) -> tuple[_Run, list]:
    """Check every option before the first image (a long run must not fail at its end)."""
    run_options: dict[str, Any] = {
        "workers": getattr(args, "workers", None),
        "scheduler": getattr(args, "scheduler", None),
        "batch_size": getattr(args, "batch_size", None),
        "loader_workers": getattr(args, "loader_workers", None),
        "scheduler_timeout": getattr(args, "scheduler_timeout", SCHEDULER_TIMEOUT),
    }
    check_options(*run_options.values())
    images, notes = images_in(args.inputs)
    o.say(notes)
    # With --scheduler the workers choose their own device; here only what this machine has is checked.
    device = args.device if run_options["scheduler"] else str(select_device(args.device))
    threshold = args.threshold
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise InputError(f"--threshold must lie between 0 and 1, got {threshold}")
    overwrite = getattr(args, "overwrite", False)
    json_path = o.json_target(args.json, overwrite)
    out = ensure_output_folder(args.out, "--out")
    settings = settings_for(
        args.model,
        device=device,
        threshold=threshold,
        scale=args.scale,
        field_angle=args.field_angle,
        fusion=getattr(args, "fusion", "auto"),
        precision=args.precision,
    )
    batch_size = run_options["batch_size"]
    if settings.fusion and batch_size and batch_size > 1:
        print("napari-dpn: --batch-size runs one pass per image, without two-scale fusion", file=sys.stderr)
        settings = dataclasses.replace(settings, fusion=None)
    return _Run(args, out, settings, json_path, run_options), images


def cmd_segment(args: argparse.Namespace) -> int:
    run, images = _prepare(args)
    suffix = ".tif" if args.prob_format == "tiff" else ".png"
    with Cohort(run.out, run.settings, suffix, getattr(args, "overwrite", False)) as cohort:
        plan = cohort.plan(images)
        told = _tell(cohort, 0)
        _announce_plan(run, plan)
        if not plan.jobs:
            print(f"0 image(s) segmented{run.kept()}; outputs in {run.out}")
            return 0
        loaded = cohort.load()
        o.warn(loaded.warnings)
        o.say(
            o.some(
                [
                    f"{j.name}: done with {j.previous_model} in an earlier run; its unchanged outputs are "
                    f"replaced with {run.settings.model_name}'s"
                    for j in plan.rerun
                ]
            )
        )
        threshold = loaded.card.threshold if args.threshold is None else args.threshold
        t0 = time.perf_counter()
        _segment_all(run, cohort, plan)
    _tell(cohort, told)
    return _finish(run, loaded, threshold, time.perf_counter() - t0)


def _tell(cohort, told: int) -> int:
    """The cohort's new lines (run folders left alone, recoveries left incomplete); how many are told."""
    o.warn(o.some(cohort.notes[told:]))
    return len(cohort.notes)


def _announce_plan(run: _Run, plan) -> None:
    run.skipped = [f"{Path(r['image']).name}: {r['error']}" for r in plan.skipped]
    run.done = list(plan.done)
    o.say(o.some(run.skipped), "skipped ")
    model = run.settings.model_name
    o.say(
        o.some([f"{n}: done with {model} and these options in an earlier run ({MANIFEST_NAME})" for n in plan.done]),
        "skipped ",
    )


def _segment_all(run: _Run, cohort, plan) -> None:
    """Run the jobs; one bad file in a folder does not stop the batch."""
    args = run.args

    def on_cluster(text: str) -> None:
        if not args.quiet:
            print(f"napari-dpn: {text}", file=sys.stderr)

    results = cohort.run(plan.jobs, on_cluster=on_cluster, **run.run_options)
    bar = tqdm.tqdm
    for result in bar(results, total=len(plan.jobs), desc="segmenting", unit="image", disable=args.quiet):
        if result.status == "failed":
            run.failed.append(f"{result.name}: {result.row['error']}")
            continue
        if result.status == "skipped":  # an output appeared while the batch ran (e.g. saved from napari)
            run.skipped.append(f"{result.name}: {result.row['error']}")
            bar.write(f"napari-dpn: skipped {run.skipped[-1]}", file=sys.stderr)
            continue
        if result.grey:
            run.grey.append(result.name)
        run.seconds.append(result.network_seconds)
        run.devices.append(result.row["device"])
        run.report[result.name] = result.summary
        for note in result.notes:
            bar.write(f"{result.name}: {note}")
        if not args.quiet:
            bar.write(f"{result.name}: {result.describe}")


def _finish(run: _Run, loaded, threshold: float, total: float) -> int:
    o.say(o.some(run.failed), "skipped ")
    grey = run.grey
    if grey:
        print(
            f"napari-dpn: note: {len(grey)} greyscale photograph(s) ({', '.join(grey[:3])}"
            f"{', ...' if len(grey) > 3 else ''}); the models were trained on colour fundus photographs, "
            "so expect lower accuracy on them",
            file=sys.stderr,
        )
    failed = f"; {len(run.failed)} failed" if run.failed else ""
    if not run.seconds:
        if run.failed and not run.skipped and not run.done:
            raise InputError("none of the images could be read")
        print(f"0 image(s) segmented; outputs in {run.out}{run.kept()}" + failed)
        return 1 if run.failed else 0
    if run.json_path:
        report = {"model": loaded.card.name, "sha256": run.settings.model_sha256, "images": run.report}
        o.write_json(run.json_path, report, getattr(run.args, "overwrite", False))
    where = ", ".join(sorted(set(run.devices)))
    print(
        f"{len(run.seconds)} image(s) segmented with {loaded.card.name} on {where} in {total:.1f} s "
        f"({sum(run.seconds) / len(run.seconds):.2f} s per image for the network; threshold {threshold:.3f}); "
        f"outputs in {run.out}{run.kept()}; manifest {MANIFEST_NAME}" + failed
    )
    return 1 if run.failed else 0
