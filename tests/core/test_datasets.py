"""datasets: loaders and the paper's splits, on tiny fake copies of the release layouts."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_dpn.datasets import DATASETS, leave_one_out, list_samples, load_split
from napari_dpn.errors import InputError

STARE_IDS = [
    "0001",
    "0002",
    "0003",
    "0004",
    "0005",
    "0044",
    "0077",
    "0081",
    "0082",
    "0139",
    "0162",
    "0163",
    "0235",
    "0236",
    "0239",
    "0240",
    "0255",
    "0291",
    "0319",
    "0324",
]
CHASE_IDS = [f"{n:02d}{side}" for n in range(1, 15) for side in "LR"]
H, W = 24, 20


def disc_image():
    """A small RGB 'fundus': bright disc on a black border."""
    yy, xx = np.mgrid[:H, :W]
    disc = np.hypot(yy - H / 2, xx - W / 2) < 9
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[disc] = (200, 100, 40)
    rgb[disc & (xx == W // 2)] = (90, 40, 20)  # a "vessel"
    return rgb, disc


def save_grey(path, mask, fmt=None):
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, format=fmt)


@pytest.fixture
def root(tmp_path):
    """tmp_path/DRIVE (2 + 2 images), STARE (20), CHASE_DB1 (28), tiny images."""
    rgb, disc = disc_image()
    vessel = rgb[..., 0] == 90
    for part, numbers in (("training", (21, 22)), ("test", (1, 2))):
        base = tmp_path / "DRIVE" / part
        for sub in ("images", "1st_manual", "mask"):
            (base / sub).mkdir(parents=True)
        for n in numbers:
            tifffile.imwrite(base / "images" / f"{n:02d}_{part}.tif", rgb)
            save_grey(base / "1st_manual" / f"{n:02d}_manual1.gif", vessel)
            save_grey(base / "mask" / f"{n:02d}_{part}_mask.gif", disc)
    stare = tmp_path / "STARE"
    for sub in ("images", "labels-ah", "mask"):
        (stare / sub).mkdir(parents=True)
    for i in reversed(STARE_IDS):  # creation order must not matter
        Image.fromarray(rgb).save(stare / "images" / f"im{i}.ppm")
        save_grey(stare / "labels-ah" / f"im{i}.ah.ppm", vessel, "PPM")  # P5 named .ppm
        save_grey(stare / "mask" / f"im{i}_mask.pgm", disc)
    chase = tmp_path / "CHASE_DB1"
    chase.mkdir()
    for i in CHASE_IDS:
        Image.fromarray(rgb).save(chase / f"Image_{i}.jpg", quality=95)
        Image.fromarray(vessel).convert("1").save(chase / f"Image_{i}_1stHO.png")
    return tmp_path


def names(samples):
    return [s.name for s in samples]


def test_drive_default_split_and_load(root):
    split = load_split("drive", root)
    assert names(split.train) == ["21_training", "22_training"]
    assert names(split.test) == ["01_test", "02_test"]
    rgb, gt, fov = split.test[0].load()
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.float32
    assert gt.dtype == bool and fov.dtype == bool and gt.any() and fov.any()
    np.testing.assert_array_equal(fov, disc_image()[1])
    assert len(load_split("DRIVE", root, "all").test) == 4


def test_dataset_folder_itself_is_accepted(root):
    assert names(load_split("drive", root / "DRIVE").train) == ["21_training", "22_training"]
    assert len(load_split("chase", root / "CHASE_DB1").test) == 8


def test_stare_splits(root):
    split = load_split("STARE", root)  # default 10/10 in sorted ID order
    assert names(split.train) == [f"im{i}" for i in STARE_IDS[:10]]
    assert names(split.test) == [f"im{i}" for i in STARE_IDS[10:]]
    loo = load_split("stare", root, "loo-6")
    assert names(loo.test) == ["im0044"] and len(loo.train) == 19
    assert names(load_split("stare", root, "loo-im0324").test) == ["im0324"]
    folds = list(leave_one_out("stare", root))
    assert len(folds) == 20 and [name for name, _ in folds] == [f"im{i}" for i in STARE_IDS]
    everything = load_split("stare", root, "all")
    assert everything.train == [] and len(everything.test) == 20 == len(everything.all)
    _, gt, fov = split.test[0].load()  # P5 label named .ppm
    assert gt.any() and fov.any()


def test_chase_splits_and_estimated_fov(root):
    for alias in ("chase", "CHASE_DB1", "chasedb1"):
        split = load_split(alias, root)
        assert len(split.train) == 20 and len(split.test) == 8
    assert names(split.train)[-1] == "Image_10R" and names(split.test)[0] == "Image_11L"
    half = load_split("chase", root, "14/14")
    assert names(half.train)[-1] == "Image_07R" and len(half.test) == 14
    sample = split.test[0]
    assert sample.fov_path is None
    _, _, fov = sample.load()
    disc = disc_image()[1]
    iou = np.count_nonzero(fov & disc) / np.count_nonzero(fov | disc)
    assert iou > 0.8  # estimated; tiny JPEG, so only roughly the disc


def test_metadata():
    assert DATASETS["drive"].crop_size == 512 and DATASETS["chase"].crop_size == 736
    assert DATASETS["stare"].clahe and not DATASETS["drive"].clahe
    assert [DATASETS[k].iterations for k in ("drive", "stare", "chase")] == [100_000, 30_000, 100_000]


def test_missing_stare_masks_are_estimated(root):
    for mask in (root / "STARE" / "mask").iterdir():
        mask.unlink()
    sample = load_split("stare", root).test[0]
    assert sample.fov_path is None and sample.load()[2].any()


@pytest.mark.parametrize(
    "args, message",
    [
        (("drive", "nowhere"), "does not exist"),
        (("hrf", "."), "Unknown dataset"),
    ],
)
def test_bad_names_and_roots(tmp_path, args, message):
    dataset, sub = args
    with pytest.raises(InputError, match=message):
        load_split(dataset, tmp_path / sub)


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(InputError, match="No DRIVE folder"):
        load_split("drive", tmp_path)


def test_missing_label_is_named(root):
    (root / "DRIVE" / "test" / "1st_manual" / "02_manual1.gif").unlink()
    with pytest.raises(InputError, match="02_manual1"):
        load_split("drive", root)


def test_bad_splits(root):
    with pytest.raises(InputError, match="needs 21 STARE images but .* has 20"):
        load_split("stare", root, "15/6")
    with pytest.raises(InputError, match="Unknown split"):
        load_split("stare", root, "random")
    with pytest.raises(InputError, match="Leave-one-out"):
        load_split("stare", root, "loo-21")


def test_mismatched_label_size(root):
    save_grey(root / "CHASE_DB1" / "Image_11L_1stHO.png", np.zeros((H + 1, W), bool))
    with pytest.raises(InputError, match="ground truth"):
        load_split("chase", root).test[0].load()


def test_list_samples_order(root):
    assert names(list_samples("drive", root)) == ["21_training", "22_training", "01_test", "02_test"]
