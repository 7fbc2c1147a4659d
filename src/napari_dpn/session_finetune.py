"""Fine-tuning a model on a folder session's corrections (Qt-free): the new model's free name
and the run at the base model's working scale, recorded in the session with the images it saw."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import InputError
from .session_file import now_stamp


def finetune_scale(angle) -> dict:
    """The folder's field-of-view setting as fine-tune settings: train at the scale it segments at."""
    return {"scale": "native"} if angle == "native" else {"field_angle": angle}


def free_model_name(stem: str, out_dir=None, first: int = 1) -> str:
    """``<stem>-ft<N>`` with the first N from ``first`` that no model has: no weights, card or
    checkpoint of that name in ``out_dir`` (default: the user models folder) and no listed or
    shipped model called so.  Two folders called ``photos`` must never share a model (the save
    itself refuses to replace one, so a name taken meanwhile is not lost either)."""
    from .models import WEIGHTS_SUFFIX, list_models, shipped_model_names, user_models_dir

    stem = re.sub(r"[^A-Za-z0-9._+-]+", "-", stem)[:80]
    stem = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", stem) or "session"  # a model name's rule
    out = Path(out_dir) if out_dir else user_models_dir()
    taken = {c.name.lower() for c in list_models()} | shipped_model_names()
    n = max(1, int(first))
    while True:
        name = f"{stem}-ft{n}"
        files = (out / f"{name}{s}" for s in (WEIGHTS_SUFFIX, ".json", ".ckpt.pt"))
        if name.lower() not in taken and not any(f.exists() for f in files):
            return name
        n += 1


def finetune_session(
    session,
    init,
    steps: int = 200,
    name: str | None = None,
    device: str = "auto",
    out_dir=None,
    should_stop=None,
    callback=None,
    field_angle: float | str | None = None,
):
    """Fine-tune ``init`` (a model name or path) on the saved annotations at its working scale
    (``field_angle``: the camera's, as given to segment; None: the folder's setting, else the
    45 degree guess; 'native': no resampling, as the folder was segmented); the new
    model is saved with its card in the user models folder (or ``out_dir``) and recorded with
    the images it saw.  Returns the engine's ``TrainResult``."""
    from .models import user_models_dir
    from .training import finetune_config, train

    pairs = session.training_pairs()
    if not pairs:
        raise InputError("No saved annotation to fine-tune on: correct and save an image first.")
    seen = [session.entries[i].name for i in session.corrected_indices if session.vessels_path(i).is_file()]
    side = min(min(p[0].shape[:2]) for p in pairs)
    name = name or free_model_name(session.folder.name, out_dir, len(session.models) + 1)
    # The shared fine-tune settings: the base model's working scale (as segment resamples), its
    # fusion carried over, the shipped threshold rule (max accuracy), lr 1e-4.
    config = finetune_config(
        steps=int(steps),
        crop=min(512, side // 16 * 16),
        **finetune_scale(session.field_angle if field_angle is None else field_angle),
        device=device,
        name=name,
        checkpoint_every=max(1, int(steps)),
    )
    out = Path(out_dir) if out_dir else user_models_dir()
    out.mkdir(parents=True, exist_ok=True)
    result = train(
        config,
        pairs,
        None,
        init=init,
        out_dir=out,
        callback=callback,
        should_stop=should_stop,
        description=f"fine-tuning '{name}' on {len(pairs)} image(s)",
        overwrite=False,  # never replace a model: a name taken meanwhile becomes <name>-2
    )
    if result.model_path is not None:
        _record(session, result, init, seen)
    return result


def _record(session, result, init, seen: list[str]) -> None:
    """Add the saved model to the session's list (the name it was saved under, its base and
    the images it saw) and write the session file."""
    with session.lock:
        session.models.append(
            {
                "name": result.card.name,
                "path": str(result.model_path),
                "sha256": result.card.sha256,
                "base": str(init),
                "images": seen,
                "steps": result.steps,
                "at": now_stamp(),
            }
        )
        session.write()
