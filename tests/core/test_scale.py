"""Scale-aware inference: pixels per degree, resampling, the one segmentation pipeline, fallbacks."""

import json

import numpy as np
import pytest
from PIL import Image
from skimage.draw import disk

from napari_dpn import scale, segmentation
from napari_dpn.cli import main
from napari_dpn.models import load_model
from napari_dpn.scale import card_fusion, check_fusion
from napari_dpn.segmentation import segment, vessel_calibre
from paths import DATASETS
from synthetic_fundus import fundus

needs_drive = pytest.mark.skipif(not (DATASETS / "DRIVE").is_dir(), reason="datasets not staged")


@pytest.fixture(scope="module")
def drive_model():
    return load_model("dpn-drive")


def test_fov_diameter_is_the_widest_extent_of_a_clipped_disc():
    fov = np.zeros((500, 700), bool)
    fov[disk((250, 350), 300, shape=fov.shape)] = True  # clipped at top and bottom, as cameras do
    assert scale.fov_diameter(fov) == pytest.approx(600, abs=2)
    assert scale.fov_diameter(np.ones((50, 50), bool)) is None  # whole frame: no disc to measure
    assert scale.fov_diameter(np.zeros((50, 50), bool)) is None
    tiny = np.zeros((500, 500), bool)
    tiny[200:220, 200:220] = True
    assert scale.fov_diameter(tiny) is None  # a speck is no field of view


@pytest.mark.parametrize("text, expected", [("auto", "auto"), ("NATIVE", "native"), ("0.5", 0.5), (2, 2.0)])
def test_parse_scale(text, expected):
    assert scale.parse_scale(text) == expected


@pytest.mark.parametrize("bad", ["big", "0", "-1", "100", "nan"])
def test_parse_scale_refuses_nonsense(bad):
    with pytest.raises(ValueError, match="scale"):
        scale.parse_scale(bad)


@pytest.mark.parametrize("bad", [0, -30, 5, 400])
def test_field_angle_must_be_plausible(bad):
    with pytest.raises(ValueError, match="not plausible"):
        scale.check_field_angle(bad)


def test_scale_from_fov_and_field_angle(drive_model):
    fov = np.zeros((1200, 1200), bool)
    fov[disk((600, 600), 540, shape=fov.shape)] = True  # 1080 px over 45 degrees: DRIVE x2
    sc = scale.from_fov(fov, drive_model.card, None)
    assert sc.method == "default-angle" and sc.field_angle == 45
    assert sc.factor == pytest.approx(drive_model.card.scale["working_ppd"] / (1081 / 45), rel=0.01)
    given = scale.from_fov(fov, drive_model.card, 30.0)
    assert given.method == "field-angle" and given.factor == pytest.approx(sc.factor * 30 / 45, rel=1e-6)
    assert "30 deg (given)" in given.describe() and "px/deg" in given.describe()


def test_card_without_scale_falls_back_to_native_with_a_sentence(drive_model):
    card = type(drive_model.card)(name="old", architecture="dpn")
    sc = scale.from_fov(np.pad(np.ones((80, 80), bool), 10), card, None)
    assert sc.factor == 1.0 and sc.method == "fallback" and "records no working scale" in sc.note


def test_implausible_factor_falls_back(drive_model):
    fov = np.zeros((100, 100), bool)
    fov[disk((50, 50), 45, shape=fov.shape)] = True  # 90 px over 45 degrees: x6 would be needed
    sc = scale.from_fov(fov, drive_model.card, None)
    assert sc.factor == 1.0 and sc.method == "fallback" and "outside the plausible" in sc.note


def test_resample_image_keeps_range_and_shape():
    rng = np.random.default_rng(0)
    img = rng.random((101, 77, 3)).astype(np.float32)
    img[0, 0] = 1.0
    for size in ((50, 38), (303, 231)):
        out = scale.resample_image(img, size)
        assert out.shape == (*size, 3) and out.dtype == np.float32
        assert out.min() >= img.min() and out.max() <= 1.0  # never past 1 (as_rgb would read 8-bit)
    mask = np.zeros((100, 100), bool)
    mask[20:60, 30:70] = True
    small = scale.resample_mask(mask, (50, 50))
    assert small.shape == (50, 50) and small.sum() == pytest.approx(400, abs=40)


def test_vessel_calibre_measures_the_thickest_vessels():
    mask = np.zeros((400, 400), bool)
    for i, width in enumerate([3, 3, 5, 9]):  # a few thin vessels and one thick one
        mask[50 + 90 * i : 50 + 90 * i + width, 20:380] = True
    assert vessel_calibre(mask) == pytest.approx(9, abs=1.5)
    assert vessel_calibre(np.zeros((100, 100), bool)) is None  # nothing to measure


