"""Import the official release's Caffe weights into our ``dpn-release`` network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .caffe import read_caffemodel
from .errors import InputError, WeightsError
from .model import DPNRelease


def caffe_name_map() -> dict[str, tuple[str, str]]:
    """Caffe layer name -> (weight key, bias key) in ``DPNRelease``'s state dict."""
    m = {"conv0": "front"}
    for n in range(1, 9):
        b = f"blocks.{n - 1}"
        m.update(
            {
                f"bl{n}_b1_conv": f"{b}.b1",
                f"bl{n}_b2_conv": f"{b}.b2",
                f"bl{n}_b3_conv": f"{b}.b3",
                f"bl{n}_b23_output": f"{b}.b23",
                f"bl{n}_output": f"{b}.out",
                f"bl{n}_res_output": f"{b}.res",
                f"bl{n}_b3_up2": f"{b}.b3_up",
                f"bl{n}_b23_output_up2": f"{b}.b23_up",
            }
        )
    for k in range(1, 5):
        m[f"score-dsn{k}"] = f"heads.heads.{k - 1}"
    return {name: (f"{key}.weight", f"{key}.bias") for name, key in m.items()}


def state_dict_from_caffe(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a release caffemodel and check every layer name and blob shape against ``dpn-release``."""
    expected = DPNRelease().state_dict()
    names = caffe_name_map()
    layers = {layer.name: layer for layer in read_caffemodel(path) if layer.blobs}
    out: dict[str, torch.Tensor] = {}
    for cname, (wkey, bkey) in names.items():
        layer = layers.pop(cname, None)
        if layer is None:
            raise WeightsError(f"{Path(path).name}: layer '{cname}' is missing; this is not a DPN release model")
        if len(layer.blobs) != 2:
            raise WeightsError(
                f"{Path(path).name}: layer '{cname}' has {len(layer.blobs)} blobs, expected 2 (weights, bias)"
            )
        for key, blob in zip((wkey, bkey), layer.blobs):
            want = tuple(expected[key].shape)
            if tuple(blob.shape) != want:
                raise WeightsError(
                    f"{Path(path).name}: layer '{cname}' has a blob of shape {tuple(blob.shape)}, expected {want}"
                )
            out[key] = torch.from_numpy(np.ascontiguousarray(blob, dtype=np.float32))
    if layers:
        raise WeightsError(
            f"{Path(path).name}: unexpected layer '{next(iter(layers))}' with weights; this is not a DPN release model"
        )
    return out


def import_caffe(src: str | Path, dst: str | Path, card=None, overwrite: bool = True):
    """Convert ``src`` (.caffemodel) to a safetensors weights file with its model card.

    With ``overwrite=False`` an existing ``dst`` or its ``.json`` is never replaced (checked before
    the caffemodel is read; OutputExistsError)."""
    from .errors import OutputExistsError
    from .models import WEIGHTS_SUFFIX, ModelCard, save_model

    dst = Path(dst)
    if dst.is_dir():
        raise InputError(f"{dst} is a folder; give the file to write, e.g. {dst / ('NAME' + WEIGHTS_SUFFIX)}")
    if dst.suffix != WEIGHTS_SUFFIX:
        dst = dst.with_name(dst.name + WEIGHTS_SUFFIX)
    if not overwrite:
        for p in (dst, dst.with_suffix(".json")):
            if p.exists():
                raise OutputExistsError(f"{p} already exists; nothing was written (--overwrite replaces it)")
    model = DPNRelease()
    model.load_state_dict(state_dict_from_caffe(src))
    if card is None:
        card = ModelCard(
            name=Path(dst).stem,
            architecture="dpn-release",
            input=dict(RELEASE_INPUT),
            description=f"Imported from {Path(src).name}",
        )
    return save_model(model, card, dst, overwrite=overwrite)


# What the release's test script feeds the network: BGR, 0..255, no mean subtracted.
RELEASE_INPUT = {
    "channel_order": "BGR",
    "scale": 255.0,
    "mean": [0.0, 0.0, 0.0],
    "std": [1.0, 1.0, 1.0],
    "clahe": False,
}
