"""Sample data: the CC0 fundus photograph bundled with scikit-image (``skimage.data.retina``)."""

from __future__ import annotations

from . import _roles


def retina_sample():
    from skimage import data

    rgb = data.retina()
    return [(rgb, {"name": "retina", "rgb": True, "metadata": _roles.meta("image")}, "image")]