def test_segment_native_equals_the_network_pass(drive_model):
    rgb, _, fov = fundus(96, seed=3)
    seg = segment(drive_model, rgb, fov=fov, scale="native", device="cpu", precision="fp32")
    assert seg.scale.method == "native" and seg.scale.factor == 1.0
    assert seg.probability.shape == (96, 96) and seg.probability.dtype == np.float32
    assert not (seg.mask() & ~fov).any()
    assert (seg.mask(0.0) == fov).all()  # threshold 0: every FOV pixel, nothing outside
    summary = seg.summary()
    assert summary["scale"]["method"] == "native" and summary["device"] == "cpu"


def test_segment_gives_a_map_of_the_original_size_at_any_factor(drive_model):
    rgb, _, fov = fundus(120, seed=4)
    for factor in (0.5, 1.7):
        seg = segment(drive_model, rgb, fov=fov, scale=factor, device="cpu", precision="fp32")
        assert seg.probability.shape == (120, 120) and seg.scale.method == "factor"
        assert 0.0 <= seg.probability.min() and seg.probability.max() <= 1.0


def test_segment_without_fov_or_calibre_falls_back_with_a_note(drive_model):
    card = drive_model.card
    loaded = type(drive_model)(
        model=drive_model.model, card=type(card)(**{**card.to_dict(), "scale": {"working_ppd": 12.0}})
    )
    rgb = np.full((64, 64, 3), 0.5, np.float32)  # no dark border, no vessels
    seg = segment(loaded, rgb, device="cpu")
    assert seg.scale.factor == 1.0 and seg.scale.method == "fallback" and seg.scale.note
    assert seg.probability.shape == (64, 64)


def test_fusion_averages_the_working_pass_with_a_finer_one(drive_model):
    rgb, _, fov = fundus(120, seed=5)
    kw = dict(fov=fov, scale=0.8, device="cpu", precision="fp32")
    one = segment(drive_model, rgb, fusion=None, **kw)
    finer = segment(drive_model, rgb, fov=fov, scale=1.2, device="cpu", precision="fp32", fusion="none")
    seen = []
    both = segment(drive_model, rgb, progress=seen.append, fusion=1.5, **kw)
    assert one.scale.fused_factor is None and both.scale.fused_factor == pytest.approx(1.2)
    np.testing.assert_allclose(both.probability, (one.probability + finer.probability) / 2, atol=1e-6)
    assert "averaged with a pass at x1.2" in both.scale.describe() and both.prediction.tiles == 2
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)  # one bar over both passes
    assert both.summary()["scale"]["fused_factor"] == pytest.approx(1.2)


def test_fusion_is_skipped_where_the_finer_image_would_be_too_large(drive_model, monkeypatch):
    monkeypatch.setattr(segmentation, "FUSION_MAX_PIXELS", 100 * 100)
    rgb, _, fov = fundus(96, seed=6)
    seg = segment(drive_model, rgb, fov=fov, scale="native", fusion=1.5, device="cpu", precision="fp32")
    assert seg.scale.fused_factor is None and seg.prediction.tiles == 1


def test_a_guessed_field_angle_hedges_with_a_coarser_pass_too(drive_model, monkeypatch):
    """With the 45 degree guess the working scale can be off either way (a 30 degree camera's
    photograph comes out 1.5x too fine): a third, coarser pass joins the mean; a given angle keeps two."""
    card = drive_model.card
    small = {**card.scale, "fusion": 1.5, "working_ppd": 4.0}  # a small eye at a small scale: a quick test
    fused = type(drive_model)(model=drive_model.model, card=type(card)(**{**card.to_dict(), "scale": small}))
    rgb, _, fov = fundus(160, seed=9)
    sizes = []
    real_predict = segmentation.inference.predict
    monkeypatch.setattr(
        segmentation.inference,
        "predict",
        lambda lm, img, **kw: sizes.append(img.shape[:2]) or real_predict(lm, img, **kw),
    )
    kw = dict(fov=fov, device="cpu", precision="fp32")
    guessed = segment(fused, rgb, **kw)
    f = guessed.scale.factor
    assert guessed.scale.method == "default-angle" and len(sizes) == 3
    assert guessed.scale.fused_factor == pytest.approx(f * 1.5, rel=1e-3)
    assert guessed.scale.fused_coarser == pytest.approx(f / 1.5, rel=1e-3)
    assert [max(s) for s in sizes] == [round(160 * x) for x in (f, f * 1.5, f / 1.5)]
    assert "as the field angle is a guess" in guessed.scale.describe()
    passes = [segment(fused, rgb, scale=x, fusion=None, **kw).probability for x in (f, f * 1.5, f / 1.5)]
    np.testing.assert_allclose(guessed.probability, sum(passes) / 3, atol=1e-6)
    sizes.clear()
    given = segment(fused, rgb, field_angle=45, **kw)
    assert given.scale.method == "field-angle" and given.scale.fused_coarser is None and len(sizes) == 2


