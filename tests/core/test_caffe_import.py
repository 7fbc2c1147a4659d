"""The caffemodel reader and importer, on caffemodels written here with a minimal protobuf encoder."""

import struct

import numpy as np
import pytest
import torch

from napari_dpn.caffe import read_caffemodel
from napari_dpn.convert import caffe_name_map, import_caffe, state_dict_from_caffe
from napari_dpn.errors import WeightsError
from napari_dpn.model import DPNRelease
from napari_dpn.models import load_model


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num, payload):
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _blob(arr):
    shape = b"".join(_varint(1 << 3) + _varint(d) for d in arr.shape)
    return _field(7, shape) + _field(5, np.asarray(arr, "<f4").tobytes())


def _layer(name, type_, blobs=()):
    return _field(1, name.encode()) + _field(2, type_.encode()) + b"".join(_field(7, _blob(b)) for b in blobs)


def _caffemodel(state, skip=None, reshape=None, extra=None):
    body = _field(1, b"dpn") + _field(100, _layer("data", "ImageSegData"))
    for cname, (wkey, bkey) in caffe_name_map().items():
        if cname == skip:
            continue
        w, b = state[wkey].numpy(), state[bkey].numpy()
        if cname == reshape:
            w = w.reshape(-1)[: w.size // 2].reshape(w.shape[0] // 2, *w.shape[1:])
        body += _field(100, _layer(cname, "Convolution", [w, b]))
        body += _field(100, _layer(cname + "_relu", "ReLU"))
    if extra:
        body += _field(100, _layer(extra, "Convolution", [np.zeros((1, 1, 1, 1)), np.zeros(1)]))
    return body


@pytest.fixture
def release_state():
    torch.manual_seed(0)
    return DPNRelease().state_dict()


def test_round_trip_through_caffemodel_and_safetensors(tmp_path, release_state):
    src = tmp_path / "m.caffemodel"
    src.write_bytes(_caffemodel(release_state))
    layers = read_caffemodel(src)
    assert [layer.name for layer in layers][:2] == ["data", "conv0"]
    out = import_caffe(src, tmp_path / "m.safetensors")
    loaded = load_model(out)
    assert loaded.card.architecture == "dpn-release"
    assert loaded.card.input["channel_order"] == "BGR" and loaded.card.input["scale"] == 255.0
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, release_state[k]), k


def test_truncated_file_is_a_clear_error(tmp_path, release_state):
    raw = _caffemodel(release_state)
    src = tmp_path / "cut.caffemodel"
    src.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(WeightsError, match="truncated"):
        state_dict_from_caffe(src)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"skip": "bl3_b23_output"}, "'bl3_b23_output' is missing"),  # a missing layer is named
        (
            {"reshape": "bl2_output"},  # the first mismatching blob is named, with both shapes
            r"'bl2_output' has a blob of shape \(8, 24, 3, 3\), expected \(16, 24, 3, 3\)",
        ),
        ({"extra": "fc9"}, "unexpected layer 'fc9'"),
    ],
)
def test_layer_mismatches_are_named(tmp_path, release_state, change, message):
    src = tmp_path / "m.caffemodel"
    src.write_bytes(_caffemodel(release_state, **change))
    with pytest.raises(WeightsError, match=message):
        state_dict_from_caffe(src)


@pytest.mark.parametrize("content", [b"", b"\x00\x01\x02", b"not a model at all"])
def test_garbage_and_empty_files(tmp_path, content):
    src = tmp_path / "bad.caffemodel"
    src.write_bytes(content)
    with pytest.raises(WeightsError):
        state_dict_from_caffe(src)


def test_floats_in_non_packed_form_are_read(tmp_path):
    blob = _field(7, _varint(1 << 3) + _varint(2)) + b"".join(
        _varint(5 << 3 | 5) + struct.pack("<f", v) for v in (1.5, -2.0)
    )
    raw = _field(100, _field(1, b"x") + _field(2, b"Scale") + _field(7, blob))
    src = tmp_path / "f.caffemodel"
    src.write_bytes(raw)
    (layer,) = read_caffemodel(src)
    np.testing.assert_array_equal(layer.blobs[0], [1.5, -2.0])
