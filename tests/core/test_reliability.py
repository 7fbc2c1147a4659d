"""Hostile inputs and faults for the core and the CLI (issue #10: nothing a user makes is ever lost or
silently wrong).  Every case checks the one-sentence message and that no user file changed.

The GUI cases are in test_reliability_gui.py.  What these tests hold the code to is written down
in docs/promises.md.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import napari_dpn
from napari_dpn.cli import main
from napari_dpn.errors import InputError, TrainingError, WeightsError
from napari_dpn.image_io import read_image, read_mask
from napari_dpn.model import build_model
from napari_dpn.models import ModelCard, load_model, read_card, save_model
from napari_dpn.outputs import MANIFEST_NAME as MANIFEST
from paths import DATASETS
from paths import REPO as ROOT
from synthetic_fundus import fundus

# ----------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """A private user models folder, and one torch thread (the machine is shared)."""
    monkeypatch.setenv("NAPARI_DPN_MODELS", str(tmp_path / "user-models"))
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def snapshot(root: Path) -> dict:
    """Every file under ``root``: relative path -> (sha256, mtime_ns)."""
    return {
        p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


def unchanged(before: dict, root: Path, new_allowed=()) -> None:
    """No file of ``before`` changed or vanished, and no file appeared except ``new_allowed``."""
    after = snapshot(root)
    for name, state in before.items():
        assert after.get(name) == state, f"{name} was changed or removed"
    extra = set(after) - set(before) - set(new_allowed)
    assert not extra, f"unexpected new files: {sorted(extra)}"


def run(argv, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def error_line(err: str) -> str:
    """The single ``napari-dpn: error:`` line (one sentence, no traceback), without its prefix."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("napari-dpn: error: ")]
    assert len(lines) == 1, err
    assert err.strip().splitlines()[-1] == lines[0]
    text = lines[0][len("napari-dpn: error: ") :]
    assert 10 < len(text) < 500 and "\n" not in text
    return text


