"""Read Caffe ``.caffemodel`` files without Caffe.

A caffemodel is a protobuf ``NetParameter``.  We only need a handful of fields
(layer name, type, bottoms, tops, blobs), so a small wire-format reader is
enough and avoids shipping Caffe's schema; every field we do not know is
skipped by its wire type, which is what protobuf itself does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import WeightsError

# NetParameter.layer = 100 (LayerParameter); NetParameter.layers = 2 (old V1LayerParameter)
_NET_LAYER, _NET_LAYER_V1 = 100, 2
# LayerParameter: name=1 type=2 bottom=3 top=4 blobs=7
# BlobProto: shape=7 (BlobShape: dim=1), data=5 (packed float), num/channels/height/width = 1..4 (legacy)


@dataclass
class CaffeLayer:
    name: str
    type: str
    bottoms: list[str] = field(default_factory=list)
    tops: list[str] = field(default_factory=list)
    blobs: list[np.ndarray] = field(default_factory=list)


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise WeightsError("the file ends in the middle of a number: it is truncated or not a caffemodel")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WeightsError("malformed protobuf varint: this is not a caffemodel")


def _fields(buf: memoryview):
    """Yield (field_number, wire_type, value) for one protobuf message."""
    pos, end = 0, len(buf)
    val: int | memoryview
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 1:
            if pos + 8 > end:
                raise WeightsError("the file is truncated (64-bit field runs past its end)")
            val, pos = buf[pos : pos + 8], pos + 8
        elif wt == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise WeightsError("the file is truncated (a record runs past the end of the file)")
            val, pos = buf[pos : pos + n], pos + n
        elif wt == 5:
            if pos + 4 > end:
                raise WeightsError("the file is truncated (32-bit field runs past its end)")
            val, pos = buf[pos : pos + 4], pos + 4
        else:
            raise WeightsError(f"unsupported protobuf wire type {wt}: this is not a caffemodel")
        if num == 0:
            raise WeightsError("protobuf field number 0: this is not a caffemodel")
        yield num, wt, val


def _blob(buf: memoryview) -> np.ndarray:
    shape: list[int] = []
    legacy = {}
    chunks: list[np.ndarray] = []
    for num, wt, val in _fields(buf):
        if num == 7 and wt == 2:  # BlobShape
            for n2, w2, v2 in _fields(val):
                if n2 == 1:
                    if w2 == 2:  # packed dims
                        p = 0
                        while p < len(v2):
                            d, p = _varint(v2, p)
                            shape.append(d)
                    else:
                        shape.append(v2)
        elif num == 5:
            if wt == 2:
                if len(val) % 4:
                    raise WeightsError("blob data length is not a multiple of 4 bytes: the file is corrupt")
                chunks.append(np.frombuffer(val, dtype="<f4"))
            elif wt == 5:
                chunks.append(np.array(struct.unpack("<f", val), dtype="<f4"))
        elif num in (1, 2, 3, 4) and wt == 0:
            legacy[num] = val
    data = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if not shape and legacy:
        shape = [legacy.get(i, 1) for i in (1, 2, 3, 4)]
    if shape and int(np.prod(shape)) != data.size:
        raise WeightsError(
            f"blob holds {data.size} numbers but its shape {tuple(shape)} needs {int(np.prod(shape))}: the file is truncated or corrupt"
        )
    return data.reshape(shape if shape else (data.size,)).astype(np.float32)


def read_caffemodel(path: str | Path) -> list[CaffeLayer]:
    """Return the layers of a ``.caffemodel`` in file order."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not raw:
        raise WeightsError(f"{path} is empty")
    layers: list[CaffeLayer] = []
    for num, wt, val in _fields(memoryview(raw)):
        if num in (_NET_LAYER, _NET_LAYER_V1) and wt == 2:
            layer = CaffeLayer(name="", type="")
            for n2, w2, v2 in _fields(val):
                if w2 != 2:
                    continue
                if n2 == 1:
                    layer.name = bytes(v2).decode("utf-8", "replace")
                elif n2 == 2 and num == _NET_LAYER:
                    layer.type = bytes(v2).decode("utf-8", "replace")
                elif n2 == 3:
                    layer.bottoms.append(bytes(v2).decode("utf-8", "replace"))
                elif n2 == 4:
                    layer.tops.append(bytes(v2).decode("utf-8", "replace"))
                elif (n2 == 7 and num == _NET_LAYER) or (n2 == 6 and num == _NET_LAYER_V1):
                    layer.blobs.append(_blob(v2))
            layers.append(layer)
    if not layers:
        raise WeightsError(f"{path} holds no Caffe layers: it is not a caffemodel")
    return layers
