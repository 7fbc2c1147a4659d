"""``napari-dpn evaluate``: the paper's metrics inside the FOV on a dataset's test split."""

from __future__ import annotations

import sys
import time

from .. import evaluation, layouts, metrics
from ..datasets import load_split
from ..devices import select_device
from ..errors import InputError
from ..evaluation import fov_note
from ..models import load_model
from . import options as o


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="the paper's metrics inside the FOV on a dataset's test split")
    p.add_argument("--dataset", required=True, help=layouts.keys_text())
    p.add_argument(
        "--root", required=True, metavar="DIR", help=f"folder holding {layouts.folders_text()} (or the dataset folder)"
    )
    p.add_argument("--split", default=None, help="drive: default|all; stare: 10/10|loo-K|all; chase: 20/8|14/14|all")
    o.add_model(p)
    o.add_device(p)
    o.add_json(p, "also write the results as JSON (a new file)")
    o.add_overwrite(p, "replace an existing --json file")
    o.add_precision(p, "fp32", "fp32 by default so that reported metrics do not depend on the CPU")
    p.add_argument(
        "--no-train-threshold",
        action="store_true",
        help="skip the training images; rule (a) uses the model card's threshold",
    )
    o.add_scale(
        p,
        "native",
        "native|auto|calibre|disc|FACTOR",
        "native (default): the paper's protocol; auto: scale-aware inference as `segment` does it "
        "(calibre, disc: its estimates without metadata, as in `segment`)",
    )
    o.add_field_angle(
        p,
        "with --scale auto: the dataset's known field angle (default), unknown (estimated as "
        "for a photograph without metadata) or degrees",
        default="dataset",
        metavar="dataset|unknown|DEG",
        type=o.dataset_angle_arg,
    )
    o.add_fusion(
        p,
        None,
        "average with a pass at FACTOR x the scale (auto: as the model card recommends, as `segment` "
        "does by default); default here: none, one pass (the paper's protocol)",
    )
    o.add_quiet(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    json_path = o.json_target(args.json, args.overwrite)
    split = load_split(args.dataset, args.root, args.split)
    if not split.test:
        raise InputError("this split has no test images")
    device = select_device(args.device)
    loaded = load_model(args.model)
    o.warn(loaded.warnings)
    train = [] if args.no_train_threshold else split.train
    t0 = time.perf_counter()
    done = []

    def on_image(name, sec):
        done.append(sec)
        if not args.quiet:
            print(f"  {name}: {sec:.2f} s", file=sys.stderr)

    angle = None if args.field_angle == "unknown" else args.field_angle
    result = evaluation.evaluate_model(
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
    result["meta"] = _meta(args, loaded, split, train, device, done, time.perf_counter() - t0)
    _print_result(args, loaded, split, result)
    if json_path:
        print(f"wrote {o.write_json(json_path, result, args.overwrite)}")
    return 0


def _meta(args, loaded, split, train, device, done: list, wall: float) -> dict:
    return {
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
        "wall_seconds": wall,
        "fov": fov_note(split.test) or "official FOV masks",
        "fov_estimated": [s.name for s in split.test if s.fov_source == "estimated"],
    }


def _print_result(args, loaded, split, result: dict) -> None:
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
