"""napari-dpn: segment images, evaluate on a dataset, import Caffe weights, train, list models.

Every command shares the core used by the napari widgets.  User mistakes end in
one line ``napari-dpn: error: ...`` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from .devices import PRECISIONS
from .errors import DPNError, InputError
from .models import DEFAULT_MODEL


def _warn(lines) -> None:
    for line in lines:
        print(f"napari-dpn: warning: {line}", file=sys.stderr)


def _some(lines: list[str], limit: int = 10) -> list[str]:
    """At most ``limit`` lines, then one that counts the rest (a cohort skips thousands)."""
    return lines if len(lines) <= limit else [*lines[:limit], f"{len(lines) - limit} more image(s)"]


def cmd_segment(args) -> int:
    from tqdm import tqdm

    from .cohort import SCHEDULER_TIMEOUT, Cohort, check_options, settings_for
    from .devices import select_device
    from .image_io import ensure_output_folder
    from .manifest import MANIFEST_NAME
    from .planning import images_in

    workers, scheduler = getattr(args, "workers", None), getattr(args, "scheduler", None)
    batch_size, loader_workers = getattr(args, "batch_size", None), getattr(args, "loader_workers", None)
    scheduler_timeout = getattr(args, "scheduler_timeout", SCHEDULER_TIMEOUT)
    check_options(workers, scheduler, batch_size, loader_workers, scheduler_timeout)
    images, notes = images_in(args.inputs)
    for line in notes:
        print(f"napari-dpn: {line}", file=sys.stderr)
    # With --scheduler the workers choose their own device; here only what this machine has is checked.
    device = args.device if scheduler else str(select_device(args.device))
    threshold = args.threshold
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise InputError(f"--threshold must lie between 0 and 1, got {threshold}")
    overwrite = getattr(args, "overwrite", False)
    json_path = _json_target(args.json, overwrite)
    out = ensure_output_folder(args.out, "--out")
    suffix = ".tif" if args.prob_format == "tiff" else ".png"
    settings = settings_for(
        args.model,
        device=device,
        threshold=threshold,
        scale=args.scale,
        field_angle=args.field_angle,
        fusion=getattr(args, "fusion", "auto"),
        precision=args.precision,
    )
    if settings.fusion and batch_size and batch_size > 1:
        print("napari-dpn: --batch-size runs one pass per image, without two-scale fusion", file=sys.stderr)
        settings = dataclasses.replace(settings, fusion=None)
    told = 0

    def tell() -> None:  # the cohort's lines: run folders left alone, recoveries left incomplete
        nonlocal told
        _warn(_some(cohort.notes[told:]))
        told = len(cohort.notes)

    with Cohort(out, settings, suffix, overwrite) as cohort:
        plan = cohort.plan(images)
        tell()
        skipped = [f"{Path(r['image']).name}: {r['error']}" for r in plan.skipped]
        for line in _some(skipped):
            print(f"napari-dpn: skipped {line}", file=sys.stderr)
        for line in _some(
            [
                f"{n}: done with {settings.model_name} and these options in an earlier run ({MANIFEST_NAME})"
                for n in plan.done
            ]
        ):
            print(f"napari-dpn: skipped {line}", file=sys.stderr)

        def kept() -> str:
            why = []
            if skipped:
                why.append(f"{len(skipped)} skipped because their outputs exist (--overwrite replaces them)")
            if plan.done:
                why.append(f"{len(plan.done)} skipped because they were done with this model and options")
            return "".join(f"; {w}" for w in why)

        if not plan.jobs:
            print(f"0 image(s) segmented{kept()}; outputs in {out}")
            return 0
        loaded = cohort.load()
        _warn(loaded.warnings)
        for line in _some(
            [
                f"{j.name}: done with {j.previous_model} in an earlier run; its unchanged outputs are "
                f"replaced with {settings.model_name}'s"
                for j in plan.rerun
            ]
        ):
            print(f"napari-dpn: {line}", file=sys.stderr)
        threshold = loaded.card.threshold if threshold is None else threshold
        t0, seconds, failed, grey, report, devices = time.perf_counter(), [], [], [], {}, []

        def on_cluster(text: str) -> None:
            if not args.quiet:
                print(f"napari-dpn: {text}", file=sys.stderr)

        results = cohort.run(
            plan.jobs,
            workers=workers,
            scheduler=scheduler,
            on_cluster=on_cluster,
            batch_size=batch_size,
            loader_workers=loader_workers,
            scheduler_timeout=scheduler_timeout,
        )
        for result in tqdm(results, total=len(plan.jobs), desc="segmenting", unit="image", disable=args.quiet):
            if result.status == "failed":  # one bad file in a folder does not stop the batch
                failed.append(f"{result.name}: {result.row['error']}")
                continue
            if result.status == "skipped":  # an output appeared while the batch ran (e.g. saved from napari)
                skipped.append(f"{result.name}: {result.row['error']}")
                tqdm.write(f"napari-dpn: skipped {skipped[-1]}", file=sys.stderr)
                continue
            if result.grey:
                grey.append(result.name)
            seconds.append(result.network_seconds)
            devices.append(result.row["device"])
            report[result.name] = result.summary
            for note in result.notes:
                tqdm.write(f"{result.name}: {note}")
            if not args.quiet:
                tqdm.write(f"{result.name}: {result.describe}")
    tell()
    for line in _some(failed):
        print(f"napari-dpn: skipped {line}", file=sys.stderr)
    if grey:
        print(
            f"napari-dpn: note: {len(grey)} greyscale photograph(s) ({', '.join(grey[:3])}"
            f"{', ...' if len(grey) > 3 else ''}); the models were trained on colour fundus photographs, "
            "so expect lower accuracy on them",
            file=sys.stderr,
        )
    if not seconds:
        if failed and not skipped and not plan.done:
            raise InputError("none of the images could be read")
        print(f"0 image(s) segmented; outputs in {out}{kept()}" + (f"; {len(failed)} failed" if failed else ""))
        return 1 if failed else 0
    if json_path:
        _write_json(
            json_path, {"model": loaded.card.name, "sha256": settings.model_sha256, "images": report}, overwrite
        )
    total = time.perf_counter() - t0
    where = ", ".join(sorted(set(devices)))
    print(
        f"{len(seconds)} image(s) segmented with {loaded.card.name} on {where} in {total:.1f} s "
        f"({sum(seconds) / len(seconds):.2f} s per image for the network; threshold {threshold:.3f}); "
        f"outputs in {out}{kept()}; manifest {MANIFEST_NAME}" + (f"; {len(failed)} failed" if failed else "")
    )
    return 1 if failed else 0


def _json_target(text: str | None, overwrite: bool = False) -> Path | None:
    """The --json file, checked before a long run: not a folder, its folder writable, and no file
    there unless --overwrite (``--json photo.png`` replaced a photograph; a report from an earlier
    run is kept too, as every output is: nothing is overwritten without asking)."""
    from .errors import OutputError, OutputExistsError
    from .image_io import ensure_output_folder

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


def _write_json(path: Path, data: dict, overwrite: bool = False) -> Path:
    """Atomically; without ``overwrite`` never over a file (not even one that appeared during the run)."""
    from .image_io import atomic_write

    with atomic_write(path, overwrite=overwrite) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1) + "\n")
    return path


def _scale_arg(text: str):
    from .scale import parse_scale

    try:
        return parse_scale(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fusion_arg(text: str):
    from .scale import check_fusion

    try:
        return check_fusion(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _angle_arg(text: str) -> float:
    from .scale import check_field_angle

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the field angle must be degrees such as 45, got {text!r}") from None
    try:
        return check_field_angle(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _dataset_angle_arg(text: str):
    """evaluate's --field-angle: 'dataset', 'unknown' or degrees."""
    key = text.strip().lower()
    return key if key in ("dataset", "unknown") else _angle_arg(text)


