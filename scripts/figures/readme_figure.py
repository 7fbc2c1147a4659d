"""docs/images/sample-result.png: the bundled sample, its vessel probability and the vessel mask.

Usage: python scripts/figures/readme_figure.py   (uses the shipped dpn-release-drive model on the CPU)
"""

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data, transform

from napari_dpn.files import atomic_write
from napari_dpn.fov import estimate_fov
from napari_dpn.inference import predict
from napari_dpn.models import load_model

OUT = Path(__file__).resolve().parents[2] / "docs" / "images" / "sample-result.png"


def main() -> None:
    rgb = data.retina().astype(np.float32) / 255
    loaded = load_model("dpn-release-drive")
    pred = predict(loaded, rgb, device="cpu")
    fov = estimate_fov(rgb)
    prob = pred.probability * fov
    vessels = (prob >= loaded.card.threshold) & fov
    overlay = rgb.copy()
    overlay[vessels] = 0.6 * overlay[vessels] + 0.4 * np.array([0.1, 1.0, 0.3])
    panels = [rgb, np.repeat(prob[..., None], 3, 2), overlay]
    small = [transform.resize(p, (600, 600), anti_aliasing=True) for p in panels]
    gap = np.ones((600, 12, 3))
    strip = np.concatenate([small[0], gap, small[1], gap, small[2]], axis=1)
    with atomic_write(OUT) as tmp:
        Image.fromarray((np.clip(strip, 0, 1) * 255).astype(np.uint8)).save(tmp, format="PNG")
    print(f"wrote {OUT} ({pred.seconds:.1f} s on {pred.device}, threshold {loaded.card.threshold})")


if __name__ == "__main__":
    main()
