"""Run a model over dataset samples and score it with the paper's protocol."""
from __future__ import annotations

from collections.abc import Callable, Sequence

from . import metrics
from .inference import predict
from .models import LoadedModel


def fov_note(samples: Sequence) -> str | None:
    """One sentence saying for which samples the FOV was estimated (no official mask), else None."""
    estimated = [s.name for s in samples if getattr(s, "fov_path", None) is None]
    if not estimated:
        return None
    datasets = {getattr(s, "dataset", "") for s in samples}
    why = ("CHASE_DB1 has no official FOV masks" if datasets == {"chase"}
           else "no FOV mask file was found for them")
    which = (f"all {len(samples)} images" if len(estimated) == len(samples)
             else f"{len(estimated)} of {len(samples)} images ({', '.join(estimated[:3])}{', ...' if len(estimated) > 3 else ''})")
    return f"the FOV was estimated from the image for {which}: {why}, so the metrics are not the official ones"


def predict_samples(loaded: LoadedModel, samples: Sequence, device: str = "auto",
                    on_image: Callable[[str, float], None] | None = None, precision: str = "fp32"):
    """(probabilities, ground truths, FOVs, names) for dataset samples."""
    probs, gts, fovs, names = [], [], [], []
    for sample in samples:
        rgb, gt, fov = sample.load()
        pred = predict(loaded, rgb, device=device, precision=precision)
        probs.append(pred.probability)
        gts.append(gt)
        fovs.append(fov)
        names.append(sample.name)
        if on_image:
            on_image(sample.name, pred.seconds)
    return probs, gts, fovs, names


def evaluate_model(loaded: LoadedModel, test: Sequence, train: Sequence = (), device: str = "auto",
                   on_image: Callable[[str, float], None] | None = None, precision: str = "fp32") -> dict:
    """The paper's metrics on ``test`` (fp32 by default, so that reported numbers do not depend
    on whether the CPU has bf16 units).

    Rule (a) takes its threshold from ``train``: the accuracy-maximising point on the training
    images, i.e. the honest counterpart of rule (c), which picks that point on the test images
    themselves.  Without training images it uses the model card's recommended threshold.
    """
    threshold_source = "model card"
    train_threshold = float(loaded.card.threshold)
    if len(train):
        tp, tg, tf, _ = predict_samples(loaded, train, device, on_image, precision)
        train_threshold = metrics.choose_train_threshold(tp, tg, tf, rule="max_acc")
        threshold_source = f"accuracy-maximising point on the {len(train)} training images"
    probs, gts, fovs, names = predict_samples(loaded, test, device, on_image, precision)
    result = metrics.evaluate(probs, gts, fovs, names=names, train_threshold=train_threshold)
    result["train_threshold_source"] = threshold_source
    return result
