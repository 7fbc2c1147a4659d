"""A run's validation: whole-image probabilities as inference computes them, metrics before,
during and after training, and the card's threshold chosen by the run's rule."""

from __future__ import annotations

import numpy as np

from .. import inference, metrics
from ..errors import DPNError
from ..models import LoadedModel, ModelCard
from .data import Pair
from .events import MessageEvent, ValidationEvent


def summarise_metrics(report: dict, at: str | None = None) -> dict:
    """auc, se, sp, acc, f1 and threshold of a ``metrics.evaluate`` report: at the threshold it was
    given (``train_threshold``; ``at`` says whose, e.g. "the card's threshold") when there is one,
    else at the Youden point; ``youden_threshold`` always."""
    pooled = report["pooled"]
    given = pooled.get("train_threshold")
    y = given or pooled["youden"]
    return {
        "auc": pooled["auc"],
        "threshold": y["threshold"],
        "se": y["se"],
        "sp": y["sp"],
        "acc": y["acc"],
        "f1": y["f1"],
        "at": (at or "the given threshold") if given else "the Youden point",
        "youden_threshold": pooled["youden"]["threshold"],
    }


def predict_pairs(run, pairs: list[Pair]) -> list[np.ndarray]:
    """Whole-image probabilities, exactly as inference computes them."""
    card = ModelCard(name=run.name, architecture=run.arch, input=dict(run.input))
    loaded = LoadedModel(model=run.model, card=card)
    try:
        # fp32: validation metrics and the card's threshold must not depend on the CPU's bf16 support
        return [inference.predict(loaded, p.rgb, device=run.device, precision="fp32").probability for p in pairs]
    finally:
        run.model.train()


def evaluate_pairs(run, pairs: list[Pair], threshold=None, at=None, probs=None) -> dict | None:
    """Metrics on ``pairs`` at ``threshold`` (labelled ``at``), or at their Youden point."""
    probs = predict_pairs(run, pairs) if probs is None else probs
    try:
        report = metrics.evaluate(
            probs,
            [p.label for p in pairs],
            [p.fov for p in pairs],
            names=[p.name for p in pairs],
            train_threshold=threshold,
        )
    except DPNError as exc:
        run.emit(MessageEvent(f"validation skipped: {exc}"))
        return None
    return summarise_metrics(report, at)


def validate(run) -> dict | None:
    """Metrics of the weights at this step: before training at the base model's own threshold
    (the one it is used with), during training at the Youden point."""
    if not run.val:
        return None
    base_t = (run.base_card or {}).get("threshold")
    if run.step == 0 and isinstance(base_t, (int, float)):
        m = evaluate_pairs(run, run.val, float(base_t), f"the threshold of {run.base_card.get('name', 'the base')}")
    else:
        m = evaluate_pairs(run, run.val)
    if m is not None:
        run.history.append({"step": run.step, **m})
        run.emit(ValidationEvent(run.step, m))
    return m


def final_metrics(run) -> tuple[dict | None, float, str]:
    """(validation metrics at the card's threshold, that threshold, its rule) for these weights:
    the threshold by ``config.threshold_rule`` on the validation images (else the training
    images), and the validation metrics at exactly that threshold."""
    rule = run.config.threshold_rule
    pairs, which = (run.val, "validation") if run.val else (run.train, "training")
    run.emit(MessageEvent(f"choosing the threshold on the {len(pairs)} {which} image(s)"))
    probs = predict_pairs(run, pairs)
    what = "Youden point" if rule == "youden" else "accuracy-maximising point"
    scale = f" at {run.working_ppd:g} px/deg" if run.working_ppd else ""
    try:
        t = float(metrics.choose_train_threshold(probs, [p.label for p in pairs], [p.fov for p in pairs], rule=rule))
        text = f"{what} on the {len(pairs)} {which} images{scale}"
    except DPNError:
        t, text = 0.5, "default 0.5 (the annotations hold a single class)"
    after = None
    if run.val:
        after = evaluate_pairs(run, run.val, t, "the card's threshold", probs=probs)
        if after is not None:
            run.history.append({"step": run.step, **after})
            run.emit(ValidationEvent(run.step, after))
    return after, t, text
