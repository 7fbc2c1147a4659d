"""``train``'s progress: a tqdm bar and log lines from the training events."""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from .. import training as t
from ..text import duration


def format_metrics(m: dict) -> str:
    at = m.get("at") or "the Youden point"
    return (
        f"AUC {m['auc']:.4f}  Se {m['se']:.4f}  Sp {m['sp']:.4f}  Acc {m['acc']:.4f}  F1 {m['f1']:.4f}"
        f"  (threshold {m['threshold']:.3f}: {at})"
    )


class Progress:
    """Turns training events into a tqdm bar and log lines."""

    def __init__(self, total: int, quiet: bool, log_every: int = 0):
        self.total, self.quiet, self.log_every = total, quiet, log_every
        self.bar: tqdm | None = None  # made at the first step, so data preparation does not count in its rate
        self.last_ckpt: Path | None = None

    def write(self, text: str) -> None:
        tqdm.write(text, file=sys.stderr)

    def __call__(self, event) -> None:
        if isinstance(event, t.StepEvent):
            if self.bar is None:
                self.bar = tqdm(
                    total=event.total,
                    initial=event.step - 1,
                    desc="training",
                    unit="step",
                    disable=self.quiet,
                    dynamic_ncols=True,
                    file=sys.stderr,
                )
            self.bar.n = event.step
            self.bar.set_postfix_str(
                f"loss {event.loss:.4f}, {event.seconds_per_step:.2f} s/step, ETA {duration(event.eta_seconds)}",
                refresh=False,
            )
            self.bar.refresh()
            if self.log_every and event.step % self.log_every == 0:
                self.write(
                    f"step {event.step}/{event.total}: loss {event.loss:.4f}, "
                    f"{event.seconds_per_step * 1000:.1f} ms/step"
                )
        elif isinstance(event, t.ValidationEvent):
            self.write(f"step {event.step}: {format_metrics(event.metrics)}")
        elif isinstance(event, t.CheckpointEvent):
            self.last_ckpt = event.path
        elif isinstance(event, t.MessageEvent):
            self.write(event.text)
        elif isinstance(event, t.CancelledEvent):
            self.write(f"stopped at step {event.step}; checkpoint {event.checkpoint}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
