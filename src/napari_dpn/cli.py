"""napari-dpn: segment images, evaluate on a dataset, import Caffe weights, train, list models.

Every command shares the core used by the napari widgets.  User mistakes end in
one line ``napari-dpn: error: ...`` and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import DPNError, InputError
from .models import DEFAULT_MODEL


def _images_in(paths: list[str]) -> tuple[list[Path], list[str]]:
    """(photographs to segment, notes about files left out).

    In a folder, annotations, masks and probability maps (ours: ``*_vessels.png``...; the
    datasets': ``*_manual1.gif``, ``*_1stHO.png``, ``*.ah.ppm``...) are left out with one summary
    note; a file named explicitly (or by a shell glob) that is one of them is left out with a note.
    """
    from .annotations import not_a_photograph, photographs_in
    from .image_io import IMAGE_SUFFIXES

    found: list[Path] = []
    notes: list[str] = []
    for text in paths:
        p = Path(text).expanduser()
        if p.is_dir():
            photos = photographs_in(p)
            left = [q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES
                    and not q.name.startswith(".") and q not in photos]
            found += photos
            if left:
                notes.append(f"left out {len(left)} file(s) in {p} that are annotations, masks or probability "
                             f"maps, not photographs (e.g. {sorted(left)[0].name})")
        elif p.is_file():
            why = not_a_photograph(p)
            if why:
                notes.append(f"left out {p.name}: it is {why}, not a photograph")
            else:
                found.append(p)
        else:
            raise InputError(f"no such file or folder: {p}")
    if not found:
        raise InputError("no photographs found in " + ", ".join(paths)
                         + (f"; {notes[0]}" if len(notes) == 1 else
                            " (only annotations, masks or probability maps)" if notes else ""))
    return found, notes


def _plan_outputs(images: list[Path], out: Path, prob_suffix: str, overwrite: bool):
    """([(image, (probability, vessels, fov) paths)] to segment, [lines for images skipped]).

    Refuses two images whose outputs would share a name; without ``overwrite`` an image any of whose
    outputs exists (e.g. a correction saved from napari as ``<stem>_vessels.png``) is skipped."""
    from .annotations import output_paths, same_stem, same_stem_message

    clashes = same_stem(images)
    if clashes:
        raise InputError(same_stem_message(clashes))
    todo, skipped = [], []
    for path in images:
        outputs = output_paths(path, out, prob_suffix)
        prob, vessels, fov = outputs  # name the correction first: it is what a user would lose
        existing = [o for o in (vessels, fov, prob) if o.exists() or o.is_symlink()]
        if existing and not overwrite:
            skipped.append(f"{path.name}: {existing[0].name} already exists in {out}")
        else:
            todo.append((path, outputs))
    return todo, skipped


def _write_outputs(outputs, prob, vessels, fov, overwrite: bool) -> None:
    """Write one image's three outputs; if one cannot be written, remove the ones this call created
    (never a file that was there before), so an image has all its outputs or none of them."""
    from .image_io import write_mask, write_probability

    created = []
    try:
        for path, write, data in zip(outputs, (write_probability, write_mask, write_mask), (prob, vessels, fov)):
            existed = path.exists()
            write(path, data, overwrite=overwrite)
            if not existed:
                created.append(path)
    except BaseException:  # a full disk, a file saved meanwhile, Ctrl-C
        for path in created:
            path.unlink(missing_ok=True)
        raise


def _warn(lines) -> None:
    for line in lines:
        print(f"napari-dpn: warning: {line}", file=sys.stderr)


def cmd_segment(args) -> int:
    from tqdm import tqdm

    from .errors import OutputExistsError
    from .image_io import as_rgb, ensure_output_folder, is_greyscale, read_image
    from .devices import select_device
    from .models import load_model
    from .segmentation import segment

    images, notes = _images_in(args.inputs)
    for line in notes:
        print(f"napari-dpn: {line}", file=sys.stderr)
    device = select_device(args.device)
    threshold = args.threshold
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise InputError(f"--threshold must lie between 0 and 1, got {threshold}")
    json_path = _json_target(args.json)
    out = ensure_output_folder(args.out, "--out")
    suffix = ".tif" if args.prob_format == "tiff" else ".png"
    todo, skipped = _plan_outputs(images, out, suffix, getattr(args, "overwrite", False))
    for line in skipped:
        print(f"napari-dpn: skipped {line}", file=sys.stderr)
    if not todo:
        print(f"0 image(s) segmented; {len(skipped)} skipped because their outputs exist "
              f"(--overwrite replaces them); outputs in {out}")
        return 0
    loaded = load_model(args.model)
    _warn(loaded.warnings)
    threshold = loaded.card.threshold if threshold is None else threshold
    t0, seconds, failed, grey, report = time.perf_counter(), [], [], [], {}
    for path, outputs in tqdm(todo, desc="segmenting", unit="image", disable=args.quiet):
        try:
            raw = read_image(path)
            rgb = as_rgb(raw)
        except DPNError as exc:  # one bad file in a folder should not stop the batch
            failed.append(f"{path.name}: {exc}")
            continue
        if is_greyscale(raw):
            grey.append(path.name)
        seg = segment(loaded, rgb, threshold=threshold, scale=args.scale, field_angle=args.field_angle,
                      device=device, precision=args.precision)
        try:
            _write_outputs(outputs, seg.probability, seg.mask(), seg.fov, getattr(args, "overwrite", False))
        except OutputExistsError as exc:  # appeared while this batch ran (e.g. saved from napari)
            skipped.append(f"{path.name}: {exc}")
            print(f"napari-dpn: skipped {skipped[-1]}", file=sys.stderr)
            continue
        seconds.append(seg.prediction.seconds)
        report[path.name] = seg.summary()
        for note in (seg.prediction.note, seg.scale.note):
            if note:
                tqdm.write(f"{path.name}: {note}")
        if not args.quiet:
            tqdm.write(f"{path.name}: {seg.scale.describe()}")
    for line in failed:
        print(f"napari-dpn: skipped {line}", file=sys.stderr)
    if grey:
        print(f"napari-dpn: note: {len(grey)} greyscale photograph(s) ({', '.join(grey[:3])}"
              f"{', ...' if len(grey) > 3 else ''}); the models were trained on colour fundus photographs, "
              "so expect lower accuracy on them", file=sys.stderr)
    kept = (f"; {len(skipped)} skipped because their outputs exist (--overwrite replaces them)"
            if skipped else "")
    if not seconds:
        if failed:
            raise InputError("none of the images could be read" + kept)
        print(f"0 image(s) segmented; outputs in {out}{kept}")
        return 0
    if json_path:
        _write_json(json_path, {"model": loaded.card.name, "sha256": loaded.card.sha256, "images": report})
    total = time.perf_counter() - t0
    print(f"{len(seconds)} image(s) segmented with {loaded.card.name} on {device} in {total:.1f} s "
          f"({sum(seconds) / len(seconds):.2f} s per image for the network; threshold {threshold:.3f}); "
          f"outputs in {out}{kept}")
    return 1 if failed else 0


def _json_target(text: str | None) -> Path | None:
    """The --json file, checked before a long evaluation: not a folder, its folder writable."""
    from .errors import OutputError
    from .image_io import ensure_output_folder

    if not text:
        return None
    path = Path(text).expanduser()
    if path.is_dir():
        raise OutputError(f"--json {path} is a folder; give a file name such as {path / 'results.json'}")
    ensure_output_folder(path.parent if str(path.parent) else Path("."), "the folder of --json")
    return path


def _write_json(path: Path, data: dict) -> Path:
    from .image_io import atomic_write

    with atomic_write(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1) + "\n")
    return path


def _scale_arg(text: str):
    from .scale import parse_scale

    try:
        return parse_scale(text)
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
    from .evaluation import evaluate_model, fov_note
    from .devices import select_device
    from .models import load_model

    json_path = _json_target(args.json)
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
    result = evaluate_model(loaded, split.test, train, device=device, on_image=on_image, precision=args.precision,
                            scale=args.scale, field_angle=angle)
    result["meta"] = {
        "model": loaded.card.name, "dataset": args.dataset, "split": args.split or "default",
        "n_test": len(split.test), "n_train": len(train), "device": str(device), "precision": args.precision,
        "scale": str(args.scale), "field_angle": args.field_angle,
        "seconds_per_image": sum(done) / max(1, len(done)), "wall_seconds": time.perf_counter() - t0,
        "fov": fov_note(split.test) or "official FOV masks",
        "fov_estimated": [s.name for s in split.test if s.fov_source == "estimated"],
    }
    print(f"{loaded.card.name} on {args.dataset} ({args.split or 'default split'}, {len(split.test)} test images, "
          f"FOV pixels pooled; scale {args.scale}" + (f", field angle {args.field_angle}" if args.scale != "native" else "")
          + ")")
    print(metrics.format_table(result))
    s = result["per_image_summary"]["auc"]
    print(f"per-image AUC: mean {s['mean']:.4f}, min {s['min']:.4f}, max {s['max']:.4f}")
    print("train_threshold: " + result["train_threshold_source"] + "; max_acc is chosen on the test images")
    note = fov_note(split.test)
    if note:
        print(f"FOV: {note}")
    if json_path:
        print(f"wrote {_write_json(json_path, result)}")
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
    seg = argparse.Namespace(inputs=[str(sample)], out=str(out), model=args.model, device=args.device,
                             threshold=None, prob_format="png", precision="auto", quiet=False,
                             overwrite=args.overwrite, scale="auto", field_angle=None, json=None)
    return cmd_segment(seg)


def cmd_models(args) -> int:
    from .models import list_models, user_models_dir

    for card in list_models():
        print(f"{card.name:<28} {card.summary}")
    print(f"(user models folder: {user_models_dir()})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .devices import available_devices

    parser = argparse.ArgumentParser(prog="napari-dpn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment fundus images: probability map, vessel mask, FOV mask")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME_OR_PATH")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (here: " + ", ".join(available_devices()) + ")")
    p.add_argument("--threshold", type=float, default=None, help="vessel threshold (default: the model card's)")
    p.add_argument("--prob-format", choices=("png", "tiff"), default="png", help="16-bit PNG or float32 TIFF")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 on CPUs with AMX (about 2x faster, AUC within 0.0001), else fp32")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (default: skip an image whose outputs exist, e.g. a correction saved from napari)")
    p.add_argument("--scale", type=_scale_arg, default="auto", metavar="auto|native|FACTOR",
                   help="auto (default): resample each photograph to the model's working scale (pixels per "
                        "degree of retina) and the map back; native: no resampling; or a factor such as 0.5")
    p.add_argument("--field-angle", type=_angle_arg, default=None, metavar="DEG",
                   help="the camera's field of view in degrees (30, 35, 45, 50, 55 ...); default: estimated "
                        "(45 degrees assumed for a circular FOV, the vessel calibre without one)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write a report: scale, device and timing per image")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("evaluate", help="the paper's metrics inside the FOV on a dataset's test split")
    p.add_argument("--dataset", required=True, help="drive, stare, chase or avwide")
    p.add_argument("--root", required=True, metavar="DIR", help="folder holding DRIVE/, STARE/, CHASE_DB1/ (or the dataset folder)")
    p.add_argument("--split", default=None, help="drive: default|all; stare: 10/10|loo-K|all; chase: 20/8|14/14|all")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME_OR_PATH")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, metavar="FILE")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="fp32",
                   help="fp32 by default so that reported metrics do not depend on the CPU")
    p.add_argument("--no-train-threshold", action="store_true", help="skip the training images; rule (a) uses the model card's threshold")
    p.add_argument("--scale", type=_scale_arg, default="native", metavar="native|auto|FACTOR",
                   help="native (default): the paper's protocol; auto: scale-aware inference as `segment` does it")
    p.add_argument("--field-angle", type=_dataset_angle_arg, default="dataset", metavar="dataset|unknown|DEG",
                   help="with --scale auto: the dataset's known field angle (default), unknown (estimated as "
                        "for a photograph without metadata) or degrees")
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
