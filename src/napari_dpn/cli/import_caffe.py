"""``napari-dpn import-caffe``: the official release's .caffemodel as a safetensors model."""

from __future__ import annotations

from ..convert import import_caffe
from . import options as o


def register(sub) -> None:
    p = sub.add_parser("import-caffe", help="convert the official release's .caffemodel to safetensors")
    p.add_argument("src", metavar="IN.caffemodel")
    p.add_argument("dst", metavar="OUT.safetensors")
    o.add_overwrite(p, "replace an existing OUT.safetensors and OUT.json")
    p.set_defaults(func=cmd_import_caffe)


def cmd_import_caffe(args) -> int:
    path = import_caffe(args.src, args.dst, overwrite=args.overwrite)
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0
