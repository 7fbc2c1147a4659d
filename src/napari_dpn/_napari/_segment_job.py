"""The Segment widget's background job and the checks before it (no Qt).

:func:`image_data` checks the chosen layer on the GUI thread (cheap checks only);
:func:`segment_job` converts, loads the model (cached in the state's ``models``) and segments in
a napari worker thread, and never raises: what went wrong comes back as a sentence in
:class:`~._segment_state.Outcome`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from napari.layers import Image, Labels

from napari_dpn.errors import InputError
from napari_dpn.messages import sentence

from ._segment_state import NO_IMAGE_MESSAGE, Outcome, looks_like_annotation


def image_data(layer) -> np.ndarray:
    """The layer's pixels as they are (converted to float in the worker), or InputError
    with a sentence for the user.  Only cheap checks here: this runs on the GUI thread."""
    if layer is None:
        raise InputError(NO_IMAGE_MESSAGE)
    if isinstance(layer, Labels):
        raise InputError(
            f"'{layer.name}' is a labels layer (a mask); choose the fundus photograph, an image layer, to segment."
        )
    if not isinstance(layer, Image):
        raise InputError(f"'{layer.name}' is a {type(layer).__name__.lower()} layer; choose an image layer to segment.")
    data = layer.data[0] if layer.multiscale else layer.data
    data = np.asarray(data)
    if data.ndim - (1 if layer.rgb else 0) != 2:
        raise InputError(
            f"'{layer.name}' is a {data.ndim}-D stack {tuple(data.shape)}; DPN segments one 2-D photograph at a time."
        )
    if looks_like_annotation(layer):
        raise InputError(
            f"'{layer.name}' is an annotation (a mask), not a photograph; open "
            "it with the 'DPN retinal vessels' reader to get a labels layer, "
            "and choose the photograph to segment."
        )
    return data


def load_cached(models: dict, spec: str):
    """Load (and cache in ``models``) a model; runs in the worker thread."""
    from napari_dpn.models import load_model, resolve_model_path

    path = resolve_model_path(spec)
    key = (str(path), path.stat().st_mtime_ns)
    if key not in models:
        models[key] = load_model(path, device="cpu")
    return models[key]


@dataclass
class Request:
    """One run as asked for on the GUI thread: what the worker needs."""

    run: int
    layer: object
    fov_layer: object
    spec: str
    device: str
    clahe: bool
    field: object  # the camera's field angle, None (estimated) or 'native'
    fused: bool  # the two-scale fusion
    data: np.ndarray
    fov: np.ndarray | None


def segment_job(req: Request, models: dict, progress, should_stop) -> Outcome:
    """Background work: convert, load, segment at the model's scale (``segmentation.segment``:
    FOV, scale, network, map back), threshold.  Never raises."""
    out = Outcome(run=req.run, layer=req.layer, fov_layer=req.fov_layer)
    try:
        return _segment(req, models, progress, should_stop, out)
    except Exception as exc:  # noqa: BLE001 - shown as a notification, never a traceback
        if should_stop() and not isinstance(exc, MemoryError):
            return dataclasses.replace(out, cancelled=True)
        oom = f"Out of memory on {req.device}: choose 'cpu' as device or a smaller image."
        return dataclasses.replace(out, error=sentence(exc, doing="Segmentation", out_of_memory=oom))


def _segment(req: Request, models: dict, progress, should_stop, out: Outcome) -> Outcome:
    from napari_dpn.image_io import as_rgb  # in the worker: not imported while the widget docks
    from napari_dpn.scale import DEFAULT_FUSION, card_fusion
    from napari_dpn.segmentation import segment

    rgb = as_rgb(req.data)
    loaded = load_cached(models, req.spec)
    import sklearn.metrics  # noqa: F401 - here, not on the GUI thread: the comparison that follows needs it

    card = loaded.card
    if bool(card.input.get("clahe")) != req.clahe:
        card = dataclasses.replace(card, input={**card.input, "clahe": req.clahe})
        loaded = dataclasses.replace(loaded, card=card)
    if should_stop():
        return dataclasses.replace(out, cancelled=True)
    seg = segment(
        loaded,
        rgb,
        fov=req.fov,
        scale="native" if req.field == "native" else "auto",
        field_angle=req.field if isinstance(req.field, float) else None,
        fusion=(card_fusion(card) or DEFAULT_FUSION) if req.fused else None,
        device=req.device,
        progress=progress,
        should_stop=should_stop,
    )
    if should_stop():
        return dataclasses.replace(out, cancelled=True)
    return dataclasses.replace(
        out,
        prediction=seg.prediction,
        prob=seg.probability,
        fov=seg.fov,
        mask=seg.mask(),
        threshold=seg.threshold,
        card=card,
        model_label=card.name,
        scale=seg.scale,
    )
