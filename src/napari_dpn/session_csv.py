"""The per-image table of a folder session (*Export CSV…*): state, model, density, FOV
diameter, time, and Se/Sp/Acc/AUC/F1 where a ground truth is known (Qt-free)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from . import metrics
from .errors import DPNError
from .files import atomic_write
from .image_io import read_mask
from .session_file import Entry, ground_truth_path

CSV_COLUMNS = (
    "image",
    "state",
    "model",
    "threshold",
    "scale",
    "field_angle",
    "fov_diameter_px",
    "vessel_density",
    "seconds",
    "se",
    "sp",
    "acc",
    "auc",
    "f1",
    "ground_truth",
    "measured",
)


def session_rows(session) -> list[dict]:
    """One row per image for the CSV: metrics against the ground truth when one is known."""
    rows = []
    for i, e in enumerate(session.entries):
        row = {k: "" for k in CSV_COLUMNS}
        row.update(
            image=e.name,
            state=e.state,
            model=e.model or "",
            threshold=_fmt(e.threshold),
            scale=_fmt(e.scale),
            field_angle=_fmt_angle(e) if e.model else "",
            fov_diameter_px=_fmt(e.fov_diameter),
            vessel_density=_fmt(e.density),
            seconds=_fmt(e.seconds),
        )
        gt_path = ground_truth_path(session.image_path(i))
        # Metrics measure the user's annotation (a correction) or else the network's map of
        # the model in the row: a map whose model is not recorded is not measured at all.
        cached = session.cached(i) if e.model else None
        mask = session.saved_mask(i) if session.is_correction(i) else None
        row["measured"] = "annotation" if mask is not None else ""
        if mask is None and cached is not None:
            mask = (cached[0] >= cached[2]) & cached[1]
            row["measured"] = "network map"
        if gt_path is None or mask is None:
            row["measured"] = ""
        if gt_path is not None and mask is not None:
            try:
                gt = read_mask(gt_path)
                fov = (
                    read_mask(session.fov_path(i))
                    if session.fov_path(i).is_file()
                    else (cached[1] if cached is not None else None)
                )
                if gt.shape != mask.shape:
                    row["measured"] = ""
                else:
                    m = metrics.confusion_metrics(mask, gt, fov)
                    row.update(
                        se=_fmt(m["se"]),
                        sp=_fmt(m["sp"]),
                        acc=_fmt(m["acc"]),
                        f1=_fmt(m["f1"]),
                        ground_truth=gt_path.name,
                    )
                    if cached is not None:
                        row["auc"] = _fmt(metrics.auc(cached[0], gt, fov))
            except DPNError:
                row["measured"] = ""
        rows.append(row)
    return rows


def write_csv(session, path: str | Path) -> Path:
    """Write the per-image table atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(session_rows(session))
    path = Path(path)
    with atomic_write(path) as tmp:
        Path(tmp).write_text(buf.getvalue())
    return path


def _fmt_angle(e: Entry) -> str:
    """The field-of-view setting of an image's first map, as the CSV says it."""
    if e.field_angle is None:
        return "estimated"
    return "native" if e.field_angle == "native" else f"{float(e.field_angle):g}"


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)
