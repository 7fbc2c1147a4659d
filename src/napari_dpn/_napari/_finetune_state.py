"""The Fine-tune widget's one state object (no Qt): what the panels read, change and observe.

:class:`FinetuneState` holds the pair sources (folders, validation pairs added by hand, the
user's ticks), the settings, the running job's run and its outcome.  Panels change it through
its methods and follow it through ``state.events`` (psygnal signals, emitted on the GUI thread):
``pairs`` (a source changed), ``settings`` (a setting changed), ``running`` (a run started or
ended), ``outcome`` (a run returned).  :func:`train_job` is the background work.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from psygnal import Signal, SignalGroup

from napari_dpn.errors import InputError
from napari_dpn.messages import sentence
from napari_dpn.models import list_models, shipped_models_dir

CHECKPOINT_EVERY = 100
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
DEFAULT_STEPS = 300
DEFAULT_CROP = 256
DEFAULT_LR = "1e-4"


def _training():
    """The training engine, imported when first used: it loads torch (1-2 s holding the GIL),
    which docking the widget must not wait for."""
    from napari_dpn import training

    return training


@dataclass
class Settings:
    """The run's settings as the user typed them (checked by :meth:`FinetuneState.make_config`)."""

    steps: int = DEFAULT_STEPS
    crop: int = DEFAULT_CROP
    lr: str = DEFAULT_LR
    augment: bool = True
    device: str = "auto"
    name: str = ""
    name_edited: bool = False  # the user typed a name: a new base model no longer renames it


@dataclass
class Run:
    """What the widget keeps of the last run (for 'Save model' after a cancel, and Resume)."""

    config: object
    train_pairs: list
    val_pairs: list
    init: str
    out_dir: Path
    description: str
    result: object = None  # training.TrainResult
    before: dict | None = None
    after: dict | None = None
    saved: bool = False
    overwrite: bool = True  # a new run the user confirmed; a resumed one never replaces a model


@dataclass
class Outcome:
    """What the background job hands back (it never raises)."""

    result: object = None  # training.TrainResult
    after: dict | None = None  # validation metrics of the final (or cancelled) weights
    error: str | None = None


class FinetuneEvents(SignalGroup):
    pairs = Signal()
    settings = Signal()
    running = Signal(bool)
    outcome = Signal(object)  # Outcome


@dataclass
class FinetuneState:
    """Everything the Fine-tune widget knows; its panels are views of it."""

    settings: Settings = field(default_factory=Settings)
    train_folder: Path | None = None
    val_folder: Path | None = None
    manual_val: list = field(default_factory=list)  # (image layer, ground-truth layer) added by hand
    checked: dict = field(default_factory=dict)  # (list, id(image), id(masks)) -> the user's tick
    run: Run | None = None
    running: bool = False
    last_error: str | None = None
    events: FinetuneEvents = field(default_factory=FinetuneEvents, repr=False, compare=False)

    # ------------------------------------------------------------------ pair sources

    def set_folder(self, which: str, folder) -> None:
        """The 'train' or 'val' folder (None: no folder)."""
        path = Path(folder).expanduser() if folder else None
        setattr(self, f"{which}_folder", path)
        self.events.pairs.emit()

    def add_validation(self, image, ground_truth) -> None:
        self.manual_val.append((image, ground_truth))
        self.checked[("val", id(image), id(ground_truth))] = True
        self.events.pairs.emit()

    def is_checked(self, which: str, image, masks, default: bool) -> bool:
        return self.checked.get((which, id(image), id(masks)), default)

    def set_checked(self, which: str, image, masks, checked: bool) -> None:
        self.checked[(which, id(image), id(masks))] = checked

    # ------------------------------------------------------------------ settings

    def update_settings(self, **changes) -> None:
        self.settings = replace(self.settings, **changes)
        self.events.settings.emit()

    def make_config(self):
        """The TrainConfig of the settings (``training.finetune_config``: the base model's working
        scale and fusion, the shipped threshold rule); InputError for unusable values."""
        s = self.settings
        text = s.lr.strip()
        try:
            lr = float(text)
        except ValueError:
            lr = float("nan")
        if not (math.isfinite(lr) and lr > 0):
            raise InputError(f"The learning rate must be a positive number such as 1e-4, not '{text}'.")
        name = s.name.strip()
        if not NAME_RE.match(name):
            raise InputError(
                "Give the new model a name of letters, digits, '.', '_', '-' or '+' (no spaces or slashes)."
            )
        shipped = shipped_models_dir()
        if (
            any(c.name == name and Path(c.extra.get("path", "")).parent == shipped for c in list_models())
            or (shipped / f"{name}.safetensors").exists()
        ):
            raise InputError(f"'{name}' is a shipped model; choose another name for the fine-tuned one.")
        return _training().finetune_config(
            steps=int(s.steps),
            crop=int(s.crop),
            lr=lr,
            augment=s.augment,
            device=s.device or "auto",
            checkpoint_every=CHECKPOINT_EVERY,
            name=name,
        )

    # ------------------------------------------------------------------ runs

    def resume_run(self, checkpoint, collect) -> tuple:
        """(config, checkpoint) to train on from ``checkpoint`` up to the Steps set; a checkpoint
        of another run becomes the current run, trained on ``collect()``'s pairs.  DPNError."""
        training = _training()
        ck = training.load_checkpoint(checkpoint)
        steps = int(self.settings.steps)
        if steps <= ck["step"]:
            raise InputError(
                f"The checkpoint is at step {ck['step']}: set Steps above {ck['step']} to train on from it."
            )
        run = self.run
        if run is None or run.result is None or Path(run.result.checkpoint) != Path(checkpoint):
            train, val, _ = collect()
            run = self.run = Run(
                config=training.TrainConfig(**ck["config"]),
                train_pairs=train,
                val_pairs=val,
                init=(ck.get("base_card") or {}).get("name") or ck["architecture"],
                out_dir=Path(checkpoint).parent,
                description=ck.get("description") or f"{len(train)} corrected image(s)",
            )
        run.overwrite = False
        run.config = replace(run.config, steps=steps, device=self.settings.device or "auto")
        return run.config, Path(checkpoint)

    def set_running(self, running: bool) -> None:
        self.running = running
        self.events.running.emit(running)

    def returned(self, out: Outcome) -> None:
        """A run's outcome: the run keeps its result and metrics; observers show it."""
        run = self.run
        if not out.error and run is not None:
            res = out.result
            run.result = res
            run.before = res.metrics_before if res.metrics_before is not None else run.before
            run.after = out.after
            run.saved = not res.cancelled
        self.events.outcome.emit(out)


def oom(config) -> str:
    return f"Out of memory on {config.device}: choose a smaller crop or 'cpu' as device."


def train_job(
    config, train_pairs, val_pairs, init, out_dir, resume, description, overwrite, callback, should_stop
) -> Outcome:
    """Background work: train (or finish from a checkpoint).  Never raises.  The engine gives the
    metrics before (at the base model's threshold) and after (at the new card's, also for a
    cancelled run's weights)."""
    try:
        result = _training().train(
            config,
            train_pairs,
            val_pairs or None,
            init=init,
            out_dir=out_dir,
            resume=resume,
            callback=callback,
            should_stop=should_stop,
            description=description,
            overwrite=overwrite,
        )
        return Outcome(result=result, after=result.metrics_after)
    except Exception as exc:  # noqa: BLE001 - shown as a notification, never a traceback
        return Outcome(error=sentence(exc, doing="Fine-tuning", out_of_memory=oom(config)))
