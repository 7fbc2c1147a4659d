"""napari-dpn: retinal vessel segmentation with DPN, as a library, a command line and a napari plugin.

The public API, in the order a script uses it::

    from napari_dpn import load_model, segment, evaluate, train

Imported lazily: napari reads this package to find its plugin manifest, and should not pay for
torch until a function is called.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-dpn")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_API = {
    "load_model": "napari_dpn.models",  # name or path -> LoadedModel (network + card)
    "segment": "napari_dpn.segmentation",  # photograph -> Segmentation (probability, FOV, scale, mask)
    "evaluate": "napari_dpn.evaluation",  # model + dataset samples -> the paper's metrics
    "train": "napari_dpn.training",  # TrainConfig + pairs -> TrainResult (a saved model)
    "TrainConfig": "napari_dpn.training",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name == "evaluate":
        return import_module(_API[name]).evaluate_model
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'napari_dpn' has no attribute {name!r}")
