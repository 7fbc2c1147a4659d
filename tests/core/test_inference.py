"""Whole-image and tiled prediction, devices, and the inputs users really have."""

import numpy as np
import pytest
import torch

from napari_dpn.architectures import FRESH_INPUT
from napari_dpn.devices import available_devices, cpu_has_native_bf16, select_device
from napari_dpn.errors import InputError
from napari_dpn.inference import TILE_MARGIN, predict
from napari_dpn.model import build_model
from napari_dpn.models import LoadedModel, ModelCard
from synthetic_fundus import fundus


def _loaded(arch):
    torch.manual_seed(0)
    model = build_model(arch).eval()
    with torch.no_grad():  # milder weights so the map is not saturated at 0 or 1
        for p in model.parameters():
            p.mul_(0.8)
    return LoadedModel(model, ModelCard(name="t", architecture=arch, input=dict(FRESH_INPUT)))


def _fundus(h=96, w=88, seed=0):
    return fundus((h, w), seed)[0]


@pytest.mark.parametrize("arch", ["dpn", "dpn-release"])
def test_tiled_equals_one_pass(arch):
    loaded = _loaded(arch)
    head = loaded.model.heads.heads[-1]
    with torch.no_grad():  # spread the map so that a stitching error would show
        head.weight.mul_(30.0)
    img = _fundus(3 * TILE_MARGIN + 70, 2 * TILE_MARGIN + 90, seed=1)
    whole = predict(loaded, img, device="cpu", precision="fp32")
    tiled = predict(loaded, img, device="cpu", max_pixels=(2 * TILE_MARGIN + 64) ** 2, precision="fp32")
    assert not whole.tiled and tiled.tiled and tiled.tiles >= 4
    assert whole.probability.std() > 1e-3
    assert np.abs(whole.probability - tiled.probability).max() < 1e-4


@pytest.mark.parametrize("arch", ["dpn", "dpn-release"])
def test_bf16_is_close_to_fp32(arch):
    """bf16 runs wherever torch supports it (emulated without AMX); 'auto' picks it only with AMX-BF16."""
    loaded = _loaded(arch)
    img = _fundus(120, 100, seed=2)
    ref = predict(loaded, img, device="cpu", precision="fp32")
    got = predict(loaded, img, device="cpu", precision="bf16")
    auto = predict(loaded, img, device="cpu")
    assert ref.precision == "fp32" and got.precision == "bf16"
    assert auto.precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert np.abs(got.probability - ref.probability).max() < 0.05
    assert np.abs(got.probability - ref.probability).mean() < 5e-3


def test_unknown_precision_is_one_clear_sentence():
    with pytest.raises(InputError, match="unknown precision"):
        predict(_loaded("dpn"), _fundus(), device="cpu", precision="fp8")


def test_progress_and_cancel_between_tiles():
    loaded = _loaded("dpn")
    img = _fundus(2 * TILE_MARGIN + 150, 2 * TILE_MARGIN + 150)
    seen = []
    predict(loaded, img, device="cpu", max_pixels=(2 * TILE_MARGIN + 64) ** 2, progress=seen.append)
    assert seen[-1] == 1.0 and len(seen) > 1 and seen == sorted(seen)
    with pytest.raises(InterruptedError):
        predict(loaded, img, device="cpu", max_pixels=(2 * TILE_MARGIN + 64) ** 2, should_stop=lambda: True)


@pytest.mark.parametrize(
    "make",
    [
        lambda r: (r * 255).astype(np.uint8),
        lambda r: (r * 65535).astype(np.uint16),
        lambda r: np.dstack([(r * 255).astype(np.uint8), np.full(r.shape[:2], 255, np.uint8)]),
        lambda r: r,
    ],
)
def test_input_layouts_give_the_same_map(make):
    loaded = _loaded("dpn")
    rgb = _fundus()
    ref = predict(loaded, rgb, device="cpu").probability
    got = predict(loaded, make(rgb), device="cpu").probability
    assert np.abs(got - ref).max() < 2e-2


def test_greyscale_is_accepted():
    out = predict(_loaded("dpn"), _fundus()[..., 1], device="cpu")
    assert out.probability.shape == (96, 88) and out.probability.dtype == np.float32


@pytest.mark.parametrize(
    "bad, msg",
    [
        (np.zeros((5, 64, 64, 3), np.uint8), "3-D|stack|dimension"),
        (np.zeros((4, 4, 3), np.uint8), "at least 8"),
        (np.zeros((0, 0, 3), np.uint8), "empty"),
    ],
)
def test_bad_inputs_get_one_clear_sentence(bad, msg):
    with pytest.raises(InputError, match=msg):
        predict(_loaded("dpn"), bad, device="cpu")


def test_devices():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type in {"cpu", "cuda", "mps"}
    assert available_devices()[:2] == ["auto", "cpu"]
    with pytest.raises(InputError, match="unknown device"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA was requested but is not available"):
            select_device("cuda")


def test_release_model_on_the_bundled_sample_finds_vessels():
    """End to end with the shipped weights on scikit-image's CC0 fundus photograph (downscaled)."""
    from skimage import data, transform

    from napari_dpn.models import load_model

    rgb = transform.rescale(data.retina(), 0.4, channel_axis=2, anti_aliasing=True).astype(np.float32)
    pred = predict(load_model("dpn-release-drive"), rgb, device="cpu")
    vessels = pred.probability > 0.5
    assert 0.02 < vessels.mean() < 0.25  # a vessel tree, not nothing and not everything
    # vessels are darker than the background in the green channel
    assert rgb[..., 1][vessels].mean() < rgb[..., 1][~vessels & (rgb[..., 0] > 0.2)].mean()