def cmd_evaluate(args) -> int:
    from . import metrics
    from .datasets import load_split
    from .devices import select_device
    from .evaluation import evaluate_model, fov_note
    from .models import load_model

    json_path = _json_target(args.json, args.overwrite)
    split = load_split(args.dataset, args.root, args.split)
    if not split.test:
        raise InputError("this split has no test images")
    device = select_device(args.device)
    loaded = load_model(args.model)
    _warn(loaded.warnings)
    train = [] if args.no_train_threshold else split.train
    t0 = time.perf_counter()
    done = []

    def on_image(name, sec):
        done.append(sec)
        if not args.quiet:
            print(f"  {name}: {sec:.2f} s", file=sys.stderr)

    angle = None if args.field_angle == "unknown" else args.field_angle
    result = evaluate_model(
        loaded,
        split.test,
        train,
        device=device,
        on_image=on_image,
        precision=args.precision,
        scale=args.scale,
        field_angle=angle,
        fusion=args.fusion,
    )
    result["meta"] = {
        "model": loaded.card.name,
        "dataset": args.dataset,
        "split": args.split or "default",
        "n_test": len(split.test),
        "n_train": len(train),
        "device": str(device),
        "precision": args.precision,
        "scale": str(args.scale),
        "field_angle": args.field_angle,
        "fusion": args.fusion,
        "seconds_per_image": sum(done) / max(1, len(done)),
        "wall_seconds": time.perf_counter() - t0,
        "fov": fov_note(split.test) or "official FOV masks",
        "fov_estimated": [s.name for s in split.test if s.fov_source == "estimated"],
    }
    print(
        f"{loaded.card.name} on {args.dataset} ({args.split or 'default split'}, {len(split.test)} test images, "
        f"FOV pixels pooled; scale {args.scale}"
        + (f", field angle {args.field_angle}" if args.scale != "native" else "")
        + (f", fusion {args.fusion}" if args.fusion else "")
        + ")"
    )
    print(metrics.format_table(result))
    s = result["per_image_summary"]["auc"]
    print(f"per-image AUC: mean {s['mean']:.4f}, min {s['min']:.4f}, max {s['max']:.4f}")
    print("train_threshold: " + result["train_threshold_source"] + "; max_acc is chosen on the test images")
    note = fov_note(split.test)
    if note:
        print(f"FOV: {note}")
    if json_path:
        print(f"wrote {_write_json(json_path, result, args.overwrite)}")
    return 0


