"""``napari-dpn demo``: segment scikit-image's bundled CC0 fundus photograph with the shipped model."""

from __future__ import annotations

import argparse

from PIL import Image

from ..files import atomic_write
from ..image_writers import ensure_output_folder
from . import options as o
from .segment import cmd_segment


def register(sub) -> None:
    p = sub.add_parser("demo", help="segment the bundled sample fundus photograph")
    p.add_argument("--out", default="demo-output", metavar="DIR")
    o.add_model(p)
    o.add_device(p)
    o.add_overwrite(p, "replace the outputs of an earlier demo")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    """Segment the sample as ``segment`` would, with its defaults."""
    from skimage import data  # the sample's module, wanted by this command only (not at every start)

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