def one_sentence(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and 10 < len(text) < 500, text
    return text


def save_photo(path: Path, seed: int = 0, size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = fundus(size, seed=seed)[0]
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path)
    return path


def save_mask(path: Path, mask: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    d = tmp_path / "photos"
    save_photo(d / "eye0.png", 0)
    save_photo(d / "eye1.png", 1)
    return d


SEGMENT = ["--device", "cpu", "--quiet", "--precision", "fp32"]


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)``: nothing can be created in ``folder`` (chmod; as root, whom chmod does
    not stop, ``os.open``/``os.mkdir`` fail there with EACCES as they would for a user)."""
    folders = []
    real_open, real_mkdir = os.open, os.mkdir

    def blocked(path) -> bool:
        p = Path(os.fsdecode(path)).absolute()
        return any(p.parent == f or f in p.parents for f in folders)

    def fake_open(path, flags, *a, **k):
        if flags & os.O_CREAT and blocked(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real_open(path, flags, *a, **k)

    def fake_mkdir(path, *a, **k):
        if blocked(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real_mkdir(path, *a, **k)

    def make(folder: Path) -> Path:
        folder = Path(folder).absolute()
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o555)
        folders.append(folder)
        if os.geteuid() == 0:
            monkeypatch.setattr(os, "open", fake_open)
            monkeypatch.setattr(os, "mkdir", fake_mkdir)
        return folder

    yield make
    for f in folders:
        f.chmod(0o755)


@pytest.fixture
def disk_full(monkeypatch):
    """Every image and weights write fails as on a full disk (ENOSPC)."""

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    monkeypatch.setattr(torch, "save", full)


# ============================================================================= 1. segment never overwrites


def test_segment_keeps_a_correction_saved_from_napari(photos, capsys):
    """`segment FOLDER --out FOLDER` after the napari Save button wrote eye0_vessels.png."""
    correction = save_mask(photos / "eye0_vessels.png", fundus(64, seed=0)[1])
    before = snapshot(photos)
    rc, out, err = run(["segment", photos, "--out", photos, *SEGMENT], capsys)
    assert rc == 0
    assert "1 image(s) segmented" in out and "1 skipped because their outputs exist" in out
    assert err.count("napari-dpn: skipped eye0.png: eye0_vessels.png already exists") == 1
    unchanged(before, photos, new_allowed={"eye1_probability.png", "eye1_vessels.png", "eye1_fov.png", MANIFEST})
    assert not (photos / "eye0_vessels_vessels.png").exists()  # the correction is not a photograph
    assert correction.exists()


@pytest.mark.parametrize("existing", ["eye0_probability.png", "eye0_vessels.png", "eye0_fov.png"])
def test_segment_skips_an_image_if_any_of_its_outputs_exists(photos, tmp_path, capsys, existing):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / existing).write_bytes(b"made by the user")
    before = snapshot(tmp_path)
    rc, out, err = run(["segment", photos, "--out", out_dir, *SEGMENT], capsys)
    assert rc == 0 and "1 image(s) segmented" in out and "1 skipped" in out
    assert f"skipped eye0.png: {existing} already exists" in err
    unchanged(
        before,
        tmp_path,
        new_allowed={f"out/eye1_{k}.png" for k in ("probability", "vessels", "fov")} | {f"out/{MANIFEST}"},
    )


def test_segment_twice_changes_nothing_the_second_time(photos, tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert run(["segment", photos, "--out", out_dir, *SEGMENT], capsys)[0] == 0
    before = snapshot(tmp_path)
    rc, out, err = run(["segment", photos, "--out", out_dir, *SEGMENT], capsys)
    assert rc == 0 and out.startswith("0 image(s) segmented; 2 skipped")
    assert err.count("napari-dpn: skipped") == 2
    unchanged(before, tmp_path)


def test_segment_overwrite_flag_replaces_outputs(photos, capsys):
    (photos / "eye0_vessels.png").write_bytes(b"old")
    rc, out, _ = run(["segment", photos / "eye0.png", "--out", photos, "--overwrite", *SEGMENT], capsys)
    assert rc == 0 and "1 image(s) segmented" in out and "skipped" not in out
    assert read_mask(photos / "eye0_vessels.png").shape == (64, 64)


def test_segment_does_not_replace_an_output_that_appears_during_the_run(photos, tmp_path, capsys, monkeypatch):
    """Saved from napari while the batch runs: kept, and the image counts as skipped."""
    import napari_dpn.inference as inference

    out_dir = tmp_path / "out"
    real = inference.predict

    def predict_then_save(*a, **k):
        result = real(*a, **k)
        if not (out_dir / "eye0_vessels.png").exists():
            (out_dir / "eye0_vessels.png").write_bytes(b"saved meanwhile")
        return result

    monkeypatch.setattr(inference, "predict", predict_then_save)
    rc, out, err = run(["segment", photos / "eye0.png", "--out", out_dir, *SEGMENT], capsys)
    assert rc == 0 and out.startswith("0 image(s) segmented") and "1 skipped" in out
    assert (out_dir / "eye0_vessels.png").read_bytes() == b"saved meanwhile"
    assert sorted(p.name for p in out_dir.iterdir()) == ["eye0_vessels.png", MANIFEST]  # no half set of outputs
    assert "already exists" in err


# ============================================================================= annotations are not photographs

ANNOTATION_NAMES = [
    "eye0_vessels.png",
    "eye0_fov.png",
    "eye0_probability.png",
    "eye0_probability.tif",
    "21_manual1.gif",
    "01_manual2.gif",
    "21_training_mask.gif",
    "Image_01L_1stHO.png",
    "Image_01L_2ndHO.png",
    "im0001.ah.ppm",
    "im0001.vk.ppm",
    "im0001_mask.pgm",
]


@pytest.mark.parametrize("name", ANNOTATION_NAMES)
def test_annotation_and_dataset_label_files_are_never_segmented(tmp_path, capsys, name):
    folder = tmp_path / "in"
    save_photo(folder / "photo.png")
    label = folder / name
    if name.endswith(".tif"):
        import tifffile

        tifffile.imwrite(label, fundus(64)[1].astype(np.float32))
    else:
        Image.fromarray(fundus(64)[1].astype(np.uint8) * 255).save(
            label, format="PPM" if name.endswith(".ppm") else None
        )
    before = snapshot(tmp_path)
    rc, out, err = run(["segment", folder, "--out", tmp_path / "out", *SEGMENT], capsys)
    assert rc == 0 and "1 image(s) segmented" in out
    assert "left out 1 file(s)" in err and name in err
    unchanged(
        before,
        tmp_path,
        new_allowed={f"out/photo_{k}.png" for k in ("probability", "vessels", "fov")} | {f"out/{MANIFEST}"},
    )


def test_an_annotation_named_on_the_command_line_is_left_out(photos, capsys):
    save_mask(photos / "eye0_vessels.png", fundus(64)[1])
    before = snapshot(photos)
    rc, _, err = run(["segment", photos / "eye0_vessels.png", "--out", photos, *SEGMENT], capsys)
    assert rc == 2
    text = error_line(err)
    assert "no photographs found" in text and "left out eye0_vessels.png: it is a vessel annotation" in text
    unchanged(before, photos)


def test_find_pairs_does_not_take_dataset_labels_for_images(tmp_path):
    from napari_dpn.annotations import find_pairs

    save_photo(tmp_path / "Image_01L.png")
    save_mask(tmp_path / "Image_01L_vessels.png", fundus(64)[1])
    save_mask(tmp_path / "Image_01L_1stHO.png", fundus(64)[1])
    save_mask(tmp_path / "Image_01L_1stHO_vessels.png", fundus(64)[1])
    assert [p[0].name for p in find_pairs(tmp_path)] == ["Image_01L.png"]


# ============================================================================= 2. same stem, two images


@pytest.mark.parametrize(
    "names", [("eye.png", "eye.jpg"), ("eye.png", "eye.tif"), ("Eye.png", "eye.jpeg"), ("a/eye.png", "b/eye.png")]
)
def test_two_images_with_one_stem_are_refused_naming_both(tmp_path, capsys, names):
    folder = tmp_path / "in"
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((fundus(64, seed=i)[0] * 255).astype(np.uint8)).save(path)
    inputs = [folder / "a", folder / "b"] if "/" in names[0] else [folder]
    before = snapshot(tmp_path)
    rc, out, err = run(["segment", *inputs, "--out", tmp_path / "out", *SEGMENT], capsys)
    assert rc == 2 and out == ""
    text = error_line(err)
    assert all(Path(n).name in text for n in names) and "eye_vessels.png" in text.lower()
    unchanged(before, tmp_path, new_allowed=set())
    assert not any((tmp_path / "out").glob("*"))


def test_training_folder_with_one_stem_twice_is_refused(tmp_path, capsys):
    folder = tmp_path / "train"
    folder.mkdir()
    rgb, label, fov = fundus(64)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / "eye.png")
    Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / "eye.jpg")
    save_mask(folder / "eye_vessels.png", label)
    before = snapshot(tmp_path)
    rc, _, err = run(["train", "--images", folder, "--out", tmp_path / "models", "--steps", "1"], capsys)
    assert rc == 2
    text = error_line(err)
    assert "eye.jpg" in text and "eye.png" in text and "eye_vessels.png" in text
    unchanged(before, tmp_path)


# ============================================================================= 3. every dataset format reads


def test_imagecodecs_is_a_dependency():
    """DRIVE's TIFFs are LZW-compressed: tifffile needs imagecodecs to decode them."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.replace(" ", "").startswith("imagecodecs") for d in deps)


def _lzw_tiff(tmp_path) -> Path:
    drive = DATASETS / "DRIVE" / "test" / "images" / "01_test.tif"
    if drive.is_file():
        return drive
    pytest.importorskip("imagecodecs")
    import tifffile

    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, (fundus(64)[0] * 255).astype(np.uint8), compression="lzw")
    return path


