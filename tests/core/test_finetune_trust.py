"""Issue #20 items 2, 3, 4, 15 and the training full-disk / checkpoint items, driven as a user
drives them: ``napari-dpn train`` through ``cli.main``, ``Session.finetune``, a real small tmpfs."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_dpn.cli import main
from napari_dpn.models import DEFAULT_MODEL, load_model
from synthetic_fundus import fundus
from widget_setup import save_random_model

WORKING_PPD = 3.0  # a base model working at 3 px/deg: a 128-px synthetic fundus (FOV 115 px) is x1.17
SMALL = ["--crop", "48", "--device", "cpu", "--quiet", "--amp", "off", "--threads", "1"]


def run(argv, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("napari-dpn: error: ")]
    assert len(lines) == 1, err
    return lines[0][len("napari-dpn: error: ") :]


def save_pair(folder: Path, stem: str, size: int, seed: int = 0, label_name=None, fov=True) -> None:
    """A synthetic photograph ``stem.png`` of ``size`` px with its label (and FOV) saved beside it."""
    rgb, label, disc = fundus(size, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / f"{stem}.png")
    Image.fromarray(label.astype(np.uint8) * 255).save(folder / (label_name or f"{stem}_vessels.png"))
    if fov:
        Image.fromarray(disc.astype(np.uint8) * 255).save(folder / f"{stem}_fov.png")


@pytest.fixture
def base(tmp_path) -> Path:
    """A small base model whose card has a working scale, two-scale fusion and the shipped rule."""
    return save_random_model(
        tmp_path / "base",
        name="base-ft",
        threshold=0.5,
        threshold_rule="accuracy-maximising point on the 20 training images",
        scale={"working_ppd": WORKING_PPD, "trained_ppd": WORKING_PPD, "vessel_calibre_px": 2.0, "fusion": 1.5},
    )


@pytest.fixture
def seen(monkeypatch):
    """The shapes of the images the trainer cut its training views from."""
    from napari_dpn import augment

    shapes = []
    real = augment.offline_views

    def spy(rgb, label, fov, **kw):
        shapes.append(label.shape)
        return real(rgb, label, fov, **kw)

    monkeypatch.setattr(augment, "offline_views", spy)
    return shapes


# ----------------------------------------------------------------- item 2: the working scale


@pytest.mark.parametrize("upscale", [1, 2])
def test_cli_finetune_trains_at_the_base_models_working_scale_and_keeps_its_card(tmp_path, capsys, base, seen, upscale):
    """A photograph at twice the resolution is trained on at the same working-scale size, and the
    new card's scale, fusion and threshold rule are the base's."""
    folder = tmp_path / f"x{upscale}"
    save_pair(folder, "eye", 128 * upscale)
    rc, out, err = run(
        ["train", "--images", folder, "--init", base, "--steps", "2", "--out", tmp_path / "m", "--name", "ft", *SMALL],
        capsys,
    )
    assert rc == 0, err
    # 128 px * 45 deg / 115 px FOV = x1.17 of 128 px at 3 px/deg: 150 px, whatever the photograph's size.
    expected = round(128 * WORKING_PPD / (115.0 / 45.0))
    assert seen and all(abs(s[0] - expected) <= 2 for s in seen), (seen, expected)
    card = load_model(tmp_path / "m" / "ft.safetensors").card
    assert card.scale["working_ppd"] == WORKING_PPD and card.scale["trained_ppd"] == WORKING_PPD
    assert card.scale["fusion"] == 1.5 and "base-ft" in card.scale["fusion_source"]
    assert "resampled" in card.scale["source"]
    # Scaled with the 45 degree guess: the calibre reference stays the base's, measured at a known scale.
    assert card.scale["vessel_calibre_px"] == 2.0 and "inherited from base-ft" in card.scale["vessel_calibre_rule"]
    (scale,) = card.training["image_scales"]
    assert abs(scale["trained_shape"][0] - expected) <= 2 and scale["factor"] == pytest.approx(
        expected / (128 * upscale), rel=0.02
    )
    assert card.threshold_rule.startswith("accuracy-maximising point on the 1 training images")
    assert card.training["settings"]["scale"] == "auto"


def test_native_scale_is_still_available(tmp_path, capsys, base, seen):
    folder = tmp_path / "x2"
    save_pair(folder, "eye", 256)
    argv = ["train", "--images", folder, "--init", base, "--steps", "1", "--out", tmp_path / "m", "--name", "n"]
    rc, _, err = run([*argv, "--scale", "native", *SMALL], capsys)
    assert rc == 0, err
    assert seen == [(256, 256)]


def test_session_finetune_trains_at_the_working_scale_and_keeps_the_card(tmp_path, base, seen):
    from napari_dpn.session import Session

    folder = tmp_path / "photos"
    save_pair(folder, "eye", 256)
    session = Session.open(folder)
    result = session.finetune(str(base), steps=2, name="sess-ft", device="cpu", out_dir=tmp_path / "m")
    assert seen and all(abs(s[0] - 150) <= 2 for s in seen), seen
    card = load_model(result.model_path).card
    assert card.scale["working_ppd"] == WORKING_PPD and card.scale["fusion"] == 1.5
    assert card.threshold_rule.startswith("accuracy-maximising point")
    assert card.training["settings"]["scale"] == "auto" and card.training["settings"]["lr"] == 1e-4


def test_engine_before_and_after_are_at_each_models_own_threshold(tmp_path, base):
    """Before: the base card's threshold; after: exactly the new card's (item 4)."""
    from napari_dpn.training import finetune_config, train

    pairs = [fundus(128, seed=s) for s in range(2)]
    val = [fundus(128, seed=s) for s in (7, 8)]
    cfg = finetune_config(steps=2, crop=48, device="cpu", name="t", checkpoint_every=0)
    result = train(cfg, pairs, val, init=str(base), out_dir=tmp_path)
    assert result.metrics_before["threshold"] == pytest.approx(0.5)
    assert "base-ft" in result.metrics_before["at"]
    assert result.metrics_after["threshold"] == pytest.approx(result.card.threshold)
    assert result.card.threshold_rule.startswith("accuracy-maximising point on the 2 validation images")


# ----------------------------------------------------------------- item 3: the default start


def test_train_images_without_init_fine_tunes_the_default_model(tmp_path, capsys):
    folder = tmp_path / "photos"
    save_pair(folder, "eye", 64)
    argv = ["train", "--images", folder, "--steps", "1", "--out", tmp_path / "m", *SMALL]
    rc, out, err = run([*argv, "--name", "default"], capsys)
    assert rc == 0, err
    card = load_model(tmp_path / "m" / "default.safetensors").card
    assert card.base_model == DEFAULT_MODEL
    rc, _, err = run([*argv, "--name", "scratch", "--init", "none"], capsys)
    assert rc == 0, err
    assert load_model(tmp_path / "m" / "scratch.safetensors").card.base_model is None


def test_train_help_says_how_to_start_from_scratch(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "'none' for a fresh network" in text and "default model" in text


# ----------------------------------------------------------------- item 15: DRIVE names


def _drive_like(folder: Path, labels: Path, numbers=(21, 22)) -> None:
    for n in numbers:
        rgb, label, disc = fundus(64, seed=n)
        folder.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / f"{n}_training.tif")
        Image.fromarray(label.astype(np.uint8) * 255).save(labels / f"{n}_manual1.gif")


def test_drive_style_labels_are_paired_by_their_number(tmp_path, capsys):
    images, labels = tmp_path / "images", tmp_path / "1st_manual"
    _drive_like(images, labels)
    argv = ["train", "--images", images, "--labels", labels, "--init", "none", "--steps", "1"]
    rc, out, err = run([*argv, "--out", tmp_path / "m", "--name", "d", *SMALL], capsys)
    assert rc == 0, err
    assert "2 training" in err
    card = load_model(tmp_path / "m" / "d.safetensors").card
    assert card.training["n_images"] == 2


def test_drive_style_labels_in_the_photographs_folder_are_paired_too(tmp_path):
    from napari_dpn.annotations import find_pairs

    _drive_like(tmp_path, tmp_path)
    rgb, _, disc = fundus(64, seed=21)
    Image.fromarray(disc.astype(np.uint8) * 255).save(tmp_path / "21_training_mask.gif")
    pairs = {img.name: (lab.name, fov and fov.name) for img, lab, fov in find_pairs(tmp_path)}
    assert pairs == {
        "21_training.tif": ("21_manual1.gif", "21_training_mask.gif"),
        "22_training.tif": ("22_manual1.gif", None),
    }


def test_two_labels_of_one_number_are_not_guessed_and_the_message_says_how_to_name(tmp_path, capsys):
    images, labels = tmp_path / "images", tmp_path / "labels"
    _drive_like(images, labels, numbers=(21,))
    Image.open(labels / "21_manual1.gif").save(labels / "21_manual2.gif")
    argv = ["train", "--images", images, "--labels", labels, "--steps", "1", "--out", tmp_path / "m", *SMALL]
    rc, _, err = run(argv, capsys)
    assert rc == 2
    text = error_line(err)
    assert "IMAGE_vessels.png" in text and "21_manual1.gif" in text


# ----------------------------------------------------------------- full disk (a real tmpfs)


@contextlib.contextmanager
def tmpfs(path: Path, size: int):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def pairs_folder(tmp_path) -> Path:
    folder = tmp_path / "photos"
    for s in range(2):
        save_pair(folder, f"eye{s}", 64, seed=s)
    return folder


def tiny(base: Path) -> list:
    """A two-step fine-tune of the small base (``--init`` works the same before and after #20)."""
    return ["--init", base, "--steps", "2", *SMALL]


def test_a_full_disk_at_a_checkpoint_is_one_sentence(tmp_path, capsys, pairs_folder, base):
    with tmpfs(tmp_path / "full", 200 * 1024) as disk:
        argv = ["train", "--images", pairs_folder, "--out", disk, "--name", "f", "--checkpoint-every", "1", *tiny(base)]
        rc, _, err = run(argv, capsys)
        assert rc == 2
        text = error_line(err)
        assert "training stopped at step 1" in text and "disk is full" in text
        assert not [p for p in disk.iterdir() if p.name.endswith((".pt", ".safetensors", ".tmp.pt"))]


def test_a_full_disk_at_the_final_save_says_how_to_resume(tmp_path, capsys, pairs_folder, base):
    # The sizes of this run's checkpoint and model, measured on a roomy disk.
    roomy = tmp_path / "roomy"
    argv = ["train", "--images", pairs_folder, "--name", "f", "--checkpoint-every", "0", *tiny(base)]
    assert run([*argv, "--out", roomy], capsys)[0] == 0
    ckpt, model = (roomy / "f.ckpt.pt").stat().st_size, (roomy / "f.safetensors").stat().st_size
    size = (ckpt // 4096 + 1) * 4096 + 8192 + model // 2  # room for the checkpoint, not the model
    with tmpfs(tmp_path / "full", size) as disk:
        rc, _, err = run([*argv, "--out", disk], capsys)
        assert rc == 2
        text = error_line(err)
        assert "the model was not saved" in text and "disk is full" in text
        assert f"--resume {disk / 'f.ckpt.pt'}" in text
        assert torch.load(disk / "f.ckpt.pt", weights_only=True)["step"] == 2  # the weights are kept
        assert not list(disk.glob(".*tmp*"))


# ----------------------------------------------------------------- checkpoints: newer or malformed


@pytest.fixture
def checkpoint(tmp_path, capsys, pairs_folder, base) -> Path:
    argv = ["train", "--images", pairs_folder, "--name", "c", "--out", tmp_path / "m", "--checkpoint-every", "0"]
    assert run([*argv, *tiny(base)], capsys)[0] == 0
    return tmp_path / "m" / "c.ckpt.pt"


def _spoil(ck: dict, how: str) -> dict:
    if how == "newer":
        ck["format"] = "napari-dpn-checkpoint/7"
    elif how == "step":
        ck["step"] = "two"
    elif how == "unknown-setting":
        ck["config"]["quantum_annealing"] = True
    elif how == "bad-setting":
        ck["config"]["lr"] = "fast"
    elif how == "weights":
        ck["model"] = {k: v[..., :1] if v.ndim else v for k, v in ck["model"].items()}
    elif how == "optimizer":
        ck["optimizer"] = {"state": {}, "param_groups": [{"params": [0]}]}
    elif how == "rng":
        ck["torch_rng"] = torch.zeros(3)
    return ck


@pytest.mark.parametrize(
    "how, expected",
    [
        ("newer", "written by a newer napari-dpn"),
        ("step", "its step is 'two'"),
        ("unknown-setting", "quantum_annealing, unknown to this version"),
        ("bad-setting", "its settings are not valid"),
        ("weights", "its weights do not fit"),
        ("optimizer", "its optimiser or random state does not fit"),
        ("rng", "its random-number state is not a byte tensor"),
    ],
)
def test_a_newer_or_malformed_checkpoint_is_refused_in_one_sentence(
    tmp_path, capsys, pairs_folder, checkpoint, how, expected
):
    ck = torch.load(checkpoint, weights_only=True)
    torch.save(_spoil(ck, how), checkpoint)
    argv = ["train", "--images", pairs_folder, "--resume", checkpoint, "--steps", "3", *SMALL]
    rc, _, err = run(argv, capsys)
    assert rc == 2
    assert expected in error_line(err)
