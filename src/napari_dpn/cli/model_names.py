"""Where ``train`` saves: a model name free in the output folder (or one the user may replace),
held by a lock file with our process id while the run writes there."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError, OutputExistsError
from ..files import pid_alive
from ..models import model_files


def _take_lock(lock: Path) -> bool:
    """Create ``lock`` holding our process id; False if a live process holds it (a stale lock, left
    by a killed run, is taken over)."""
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and pid_alive(pid):
                return False
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def _lock_path(out: Path, name: str) -> Path:
    return out / f".{name}.training.lock"


def reserve_default_name(out: Path, stem: str) -> tuple[str, Path]:
    """The first of STEM, STEM-2, ... with no model, card, checkpoint or running run in ``out``."""
    for n in range(1, 1000):
        name = stem if n == 1 else f"{stem}-{n}"
        if any(p.exists() for p in (*model_files(out, name), out / f"{name}.ckpt.pt")):
            continue
        lock = _lock_path(out, name)
        if _take_lock(lock):
            return name, lock
    raise InputError(f"cannot find a free model name {stem}-N in {out}; give one with --name")


def claim_name(out: Path, name: str, args) -> tuple[Path, bool]:
    """Check that ``name`` may be written to ``out`` and take its lock: (lock, overwrite for the engine).

    Refuses (before step 1) an existing model or card of that name, and an earlier run's checkpoint
    that is not the one being resumed, unless --overwrite; resuming replaces the model the same run
    saved before (a run continued after its time limit)."""
    weights, card = model_files(out, name)
    ckpt = out / f"{name}.ckpt.pt"
    resuming_here = bool(args.resume) and Path(args.resume).expanduser().resolve() == ckpt.resolve()
    overwrite = bool(args.overwrite)
    if not overwrite:
        existing = [p for p in (weights, card) if p.exists()]
        if existing and not resuming_here:
            raise OutputExistsError(
                f"a model named '{name}' already exists in {out} ({existing[0].name}); "
                "choose another --name, or pass --overwrite to replace it"
            )
        if ckpt.exists() and not resuming_here:
            raise OutputExistsError(
                f"{ckpt} holds an earlier run named '{name}'; continue it with --resume "
                f"{ckpt}, choose another --name, or pass --overwrite to start again"
            )
        overwrite = resuming_here and bool(existing)
    lock = _lock_path(out, name)
    if not _take_lock(lock):
        raise InputError(f"another training run named '{name}' is writing to {out} (if none is, delete {lock})")
    return lock, overwrite