def test_a_missing_codec_is_named_not_called_corrupt(tmp_path):
    """Without imagecodecs (blocked in a fresh interpreter) the message says what to install."""
    path = _lzw_tiff(tmp_path)
    code = (
        "import sys; sys.modules['imagecodecs'] = None\n"
        "from napari_dpn.image_io import read_image\n"
        "from napari_dpn.errors import InputError\n"
        "try:\n    read_image(sys.argv[1])\n"
        "except InputError as exc:\n    print(exc)\nelse:\n    print('READ')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(napari_dpn.__file__).parents[1])}
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, timeout=120)
    text = res.stdout.strip()
    assert res.returncode == 0 and "\n" not in text, res.stderr
    assert "imagecodecs" in text and "LZW" in text and "pip install imagecodecs" in text
    assert "corrupt" not in text


needs_datasets = pytest.mark.skipif(not DATASETS.is_dir(), reason="../shared/datasets is not staged here")


@needs_datasets
def test_a_real_drive_tiff_reads():
    before = snapshot(DATASETS / "DRIVE" / "test" / "images")
    arr = read_image(DATASETS / "DRIVE" / "test" / "images" / "01_test.tif")
    assert arr.shape == (584, 565, 3) and arr.dtype == np.uint8 and arr.max() > 100
    assert snapshot(DATASETS / "DRIVE" / "test" / "images") == before


# (folder, glob, kind, (H, W)) for every kind of file the staged datasets hold
DATASET_FILES = [
    ("DRIVE/training/images", "*.tif", "rgb", (584, 565)),
    ("DRIVE/test/images", "*.tif", "rgb", (584, 565)),
    ("DRIVE/training/1st_manual", "*.gif", "label", (584, 565)),
    ("DRIVE/test/2nd_manual", "*.gif", "label", (584, 565)),  # palette GIF, greys 3/253
    ("DRIVE/test/mask", "*.gif", "fov", (584, 565)),
    ("STARE/images", "*.ppm", "rgb", (605, 700)),
    ("STARE/labels-ah", "*.ah.ppm", "label", (605, 700)),  # greyscale P5 named .ppm
    ("STARE/labels-vk", "*.vk.ppm", "label", (605, 700)),
    ("STARE/mask", "*.pgm", "fov", (605, 700)),
    ("CHASE_DB1", "Image_??[LR].jpg", "rgb", (960, 999)),
    ("CHASE_DB1", "*_1stHO.png", "label", (960, 999)),  # 1-bit PNG
    ("CHASE_DB1", "*_2ndHO.png", "label", (960, 999)),
    ("AV-WIDE/images", "*.png", "rgb", None),
    ("AV-WIDE/manual", "*.png", "label", None),
]


@needs_datasets
@pytest.mark.parametrize("folder, pattern, kind, shape", DATASET_FILES, ids=[f"{f}/{g}" for f, g, *_ in DATASET_FILES])
def test_every_format_in_the_datasets_reads(folder, pattern, kind, shape):
    files = sorted((DATASETS / folder).glob(pattern))
    if not files:
        pytest.skip(f"no {pattern} in {folder}")
    for path in (files[0], files[-1]):
        if kind == "rgb":
            arr = read_image(path)
            assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8, path
        else:
            arr = read_mask(path)
            fraction = arr.mean()
            assert arr.dtype == bool and (0.02 < fraction < 0.25 if kind == "label" else 0.5 < fraction < 0.9), path
        if shape:
            assert arr.shape[:2] == shape, path


# ============================================================================= 4. the embedded card is the truth


