"""napari-dpn: segment images, evaluate on a dataset, import Caffe weights, train, list models.

Every command shares the core used by the napari widgets.  User mistakes end in
one line ``napari-dpn: error: ...`` and exit status 2, never a traceback.  One module per
command (``register(subparsers)`` and ``cmd_*``); options several commands take are in
``options.py``.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import DPNError
from ..messages import sentence
from . import demo, evaluate, import_caffe, models, segment, train

# The order of the subcommands in ``napari-dpn --help``.
COMMANDS = (segment, evaluate, import_caffe, demo, models, train)

OUT_OF_MEMORY = "out of memory; try --device cpu or a smaller image"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-dpn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("napari-dpn: interrupted", file=sys.stderr)
        return 130
    # A file-system failure no command turned into a sentence is still one line.
    except (DPNError, MemoryError, OSError) as exc:
        print(f"napari-dpn: error: {sentence(exc, out_of_memory=OUT_OF_MEMORY)}", file=sys.stderr)
        return 2
