"""The command line: outputs on disk, the evaluation table and JSON, and one-line errors."""

import json

import numpy as np
import pytest
from PIL import Image

from napari_dpn.cli import main
from napari_dpn.image_io import read_image, read_mask
from napari_dpn.models import DEFAULT_MODEL
from synthetic_fundus import fundus


def _save_rgb(path, rgb):
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path)


pytestmark = pytest.mark.photos(count=2)


@pytest.fixture
def photos(photos):
    """conftest's photographs, two of them, and a file that is not an image."""
    (photos / "notes.txt").write_text("not an image")
    return photos


def test_segment_folder_writes_probability_vessels_and_fov(photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["segment", str(photos), "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    summary = capsys.readouterr().out
    assert f"2 image(s) segmented with {DEFAULT_MODEL}" in summary and "s per image" in summary
    for stem in ("eye0", "eye1"):
        prob = read_image(out / f"{stem}_probability.png")
        assert prob.dtype == np.uint16 and prob.shape == (96, 96)
        vessels, fov = read_mask(out / f"{stem}_vessels.png"), read_mask(out / f"{stem}_fov.png")
        assert vessels.shape == fov.shape == (96, 96)
        assert not (vessels & ~fov).any()  # no vessels outside the field of view
        assert 0.3 < fov.mean() < 0.9


def test_segment_threshold_and_tiff_probability(photos, tmp_path):
    out = tmp_path / "out"
    img = photos / "eye0.png"
    assert (
        main(
            [
                "segment",
                str(img),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--threshold",
                "0.99",
                "--prob-format",
                "tiff",
                "--quiet",
            ]
        )
        == 0
    )
    prob = read_image(out / "eye0_probability.tif")
    assert prob.dtype == np.float32
    vessels = read_mask(out / "eye0_vessels.png")
    fov = read_mask(out / "eye0_fov.png")
    np.testing.assert_array_equal(vessels, (prob >= 0.99) & fov)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["segment", "/no/such/file.png", "--out", "x"], "no such file or folder"),
        (["segment", "{img}", "--out", "{out}", "--model", "nope"], "no model named 'nope'"),
        (["segment", "{img}", "--out", "{out}", "--threshold", "1.5"], "--threshold must lie between 0 and 1"),
        (["segment", "{img}", "--out", "{out}", "--device", "cuda"], "not available"),
        (["evaluate", "--dataset", "drive", "--root", "/no/such/root"], "/no/such/root does not exist"),
        (["evaluate", "--dataset", "hrf", "--root", "{out}"], "Unknown dataset"),
        (["import-caffe", "{img}", "{out}/x.safetensors"], "caffemodel"),
    ],
)
def test_errors_are_one_line_and_exit_2(argv, message, photos, tmp_path, capsys):
    import torch

    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv = [a.format(img=photos / "eye0.png", out=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("napari-dpn: error: ")
    assert message in err[0]


def test_bad_image_in_a_batch_is_skipped_not_fatal(photos, tmp_path, capsys):
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert main(["segment", str(photos), "--out", str(tmp_path / "o"), "--device", "cpu", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "skipped broken.png" in captured.err and "2 image(s) segmented" in captured.out


def _fake_drive(root, n=2, size=96):
    for split, first in (("training", 21), ("test", 1)):
        for k in range(n):
            i = first + k
            rgb, label, fov = fundus(size, seed=i)
            base = root / "DRIVE" / split
            for sub in ("images", "1st_manual", "mask"):
                (base / sub).mkdir(parents=True, exist_ok=True)
            suffix = "training" if split == "training" else "test"
            Image.fromarray((rgb * 255).astype(np.uint8)).save(base / "images" / f"{i:02d}_{suffix}.tif")
            Image.fromarray(label.astype(np.uint8) * 255).save(base / "1st_manual" / f"{i:02d}_manual1.gif")
            Image.fromarray(fov.astype(np.uint8) * 255).save(base / "mask" / f"{i:02d}_{suffix}_mask.gif")


def test_evaluate_prints_the_table_and_writes_json(tmp_path, capsys):
    _fake_drive(tmp_path)
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "evaluate",
                "--dataset",
                "drive",
                "--root",
                str(tmp_path),
                "--device",
                "cpu",
                "--json",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    for rule in ("youden", "max_acc", "train_threshold"):
        assert rule in text
    res = json.loads(out.read_text())
    pooled = res["pooled"]
    assert 0.5 < pooled["auc"] <= 1.0
    for rule in ("youden", "max_acc", "train_threshold"):
        assert set(pooled[rule]) >= {"threshold", "se", "sp", "acc", "f1"}
    assert len(res["per_image"]) == 2 and res["meta"]["n_train"] == 2
    assert "training images" in res["train_threshold_source"]


def test_models_lists_the_shipped_model(capsys):
    assert main(["models"]) == 0
    assert "dpn-release-drive" in capsys.readouterr().out