def _saved(tmp_path, name="m", **card) -> Path:
    torch.manual_seed(0)
    return save_model(build_model("dpn"), ModelCard(name=name, architecture="dpn", **card), tmp_path / name)


def _edit_json(path: Path, **changes) -> None:
    side = path.with_suffix(".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), **changes}))


def test_a_sidecar_that_disagrees_is_reported_and_ignored(tmp_path):
    path = _saved(tmp_path, threshold=0.3)
    _edit_json(path, threshold=0.9)
    before = snapshot(tmp_path)
    loaded = load_model(path)
    assert loaded.card.threshold == pytest.approx(0.3)
    assert len(loaded.warnings) == 1 and "threshold" in one_sentence_text(loaded.warnings[0])
    assert read_card(path).threshold == pytest.approx(0.3)  # list_models shows the truth too
    unchanged(before, tmp_path)


def one_sentence_text(text: str) -> str:
    assert "\n" not in text and 10 < len(text) < 400
    return text


def test_weights_copied_over_old_ones_use_their_own_card(tmp_path):
    """New weights over old ones (or a crash between the two writes): the old .json must not rule."""
    old = _saved(tmp_path / "a", name="m", threshold=0.3)
    new = _saved(
        tmp_path / "b",
        name="m",
        threshold=0.7,
        input={"channel_order": "BGR", "scale": 255.0, "mean": [0, 0, 0], "std": [1, 1, 1], "clahe": False},
    )
    old.write_bytes(new.read_bytes())
    loaded = load_model(old)
    assert loaded.card.threshold == pytest.approx(0.7) and loaded.card.input["channel_order"] == "BGR"
    assert any("sha256 differs" in one_sentence_text(w) for w in loaded.warnings)


def test_an_unreadable_sidecar_does_not_stop_the_model(tmp_path):
    path = _saved(tmp_path, threshold=0.4)
    path.with_suffix(".json").write_text("{ not json")
    loaded = load_model(path)
    assert loaded.card.threshold == pytest.approx(0.4)
    assert len(loaded.warnings) == 1 and "m.json" in one_sentence_text(loaded.warnings[0])


def test_an_old_weights_file_without_an_embedded_card_loads_with_a_note(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in build_model("dpn").state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(
        json.dumps(ModelCard(name="old", architecture="dpn", threshold=0.45).to_dict())
    )
    loaded = load_model(path)
    assert loaded.card.threshold == pytest.approx(0.45)
    assert len(loaded.warnings) == 1 and "no model card inside it" in one_sentence_text(loaded.warnings[0])


def test_segment_prints_a_card_mismatch_as_one_warning_line(photos, tmp_path, capsys):
    path = _saved(tmp_path / "models", threshold=0.3)
    _edit_json(path, threshold=0.9)
    before = snapshot(tmp_path / "models")
    rc, out, err = run(["segment", photos / "eye0.png", "--out", tmp_path / "out", "--model", path, *SEGMENT], capsys)
    assert rc == 0 and "threshold 0.300" in out
    warnings = [line for line in err.splitlines() if line.startswith("napari-dpn: warning: ")]
    assert len(warnings) == 1 and "threshold" in warnings[0]
    unchanged(before, tmp_path / "models")


# ============================================================================= 8a. card fields are checked


def _weights_with_card(path: Path, **changes) -> Path:
    from safetensors.torch import save_file

    card = ModelCard(name="bad", architecture="dpn").to_dict()
    for key, value in changes.items():
        if key.startswith("input_"):
            card["input"][key[6:]] = value
        else:
            card[key] = value
    state = {k: v.contiguous() for k, v in build_model("dpn").state_dict().items()}
    save_file(state, str(path), metadata={"napari_dpn_card": json.dumps(card)})
    return path


BAD_CARDS = [
    ({"threshold": "0.5"}, "'threshold'"),
    ({"threshold": 1.5}, "'threshold'"),
    ({"threshold": None}, "'threshold'"),
    ({"input_mean": [0.5, 0.5]}, "'input.mean'"),
    ({"input_std": [0.25, 0.0, 0.25]}, "'input.std'"),
    ({"input_std": "0.25"}, "'input.std'"),
    ({"input_scale": 0}, "'input.scale'"),
    ({"input_channel_order": "GBR"}, "'input.channel_order'"),
    ({"input_clahe": "yes"}, "'input.clahe'"),
    ({"input": "BGR"}, "'input'"),
    ({"name": 5}, "'name'"),
    ({"description": ["x"]}, "'description'"),
]


@pytest.mark.parametrize("changes, field", BAD_CARDS, ids=[m for _, m in BAD_CARDS])
def test_card_fields_of_the_wrong_type_are_named(tmp_path, changes, field):
    path = _weights_with_card(tmp_path / "bad.safetensors", **changes)
    before = snapshot(tmp_path)
    with pytest.raises(WeightsError) as info:
        load_model(path)
    assert field in one_sentence(info.value) and "bad.safetensors" in str(info.value)
    unchanged(before, tmp_path)


def test_a_bad_card_is_one_line_in_the_cli(photos, tmp_path, capsys):
    path = _weights_with_card(tmp_path / "bad.safetensors", input_std=[1, 0, 1])
    before = snapshot(tmp_path)
    rc, _, err = run(["segment", photos, "--out", tmp_path / "out", "--model", path, *SEGMENT], capsys)
    assert rc == 2 and "'input.std' must be a list of 3 numbers above 0" in error_line(err)
    unchanged(before, tmp_path)


# ============================================================================= 5. implausible annotations


def _annotation(case: str):
    rgb, label, fov = fundus(64)
    if case == "all vessel":
        label = np.ones_like(label)
    elif case == "all vessel but five pixels":
        label = fov.copy()
        label[tuple(np.argwhere(fov)[:5].T)] = False
    elif case == "inverted":
        label = fov & ~label
    elif case == "tiny FOV":
        fov = np.zeros_like(fov)
        fov[30:34, 30:35] = True
        label = fov.copy()
        label[30, 30] = False
    elif case == "one vessel pixel":
        label = np.zeros_like(label)
        label[32, 32] = True
    elif case == "all vessel outside a small FOV":
        small = np.zeros_like(fov)
        small[20:44, 20:44] = True
        label = ~small | (label & small)
        fov = small
    return rgb, label, fov


ANNOTATION_CASES = [
    "all vessel",
    "all vessel but five pixels",
    "inverted",
    "tiny FOV",
    "one vessel pixel",
    "all vessel outside a small FOV",
]


@pytest.mark.parametrize("case", ANNOTATION_CASES)
def test_implausible_annotations_are_refused_before_training(case):
    from napari_dpn.training import prepare_pairs

    with pytest.raises(TrainingError) as info:
        prepare_pairs([_annotation(case)])
    text = one_sentence(info.value)
    assert ("FOV" in text) and ("%" in text)


def test_a_real_annotation_passes_the_checks():
    from napari_dpn.training import prepare_pairs

    assert len(prepare_pairs([fundus(64, seed=s) for s in range(3)])) == 3


def test_train_refuses_an_all_vessel_annotation_and_saves_nothing(tmp_path, capsys):
    folder = tmp_path / "train"
    rgb, label, fov = fundus(64)
    save_photo(folder / "eye.png")
    save_mask(folder / "eye_vessels.png", fov)  # every FOV pixel painted
    save_mask(folder / "eye_fov.png", fov)
    before = snapshot(tmp_path)
    rc, _, err = run(
        [
            "train",
            "--images",
            folder,
            "--out",
            tmp_path / "models",
            "--steps",
            "1",
            "--crop",
            "32",
            "--device",
            "cpu",
            "--quiet",
        ],
        capsys,
    )
    assert rc == 2 and "eye: the annotation marks" in error_line(err)
    unchanged(before, tmp_path, new_allowed=set())
    assert not list((tmp_path / "models").glob("*.safetensors"))


# ============================================================================= 6. models are never silently replaced


@pytest.fixture
def pairs(tmp_path) -> Path:
    folder = tmp_path / "train"
    for s in range(2):
        rgb, label, fov = fundus(64, seed=s)
        save_photo(folder / f"eye{s}.png", seed=s)
        save_mask(folder / f"eye{s}_vessels.png", label)
        save_mask(folder / f"eye{s}_fov.png", fov)
    return folder


TRAIN_BASE = ["--steps", "1", "--crop", "32", "--device", "cpu", "--quiet", "--amp", "off"]
TRAIN = [*TRAIN_BASE, "--threads", "1"]


def test_two_runs_in_the_same_second_get_two_models(pairs, tmp_path, capsys, monkeypatch):
    import datetime as real

    import napari_dpn.train_cli as train_cli

    class Frozen(real.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2030, 1, 2, 3, 4, 5)

    monkeypatch.setattr(train_cli, "datetime", Frozen)
    models = tmp_path / "models"
    assert run(["train", "--images", pairs, "--out", models, *TRAIN], capsys)[0] == 0
    first = snapshot(models)
    rc, out, _ = run(["train", "--images", pairs, "--out", models, *TRAIN], capsys)
    assert rc == 0
    unchanged(first, models, new_allowed=set(snapshot(models)) - set(first))
    names = sorted(p.stem for p in models.glob("*.safetensors"))
    # issue #20 item 3: --images fine-tunes the default model, whose name starts the default name
    assert names == ["dpn-universal-train-20300102-030405", "dpn-universal-train-20300102-030405-2"]
    assert not list(models.glob(".*lock"))


def test_train_refuses_an_existing_model_name(pairs, tmp_path, capsys):
    models = tmp_path / "models"
    _saved(models, name="mine", threshold=0.3)
    before = snapshot(tmp_path)
    rc, _, err = run(["train", "--images", pairs, "--out", models, "--name", "mine", *TRAIN], capsys)
    assert rc == 2
    text = error_line(err)
    assert "'mine' already exists" in text and "--overwrite" in text
    unchanged(before, tmp_path)


def test_train_overwrite_replaces_an_existing_model(pairs, tmp_path, capsys):
    models = tmp_path / "models"
    _saved(models, name="mine", threshold=0.3)
    rc, out, _ = run(["train", "--images", pairs, "--out", models, "--name", "mine", "--overwrite", *TRAIN], capsys)
    assert rc == 0 and "saved mine" in out
    assert load_model(models / "mine.safetensors").card.training["steps"] == 1


def test_train_refuses_to_restart_over_an_earlier_runs_checkpoint(pairs, tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    (models / "mine.ckpt.pt").write_bytes(b"an earlier run")
    before = snapshot(tmp_path)
    rc, _, err = run(["train", "--images", pairs, "--out", models, "--name", "mine", *TRAIN], capsys)
    assert rc == 2 and "--resume" in error_line(err)
    unchanged(before, tmp_path)


def test_a_resumed_run_replaces_only_its_own_model(pairs, tmp_path, capsys):
    """A run continued after its time limit saves over the model it saved before (and nothing else)."""
    models = tmp_path / "models"
    assert run(["train", "--images", pairs, "--out", models, "--name", "r", *TRAIN], capsys)[0] == 0
    ckpt = models / "r.ckpt.pt"
    rc, out, _ = run(["train", "--images", pairs, "--resume", ckpt, "--name", "r", *TRAIN, "--steps", "2"], capsys)
    assert rc == 0 and "saved r (2 steps" in out
    before = snapshot(tmp_path)
    rc, _, err = run(["train", "--images", pairs, "--resume", ckpt, "--name", "other", *TRAIN, "--steps", "3"], capsys)
    assert rc == 2 and "keeps its name" in error_line(err)
    unchanged(before, tmp_path)


def test_train_refuses_a_shipped_name_in_the_user_models_folder(pairs, tmp_path, capsys):
    before = snapshot(tmp_path)
    rc, _, err = run(["train", "--images", pairs, "--name", "dpn-drive", *TRAIN], capsys)
    assert rc == 2 and "'dpn-drive' is a shipped model" in error_line(err)
    unchanged(before, tmp_path)


BAD_NAMES = [
    "../evil",
    "sub/evil",
    "/tmp/evil",
    ".hidden",
    "with space",
    "evil.safetensors",
    "..",
    "a\\b",
    "x" * 101,
    "",
]


@pytest.mark.parametrize(
    "name",
    BAD_NAMES,
    ids=["dotdot", "slash", "absolute", "hidden", "space", "suffix", "dotdot-only", "backslash", "long", "empty"],
)
def test_train_name_must_be_a_plain_name(pairs, tmp_path, capsys, name):
    before = snapshot(tmp_path)
    rc, _, err = run(["train", "--images", pairs, "--out", tmp_path / "models", "--name", name, *TRAIN], capsys)
    assert rc == 2 and "name" in error_line(err)
    unchanged(before, tmp_path)
    assert not list(tmp_path.rglob("*.safetensors"))


@pytest.mark.parametrize(
    "name, ok",
    [
        ("my-camera", True),
        ("v1.2+ft_3", True),
        ("dpn-release-drive", False),
        ("DPN-Drive", False),
        ("a b", False),
        ("-x", False),
    ],
)
def test_validate_model_name_is_the_widget_rule(name, ok):
    from napari_dpn.models import validate_model_name

    if ok:
        assert validate_model_name(f"  {name} ") == name
    else:
        with pytest.raises(InputError) as info:
            validate_model_name(name)
        one_sentence(info.value)


def _caffemodel(tmp_path) -> Path:
    from test_caffe_import import _caffemodel as encode

    from napari_dpn.model import DPNRelease

    torch.manual_seed(0)
    src = tmp_path / "release.caffemodel"
    src.write_bytes(encode(DPNRelease().state_dict()))
    return src


@pytest.mark.parametrize("existing", ["out.safetensors", "out.json"])
def test_import_caffe_never_replaces_existing_files(tmp_path, capsys, existing):
    src = _caffemodel(tmp_path)
    dst = tmp_path / "w"
    dst.mkdir()
    (dst / existing).write_text('{"an": "unrelated card"}')
    before = snapshot(tmp_path)
    rc, _, err = run(["import-caffe", src, dst / "out.safetensors"], capsys)
    assert rc == 2
    text = error_line(err)
    assert existing in text and "--overwrite" in text
    unchanged(before, tmp_path)


def test_import_caffe_overwrite_replaces(tmp_path, capsys):
    src = _caffemodel(tmp_path)
    (tmp_path / "out.json").write_text("{}")
    rc, out, _ = run(["import-caffe", src, tmp_path / "out.safetensors", "--overwrite"], capsys)
    assert rc == 0 and load_model(tmp_path / "out.safetensors").card.architecture == "dpn-release"


# ============================================================================= 7. file-system errors: one sentence


def test_segment_out_that_is_a_file(photos, tmp_path, capsys):
    target = tmp_path / "results"
    target.write_text("my notes")
    before = snapshot(tmp_path)
    rc, _, err = run(["segment", photos, "--out", target, *SEGMENT], capsys)
    assert rc == 2 and "is a file, not a folder" in error_line(err)
    unchanged(before, tmp_path)


def test_segment_into_a_read_only_folder(photos, tmp_path, capsys, read_only):
    out_dir = read_only(tmp_path / "out")
    before = snapshot(tmp_path)
    rc, _, err = run(["segment", photos, "--out", out_dir, *SEGMENT], capsys)
    assert rc == 2 and "permission denied" in error_line(err)
    unchanged(before, tmp_path)


def test_segment_on_a_full_disk(photos, tmp_path, capsys, disk_full):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    rc, _, err = run(["segment", photos, "--out", out_dir, *SEGMENT], capsys)
    assert rc == 2 and "the disk is full" in error_line(err)
    unchanged(before, tmp_path)  # no half-written or temporary file left behind


def test_segment_does_not_leave_part_of_an_images_outputs(photos, tmp_path, capsys, monkeypatch):
    """The vessel mask write fails after the probability map was written: that map is removed."""
    import napari_dpn.image_io as image_io

    real = image_io.write_mask

    def fail(path, *a, **k):
        if Path(path).name.endswith("_vessels.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *a, **k)

    monkeypatch.setattr(image_io, "write_mask", fail)
    rc, _, err = run(["segment", photos / "eye0.png", "--out", tmp_path / "out", *SEGMENT], capsys)
    assert rc == 2 and error_line(err)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.fixture
def fake_drive(tmp_path) -> Path:
    from test_cli import _fake_drive

    root = tmp_path / "data"
    _fake_drive(root, n=1, size=64)
    return root


@pytest.mark.parametrize("where", ["folder", "under a file", "read-only folder"])
def test_evaluate_unwritable_json_fails_before_evaluating(fake_drive, tmp_path, capsys, read_only, monkeypatch, where):
    import napari_dpn.evaluation as evaluation

    monkeypatch.setattr(evaluation, "evaluate_model", lambda *a, **k: pytest.fail("evaluated first"))
    if where == "folder":
        target = tmp_path / "results"
        target.mkdir()
    elif where == "under a file":
        (tmp_path / "notes").write_text("x")
        target = tmp_path / "notes" / "r.json"
    else:
        target = read_only(tmp_path / "ro") / "r.json"
    before = snapshot(tmp_path)
    rc, out, err = run(
        ["evaluate", "--dataset", "drive", "--root", fake_drive, "--device", "cpu", "--json", target, "--quiet"], capsys
    )
    assert rc == 2 and out == ""
    assert any(k in error_line(err) for k in ("is a folder", "is a file", "permission denied"))
    unchanged(before, tmp_path)


def test_train_out_that_is_a_file(pairs, tmp_path, capsys):
    (tmp_path / "models").write_text("x")
    before = snapshot(tmp_path)
    rc, _, err = run(["train", "--images", pairs, "--out", tmp_path / "models", *TRAIN], capsys)
    assert rc == 2 and "is a file, not a folder" in error_line(err)
    unchanged(before, tmp_path)


def test_train_checks_its_folder_before_step_one(pairs, tmp_path, capsys, read_only, monkeypatch):
    import napari_dpn.training as training

    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("training started"))
    out_dir = read_only(tmp_path / "models")
    before = snapshot(tmp_path)
    rc, _, err = run(["train", "--images", pairs, "--out", out_dir, *TRAIN], capsys)
    assert rc == 2 and "permission denied" in error_line(err)
    unchanged(before, tmp_path)


def test_train_on_a_full_disk_ends_in_one_line(pairs, tmp_path, capsys, disk_full):
    rc, _, err = run(["train", "--images", pairs, "--out", tmp_path / "models", *TRAIN], capsys)
    assert rc == 2 and "disk is full" in error_line(err)
    assert [p.name for p in (tmp_path / "models").iterdir()] == []


def test_import_caffe_into_a_read_only_folder(tmp_path, capsys, read_only):
    src = _caffemodel(tmp_path)
    out_dir = read_only(tmp_path / "ro")
    before = snapshot(tmp_path)
    rc, _, err = run(["import-caffe", src, out_dir / "w.safetensors"], capsys)
    assert rc == 2 and "permission denied" in error_line(err)
    unchanged(before, tmp_path)


def test_a_stray_os_error_is_still_one_line(photos, tmp_path, capsys, monkeypatch):
    import napari_dpn.cohort as cohort

    def boom(*a, **k):
        raise OSError(errno.EIO, "Input/output error", str(photos / "eye0.png"))

    monkeypatch.setattr(cohort, "plan_outputs", boom)
    rc, _, err = run(["segment", photos, "--out", tmp_path / "out", *SEGMENT], capsys)
    assert rc == 2 and "Input/output error" in error_line(err)


# ============================================================================= 8b. rough edges


@pytest.mark.parametrize("device", ["cpu:abc", "gpu", "cuda:x", "cpu:7", "cpu:-1"])
def test_bad_devices_are_one_line(photos, tmp_path, capsys, device):
    before = snapshot(tmp_path)
    rc, _, err = run(["segment", photos, "--out", tmp_path / "out", "--device", device, "--quiet"], capsys)
    assert rc == 2 and "device" in error_line(err)
    unchanged(before, tmp_path)


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--threads", "-1"),
        ("--threads", "0"),
        ("--weight-decay", "-1"),
        ("--checkpoint-every", "-5"),
        ("--val-every", "-1"),
        ("--log-every", "-1"),
        ("--lr", "nan"),
        ("--lr", "inf"),
        ("--seed", "-1"),
        ("--crop", "100000"),
    ],
)
def test_bad_training_numbers_are_one_line(pairs, tmp_path, capsys, flag, value):
    before = snapshot(tmp_path)
    rc, _, err = run(["train", "--images", pairs, "--out", tmp_path / "models", *TRAIN_BASE, flag, value], capsys)
    assert rc == 2 and value in error_line(err)
    unchanged(before, tmp_path)


def test_greyscale_photographs_are_accepted_with_a_note(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    grey = (fundus(64)[0][..., 1] * 255).astype(np.uint8)
    Image.fromarray(grey).save(folder / "grey.png")
    save_photo(folder / "colour.png")
    rc, out, err = run(["segment", folder, "--out", tmp_path / "out", *SEGMENT], capsys)
    assert rc == 0 and "2 image(s) segmented" in out
    notes = [line for line in err.splitlines() if "greyscale" in line]
    assert len(notes) == 1 and "grey.png" in notes[0] and "colour.png" not in notes[0]
    assert "lower accuracy" in notes[0]


def _fake_flat(root: Path, dataset: str) -> Path:
    """Two tiny images of CHASE_DB1 (no FOV masks) or STARE without its mask folder."""
    for i, stem in enumerate(["Image_01L", "Image_01R"] if dataset == "chase" else ["im0001", "im0002"]):
        rgb, label, _ = fundus(64, seed=i)
        img = Image.fromarray((rgb * 255).astype(np.uint8))
        if dataset == "chase":
            base = root / "CHASE_DB1"
            base.mkdir(parents=True, exist_ok=True)
            img.save(base / f"{stem}.jpg", quality=95)
            save_mask(base / f"{stem}_1stHO.png", label)
        else:
            base = root / "STARE"
            (base / "images").mkdir(parents=True, exist_ok=True)
            (base / "labels-ah").mkdir(exist_ok=True)
            img.save(base / "images" / f"{stem}.ppm")
            Image.fromarray(label.astype(np.uint8) * 255).save(base / "labels-ah" / f"{stem}.ah.ppm", format="PPM")
    return root


@pytest.mark.parametrize("dataset", ["chase", "stare"])
def test_evaluate_says_when_the_fov_was_estimated(tmp_path, capsys, dataset):
    root = _fake_flat(tmp_path / "data", dataset)
    before = snapshot(root)
    rc, out, _ = run(
        [
            "evaluate",
            "--dataset",
            dataset,
            "--root",
            root,
            "--split",
            "all",
            "--device",
            "cpu",
            "--no-train-threshold",
            "--json",
            tmp_path / "r.json",
            "--quiet",
        ],
        capsys,
    )
    assert rc == 0
    line = next(line for line in out.splitlines() if line.startswith("FOV:"))
    assert "estimated" in line and "all 2 images" in line
    meta = json.loads((tmp_path / "r.json").read_text())["meta"]
    assert "estimated" in meta["fov"] and len(meta["fov_estimated"]) == 2
    unchanged(before, root)


def test_evaluate_with_official_masks_says_nothing_about_estimates(fake_drive, tmp_path, capsys):
    rc, out, _ = run(
        [
            "evaluate",
            "--dataset",
            "drive",
            "--root",
            fake_drive,
            "--device",
            "cpu",
            "--no-train-threshold",
            "--json",
            tmp_path / "r.json",
            "--quiet",
        ],
        capsys,
    )
    assert rc == 0 and "FOV:" not in out
    assert json.loads((tmp_path / "r.json").read_text())["meta"]["fov"] == "official FOV masks"


def _release_layout(root: Path, dataset: str) -> Path:
    if dataset == "drive":
        from test_cli import _fake_drive

        _fake_drive(root, n=1, size=64)
        return root / "DRIVE"
    if dataset == "drive-training":
        from test_cli import _fake_drive

        _fake_drive(root, n=1, size=64)
        return root / "DRIVE" / "training"
    _fake_flat(root, dataset)
    return root / ("CHASE_DB1" if dataset == "chase" else "STARE")


@pytest.mark.parametrize(
    "dataset, key", [("drive", "drive"), ("drive-training", "drive"), ("chase", "chase"), ("stare", "stare")]
)
def test_train_on_a_raw_dataset_folder_suggests_dataset(tmp_path, capsys, dataset, key):
    folder = _release_layout(tmp_path / "data", dataset)
    before = snapshot(tmp_path)
    rc, _, err = run(["train", "--images", folder, "--out", tmp_path / "models", *TRAIN], capsys)
    assert rc == 2
    text = error_line(err)
    assert "IMAGE_vessels.png" in text and f"--dataset {key} --root" in text
    unchanged(before, tmp_path)


def test_train_on_a_folder_of_sub_folders_says_so(tmp_path, capsys):
    save_photo(tmp_path / "set" / "images" / "a.png")
    save_mask(tmp_path / "set" / "manual" / "a_vessels.png", fundus(64)[1])
    rc, _, err = run(["train", "--images", tmp_path / "set", "--out", tmp_path / "models", *TRAIN], capsys)
    assert rc == 2 and "sub-folders are not searched" in error_line(err)


# ============================================================================= the promises page


def test_the_promises_page_exists_and_names_the_refusals():
    text = (ROOT / "docs" / "promises.md").read_text()
    for words in ("--overwrite", "atomic", "## In napari", "refuse"):
        assert words in text
