"""What a finished run saves: its model card (the training record, the working scale) and the
weights beside it, never over a model that appeared meanwhile unless the run may overwrite."""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import OutputError, OutputExistsError
from ..models import ModelCard, save_model
from ..scale import fov_diameter
from ..segmentation import vessel_calibre
from .events import MessageEvent
from .validation import predict_pairs


def scale_block(run, threshold: float) -> dict:
    """The card's ``scale``: the working scale the images were resampled to (``working_ppd`` of
    the dataset run, or the base model's for a fine-tune at its scale; else the base model's,
    inherited), the base's two-scale fusion when the new model works at the base's scale, and
    the network's own thickest-vessel calibre there, measured on the training images with a
    circular FOV (the reference of the calibre scale estimate)."""

    base = dict((run.base_card or {}).get("scale") or {})
    ppd = run.config.working_ppd or run.working_ppd or base.get("working_ppd")
    if not ppd:
        return {}
    disc = [p for p in run.train if fov_diameter(p.fov) is not None][:8] or run.train[:8]
    calibres = [
        c
        for p, prob in zip(disc, predict_pairs(run, disc))
        if (c := vessel_calibre(prob >= threshold, p.fov)) is not None
    ]
    if run.config.working_ppd:
        how = f"training images resampled to {ppd:g} px/deg"
    elif run.working_ppd:
        how = (
            f"training images resampled to {ppd:g} px/deg (the working scale of "
            f"{base.get('name') or run.base_card.get('name')}) as segment resamples photographs"
        )
    else:
        how = f"inherited from {base.get('name') or (run.base_card or {}).get('name', 'the base model')}"
    block = {
        "working_ppd": float(ppd),
        "trained_ppd": float(ppd),
        "source": how,
        "vessel_calibre_px": round(float(np.mean(calibres)), 3) if calibres else None,
        "vessel_calibre_rule": f"95th percentile of the skeleton width of the map at the card's threshold, "
        f"mean over {len(calibres)} training images",
    }
    guessed = [p.name for p in run.train if p.scale and p.scale["method"] == "default-angle"]
    if run.working_ppd and guessed and base.get("vessel_calibre_px"):
        # Images scaled with the 45 degree guess are at 12 px/deg only if the guess is right: their
        # calibre is no reference for the calibre estimate; the base's, measured at a known scale, is.
        block["vessel_calibre_px"] = base["vessel_calibre_px"]
        block["vessel_calibre_rule"] = (
            f"inherited from {run.base_card.get('name')} ({len(guessed)} training image(s) were scaled "
            "with the 45 degree field-angle guess, so their own calibre is not at a known scale)"
        )
    if base.get("fusion") is not None and math.isclose(float(ppd), float(base.get("working_ppd") or 0)):
        # The same scale as the base: its measured two-scale setting holds for the new model too.
        block["fusion"] = base["fusion"]
        src = base.get("fusion_source")
        block["fusion_source"] = f"inherited from {run.base_card.get('name')}" + (f": {src}" if src else "")
    return block


def save_model_of(run, card) -> Path:
    """Save the model as ``<name>.safetensors``; without ``overwrite`` an existing model of that
    name (one that appeared while this run trained) is kept and this one gets ``<name>-2``..."""

    base, n = run.name, 1
    while True:
        try:
            return save_model(run.model, card, run.out_dir / f"{card.name}.safetensors", overwrite=run.overwrite)
        except OutputExistsError:
            n += 1
            card.name = f"{base}-{n}"
            run.emit(
                MessageEvent(
                    f"a model named {base} appeared in {run.out_dir} during training; "
                    f"kept it and saving this one as {card.name}"
                )
            )
        except OutputError as exc:  # a full disk (errno-based, in atomic_write)
            raise OutputError(
                f"the model was not saved: {str(exc).rstrip('.')}; its weights are in the checkpoint "
                f"{run.ckpt_path} (step {run.step}): free some space and save them with "
                f"napari-dpn train --resume {run.ckpt_path} (or Resume in the Fine-tune widget)"
            ) from None


def make_card(run, after: dict | None, threshold: float, rule: str):

    cfg = run.config
    base = run.base_card or {}
    data = run.description or f"{len(run.train)} image(s): " + ", ".join(p.name for p in run.train[:10])
    metrics = dict(after or {})
    if after is not None:
        metrics["dataset"] = f"{len(run.val)} validation image(s)"
        metrics["before"] = run.metrics_before
    training = {
        "base_model": base.get("name"),
        "data": data,
        "n_images": len(run.train),
        "n_validation": len(run.val),
        "steps": run.step,
        "seconds": round(run.seconds, 1),
        "device": str(run.device),
        "settings": dataclasses.asdict(cfg),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "final_loss": float(np.mean(run.losses[-20:])) if run.losses else None,
        "steps_planned": cfg.steps,
        "stopped_early": run.stopped_early,
        "validation_history": run.history,
        "lr_changes": run.lr_changes,
    }
    if run.working_ppd:
        training["image_scales"] = [  # what the network saw: each image at the working scale
            {
                "name": p.name,
                "factor": round(float(p.scale["factor"]), 4),
                "trained_shape": list(p.label.shape),
                "how": p.scale["description"],
            }
            for p in run.train + run.val
            if p.scale
        ]
    averaged = run.weights_averaged()
    if averaged:
        training["weights_averaged_over_steps"] = averaged
    what = f"fine-tuned from {base['name']}" if base.get("name") else "trained from scratch"
    return ModelCard(
        name=run.name,
        architecture=run.arch,
        description=f"{run.arch} {what} with napari-dpn on {data} ({run.step} steps"
        + (f" of the {cfg.steps} planned: stopped by its time limit)" if run.stopped_early else ")")
        + (f"; weights: the mean of the checkpoints at steps {averaged}" if averaged else ""),
        input=dict(run.input),
        threshold=float(threshold),
        threshold_rule=rule,
        base_model=base.get("name"),
        training=training,
        metrics=metrics,
        licence=base.get("licence", ""),
        attribution=base.get("attribution", ""),
    )