def cmd_import_caffe(args) -> int:
    from .convert import import_caffe

    path = import_caffe(args.src, args.dst, overwrite=args.overwrite)
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


def cmd_demo(args) -> int:
    """Segment scikit-image's bundled CC0 fundus photograph with the shipped model."""
    from PIL import Image
    from skimage import data

    from .image_io import atomic_write, ensure_output_folder

    out = ensure_output_folder(args.out, "--out")
    sample = out / "retina.png"
    if not sample.exists():
        with atomic_write(sample) as tmp:
            Image.fromarray(data.retina()).save(tmp, format="PNG")
    print(f"sample: {sample} (scikit-image's retina photograph, CC0)")
    seg = argparse.Namespace(
        inputs=[str(sample)],
        out=str(out),
        model=args.model,
        device=args.device,
        threshold=None,
        prob_format="png",
        precision="auto",
        quiet=False,
        overwrite=args.overwrite,
        scale="auto",
        field_angle=None,
        fusion="auto",
        json=None,
    )
    return cmd_segment(seg)


def cmd_models(args) -> int:
    from .models import list_models, user_models_dir

    for card in list_models():
        print(f"{card.name:<28} {card.summary}")
    print(f"(user models folder: {user_models_dir()})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .cohort import SCHEDULER_TIMEOUT
    from .devices import available_devices
    from .manifest import MANIFEST_NAME

    parser = argparse.ArgumentParser(prog="napari-dpn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment fundus images: probability map, vessel mask, FOV mask")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME_OR_PATH")
    p.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or mps (here: " + ", ".join(available_devices()) + ")"
    )
    p.add_argument("--threshold", type=float, default=None, help="vessel threshold (default: the model card's)")
    p.add_argument("--prob-format", choices=("png", "tiff"), default="png", help="16-bit PNG or float32 TIFF")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 on CPUs with AMX or AVX512-BF16 (about 2x faster, AUC within 0.0001), else fp32",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs (default: skip an image whose outputs exist, e.g. a correction saved "
        "from napari) and an existing --json file",
    )
    p.add_argument(
        "--scale",
        type=_scale_arg,
        default="auto",
        metavar="auto|native|calibre|disc|FACTOR",
        help="auto (default): resample each photograph to the model's working scale (pixels per "
        "degree of retina) and the map back; native: no resampling; calibre: estimate the scale from the "
        "width of the main vessels (experimental); disc: from the optic disc's diameter, about 6 degrees "
        "in adults (experimental); or a factor such as 0.5",
    )
    p.add_argument(
        "--field-angle",
        type=_angle_arg,
        default=None,
        metavar="DEG",
        help="the camera's field of view in degrees (30, 35, 45, 50, 55 ...); default: estimated "
        "(45 degrees assumed for a circular FOV; without one, the native scale)",
    )
    p.add_argument(
        "--fusion",
        type=_fusion_arg,
        default="auto",
        metavar="auto|FACTOR|none",
        help="average the map with a second pass at FACTOR x the working scale, which finds more thin "
        "vessels at about 3x the time; auto (default): as the model card recommends (dpn-universal: 1.5; "
        "the single-dataset models: none); none: one pass; skipped for very large images and with "
        "--batch-size above 1. Without --field-angle (45 degrees guessed) a pass at the working scale "
        "/ FACTOR joins the mean too, as the guess may be too fine",
    )
    p.add_argument(
        "--json",
        default=None,
        metavar="FILE",
        help="also write a report: scale, device and timing per image (a new file; --overwrite replaces one)",
    )
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
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("evaluate", help="the paper's metrics inside the FOV on a dataset's test split")
    p.add_argument("--dataset", required=True, help="drive, stare, chase or avwide")
    p.add_argument(
        "--root", required=True, metavar="DIR", help="folder holding DRIVE/, STARE/, CHASE_DB1/ (or the dataset folder)"
    )
    p.add_argument("--split", default=None, help="drive: default|all; stare: 10/10|loo-K|all; chase: 20/8|14/14|all")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME_OR_PATH")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON (a new file)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32 by default so that reported metrics do not depend on the CPU",
    )
    p.add_argument(
        "--no-train-threshold",
        action="store_true",
        help="skip the training images; rule (a) uses the model card's threshold",
    )
    p.add_argument(
        "--scale",
        type=_scale_arg,
        default="native",
        metavar="native|auto|calibre|disc|FACTOR",
        help="native (default): the paper's protocol; auto: scale-aware inference as `segment` does it "
        "(calibre, disc: its estimates without metadata, as in `segment`)",
    )
    p.add_argument(
        "--field-angle",
        type=_dataset_angle_arg,
        default="dataset",
        metavar="dataset|unknown|DEG",
        help="with --scale auto: the dataset's known field angle (default), unknown (estimated as "
        "for a photograph without metadata) or degrees",
    )
    p.add_argument(
        "--fusion",
        type=_fusion_arg,
        default=None,
        metavar="auto|FACTOR|none",
        help="average with a pass at FACTOR x the scale (auto: as the model card recommends, as `segment` "
        "does by default); default here: none, one pass (the paper's protocol)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("import-caffe", help="convert the official release's .caffemodel to safetensors")
    p.add_argument("src", metavar="IN.caffemodel")
    p.add_argument("dst", metavar="OUT.safetensors")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT.safetensors and OUT.json")
    p.set_defaults(func=cmd_import_caffe)

    p = sub.add_parser("demo", help="segment the bundled sample fundus photograph")
    p.add_argument("--out", default="demo-output", metavar="DIR")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME_OR_PATH")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier demo")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list the shipped and user models")
    p.set_defaults(func=cmd_models)

    from . import train_cli

    train_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DPNError as exc:
        print(f"napari-dpn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-dpn: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("napari-dpn: error: out of memory; try --device cpu or a smaller image", file=sys.stderr)
        return 2
    except OSError as exc:  # a file-system failure no command turned into a sentence: still one line
        from .image_io import os_error_message

        where = exc.filename or "a file"
        print(f"napari-dpn: error: {os_error_message(exc, where, 'use')}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