def test_fusion_auto_follows_the_model_card(drive_model):
    """dpn-universal (trained across scales) gains from fusion and its card says so; the
    single-dataset models lost AUC with it, so 'auto' gives them one pass."""
    assert card_fusion(load_model("dpn-universal").card) == 1.5
    assert card_fusion(drive_model.card) is None and check_fusion("auto", drive_model.card) is None
    rgb, _, fov = fundus(96, seed=7)
    kw = dict(fov=fov, scale="native", device="cpu", precision="fp32")
    assert segment(drive_model, rgb, **kw).scale.fused_factor is None  # 'auto' is the default
    card = drive_model.card
    fused = type(drive_model)(
        model=drive_model.model, card=type(card)(**{**card.to_dict(), "scale": {**card.scale, "fusion": 1.5}})
    )
    assert segment(fused, rgb, **kw).scale.fused_factor == 1.5


@pytest.mark.parametrize(
    "value, expected", [(None, None), ("none", None), ("1", None), ("1.5", 1.5), (2, 2.0), ("auto", "auto")]
)
def test_check_fusion(value, expected):
    assert check_fusion(value) == expected


@pytest.mark.parametrize("bad", ["0.5", "4", "fine", float("nan")])
def test_check_fusion_refuses_nonsense(bad):
    with pytest.raises(ValueError, match="fusion factor"):
        check_fusion(bad)


@needs_drive
def test_upscaled_drive_image_segments_as_well_as_the_original(drive_model):
    """The rescale check of issue #9 on one image: x2 upscaled, defaults (FOV estimated, 45 degrees)."""
    from sklearn.metrics import roc_auc_score

    from napari_dpn.datasets import load_split

    rgb, gt, fov = load_split("drive", DATASETS).test[0].load()
    one = dict(device="cpu", precision="fp32", fusion=None)  # the scale alone
    native = segment(drive_model, rgb, fov=fov, scale="native", **one)
    big = scale.resample_image(rgb, (rgb.shape[0] * 2, rgb.shape[1] * 2))
    gt2 = np.kron(gt, np.ones((2, 2), bool))
    fov2 = np.kron(fov, np.ones((2, 2), bool))
    auto = segment(drive_model, big, **one)  # the FOV is estimated too
    plain = segment(drive_model, big, scale="native", **one)
    assert auto.scale.method == "default-angle" and auto.scale.factor == pytest.approx(0.5, abs=0.03)
    auc_native = roc_auc_score(gt[fov], native.probability[fov])
    auc_auto = roc_auc_score(gt2[fov2], auto.probability[fov2])
    auc_plain = roc_auc_score(gt2[fov2], plain.probability[fov2])
    assert auc_auto > auc_native - 0.01
    assert auc_plain < auc_auto - 0.02  # without resampling the upscaled photograph is segmented worse


def test_cli_segment_reports_the_scale(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray((fundus(96, seed=1)[0] * 255).astype(np.uint8)).save(photos / "eye.png")
    report = tmp_path / "report.json"
    assert (
        main(
            [
                "segment",
                str(photos),
                "--out",
                str(tmp_path / "out"),
                "--device",
                "cpu",
                "--scale",
                "0.8",
                "--json",
                str(report),
            ]
        )
        == 0
    )
    assert "resampled x0.8 (given); averaged with a pass at x1.2" in capsys.readouterr().out  # fusion by default
    data = json.loads(report.read_text())
    assert data["images"]["eye.png"]["scale"]["factor"] == 0.8
    assert data["images"]["eye.png"]["scale"]["fused_factor"] == pytest.approx(1.2)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--scale", "huge"], "scale must be auto, native, calibre, disc or a factor"),
        (["--field-angle", "500"], "not plausible"),
        (["--field-angle", "wide"], "must be degrees"),
        (["--fusion", "7"], "fusion factor must lie between 1 and 3"),
    ],
)
def test_cli_refuses_bad_scale_arguments(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["segment", str(tmp_path), "--out", str(tmp_path / "out"), *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err
