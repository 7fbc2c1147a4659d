"""Average the weights of one run's checkpoints (training.average_checkpoints) into a new checkpoint.

Usage: python scripts/release/average_checkpoints.py OUT.ckpt.pt CKPT CKPT [CKPT ...]

Then finish it as a model, with the run's own threshold rule and card: ``napari-dpn train ...
(the run's data) --resume OUT.ckpt.pt --steps STEP`` at the step it prints; the card records
``training.weights_averaged_over_steps``. How dpn-universal's last phase was averaged: docs/results.md.
"""

from __future__ import annotations

import sys

from napari_dpn.errors import DPNError
from napari_dpn.training import average_checkpoints, load_checkpoint


def main() -> None:
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    out, paths = sys.argv[1], sys.argv[2:]
    try:
        written = average_checkpoints(paths, out)
    except DPNError as exc:
        sys.exit(f"average_checkpoints: {exc}")
    ck = load_checkpoint(written)
    print(
        f"wrote {written}: the mean of steps {ck['averaged_steps']}; finish it with --resume {written} --steps {ck['step']}"
    )


if __name__ == "__main__":
    main()
