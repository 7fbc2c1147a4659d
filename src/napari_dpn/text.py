"""Numbers as people read them, shared by the command line and the widgets."""

from __future__ import annotations

import math


def duration(seconds: float) -> str:
    """'m:ss' or 'h:mm:ss' ('?' when unknown): ETAs and run times."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(max(0.0, seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
