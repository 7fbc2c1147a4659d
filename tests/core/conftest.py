"""Fixtures of the promise tests (test_promises_*.py): unwritable folders, a full disk, training
pairs and a small fake DRIVE."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from promise_helpers import save_mask, save_photo
from synthetic_fundus import fundus


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


@pytest.fixture
def pairs(tmp_path) -> Path:
    folder = tmp_path / "train"
    for s in range(2):
        rgb, label, fov = fundus(64, seed=s)
        save_photo(folder / f"eye{s}.png", seed=s)
        save_mask(folder / f"eye{s}_vessels.png", label)
        save_mask(folder / f"eye{s}_fov.png", fov)
    return folder


@pytest.fixture
def fake_drive(tmp_path) -> Path:
    from test_cli import _fake_drive

    root = tmp_path / "data"
    _fake_drive(root, n=1, size=64)
    return root
