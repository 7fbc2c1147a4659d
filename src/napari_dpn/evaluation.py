"""Run a model over dataset samples and score it with the paper's protocol."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from . import layouts, metrics
from .models import LoadedModel
from .segmentation import segment

if TYPE_CHECKING:
    import torch


def _field_angle(sample, field_angle):
    """'dataset': the sample's dataset's field angle (its metadata); None: unknown; or degrees."""
    if field_angle != "dataset":
        return field_angle
    from .datasets import DATASETS

    return DATASETS[sample.dataset].field_angle if getattr(sample, "dataset", None) in DATASETS else None


def fov_note(samples: Sequence) -> str | None:
    """One sentence saying for which samples the FOV was estimated (no official mask), else None."""
    estimated = [s.name for s in samples if getattr(s, "fov_source", "estimated") == "estimated"]
    if not estimated:
        return None
    datasets = {getattr(s, "dataset", "") for s in samples}
    layout = layouts.LAYOUTS.get(next(iter(datasets))) if len(datasets) == 1 else None
    shipped = layout is None or layout.fov_stem is not None  # CHASE_DB1 ships none
    why = (
        "no FOV mask file was found for them"
        if shipped or layout is None
        else f"{layout.name} has no official FOV masks"
    )
    which = (
        f"all {len(samples)} images"
        if len(estimated) == len(samples)
        else f"{len(estimated)} of {len(samples)} images ({', '.join(estimated[:3])}{', ...' if len(estimated) > 3 else ''})"
    )
    return f"the FOV was estimated from the image for {which}: {why}, so the metrics are not the official ones"


def predict_samples(
    loaded: LoadedModel,
    samples: Sequence,
    device: str | torch.device = "auto",
    on_image: Callable[[str, float], None] | None = None,
    precision: str = "fp32",
    scale="native",
    field_angle="dataset",
    scales: list | None = None,
    fusion=None,
):
    """(probabilities, ground truths, FOVs, names) for dataset samples; each sample's ``Scale``
    is appended to ``scales`` when given."""
    probs, gts, fovs, names = [], [], [], []
    for sample in samples:
        rgb, gt, fov = sample.load()
        seg = segment(
            loaded,
            rgb,
            fov=fov,
            scale=scale,
            field_angle=_field_angle(sample, field_angle),
            device=device,
            precision=precision,
            fusion=fusion,
        )
        probs.append(seg.probability)
        gts.append(gt)
        fovs.append(fov)
        names.append(sample.name)
        if scales is not None:
            scales.append(seg.scale)
        if on_image:
            on_image(sample.name, seg.prediction.seconds)
    return probs, gts, fovs, names


def evaluate_model(
    loaded: LoadedModel,
    test: Sequence,
    train: Sequence = (),
    device: str | torch.device = "auto",
    on_image: Callable[[str, float], None] | None = None,
    precision: str = "fp32",
    scale="native",
    field_angle="dataset",
    fusion=None,
) -> dict:
    """The paper's metrics on ``test`` (fp32 by default, so that reported numbers do not depend
    on whether the CPU has bf16 units).

    Rule (a) takes its threshold from ``train``: the accuracy-maximising point on the training
    images, i.e. the honest counterpart of rule (c), which picks that point on the test images
    themselves.  Without training images it uses the model card's recommended threshold.

    ``scale``: 'native' (the paper's protocol), 'auto' or a factor (``segmentation.segment``);
    ``field_angle``: 'dataset' (the dataset's known field angle), None (unknown: estimated) or degrees;
    ``fusion``: None (one pass, the paper's protocol) or ``segment``'s two-scale factor.  The result's ``scale`` lists what each test image was resampled by, and why.

    Parameters
    ----------
    loaded : LoadedModel
        From :func:`napari_dpn.load_model`.
    test, train : sequence of datasets.Sample
        The images to score, and the images rule (a) takes its threshold from; anything with a
        ``name`` and a ``load()`` giving (rgb, ground truth, FOV) will do.
    device, on_image, precision, scale, field_angle, fusion
        As above; ``on_image(name, seconds)`` is called after each image.

    Returns
    -------
    dict
        ``pooled`` (AUC, accuracy, sensitivity, specificity... per threshold rule), ``per_image``,
        ``per_image_summary``, ``roc``, ``scale`` and ``train_threshold_source``.

    Examples
    --------
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> from napari_dpn import evaluate, load_model
    >>> yy, xx = np.mgrid[:64, :64]
    >>> fov = (yy - 32) ** 2 + (xx - 32) ** 2 < 30**2
    >>> rgb = np.where(fov[..., None], np.float32([0.8, 0.4, 0.2]), np.float32(0))
    >>> truth = np.zeros((64, 64), bool)
    >>> truth[30:33, 4:60] = True
    >>> rgb[truth] *= 0.5
    >>> sample = SimpleNamespace(name="eye", load=lambda: (rgb, truth, fov))  # as a datasets.Sample
    >>> result = evaluate(load_model("dpn-release-drive"), [sample], device="cpu")
    >>> sorted(result)
    ['per_image', 'per_image_summary', 'pooled', 'roc', 'scale', 'train_threshold_source']
    >>> 0 <= result["pooled"]["auc"] <= 1
    True
    """
    threshold_source = "model card"
    train_threshold = float(loaded.card.threshold)
    if len(train):
        tp, tg, tf, _ = predict_samples(loaded, train, device, on_image, precision, scale, field_angle, fusion=fusion)
        train_threshold = metrics.choose_train_threshold(tp, tg, tf, rule="max_acc")
        threshold_source = f"accuracy-maximising point on the {len(train)} training images"
    scales: list = []
    probs, gts, fovs, names = predict_samples(
        loaded, test, device, on_image, precision, scale, field_angle, scales, fusion
    )
    result = metrics.evaluate(probs, gts, fovs, names=names, train_threshold=train_threshold)
    result["train_threshold_source"] = threshold_source
    result["scale"] = {
        "mode": str(scale),
        "field_angle": field_angle,
        "fusion": fusion,
        "per_image": {n: s.to_dict() for n, s in zip(names, scales)},
    }
    return result
