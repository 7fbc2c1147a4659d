"""What the promise tests (tests/core/test_promises_*.py) share: file snapshots, the CLI run, the
one-sentence checks, and small synthetic photographs, masks and weights.  The promises themselves
are written in docs/promises.md."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from napari_dpn.cli import main
from napari_dpn.model import build_model
from napari_dpn.models import ModelCard, save_model
from synthetic_fundus import fundus


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


SEGMENT = ["--device", "cpu", "--quiet", "--precision", "fp32"]
TRAIN_BASE = ["--steps", "1", "--crop", "32", "--device", "cpu", "--quiet", "--amp", "off"]
TRAIN = [*TRAIN_BASE, "--threads", "1"]


def _caffemodel(tmp_path) -> Path:
    from test_caffe_import import _caffemodel as encode

    from napari_dpn.model import DPNRelease

    torch.manual_seed(0)
    src = tmp_path / "release.caffemodel"
    src.write_bytes(encode(DPNRelease().state_dict()))
    return src


def _saved(tmp_path, name="m", **card) -> Path:
    torch.manual_seed(0)
    return save_model(build_model("dpn"), ModelCard(name=name, architecture="dpn", **card), tmp_path / name)
