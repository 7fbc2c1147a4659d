"""Running a fine-tune for the Fine-tune widget: settings to a TrainConfig, the background job,
its events on the GUI thread, cancel, and saving a cancelled run's checkpoint as a model.

:meth:`RunningMixin._job` runs :func:`napari_dpn.training.train` in a napari worker and never
raises; training events reach the GUI thread through a queued Qt signal (:class:`_Bridge`).
Cancel stops before the next step and keeps the checkpoint: the last good state.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from napari.utils.notifications import show_info
from qtpy.QtCore import QObject, Signal

from napari_dpn.errors import DPNError, InputError
from napari_dpn.text import duration

CHECKPOINT_EVERY = 100
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class _Outcome:
    """What the background job hands back (it never raises)."""

    result: object = None  # training.TrainResult
    after: dict | None = None  # validation metrics of the final (or cancelled) weights
    error: str | None = None


@dataclass
class _Run:
    """What the widget keeps of the last run (for 'Save model' after a cancel)."""

    config: object
    train_pairs: list
    val_pairs: list
    init: str
    out_dir: Path
    description: str
    result: object = None
    before: dict | None = None
    after: dict | None = None
    saved: bool = False
    overwrite: bool = True  # a new run the user confirmed; a resumed one never replaces a model


class _Bridge(QObject):
    """Carries training events from the worker thread to the GUI thread (queued signal)."""

    event = Signal(object)


class RunningMixin:
    """Starting, following and finishing a run (part of :class:`FinetuneWidget`).

    Uses the widget's ``alive``, ``_worker``, ``_cancel``, ``_start_worker``, ``_confirm`` (from
    ``DockWidget``), ``_bridge``, ``run_info``, ``collect_pairs``, ``_error``, the results-table
    methods, and the controls built in ``_build_ui``.
    """

    def make_config(self):
        """The TrainConfig of the settings (``training.finetune_config``: the base model's working
        scale and fusion, the shipped threshold rule); InputError for unusable values."""
        from napari_dpn.models import list_models, shipped_models_dir
        from napari_dpn.training import finetune_config

        text = self.lr_edit.text().strip()
        try:
            lr = float(text)
        except ValueError:
            lr = float("nan")
        if not (math.isfinite(lr) and lr > 0):
            raise InputError(f"The learning rate must be a positive number such as 1e-4, not '{text}'.")
        name = self.name_edit.text().strip()
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
        steps = int(self.steps_spin.value())
        return finetune_config(
            steps=steps,
            crop=int(self.crop_spin.value()),
            lr=lr,
            augment=self.augment_check.isChecked(),
            device=self.device_combo.currentText() or "auto",
            checkpoint_every=CHECKPOINT_EVERY,
            name=name,
        )

    # ------------------------------------------------------------------ running

    def run(self, *_):
        """Start a fine-tuning run in a background worker; returns the worker or None."""
        if self._worker is not None:
            return None
        from napari_dpn.models import user_models_dir

        try:
            config = self.make_config()
            train, val, no_fov = self.collect_pairs()
        except DPNError as exc:
            self._error(str(exc))
            return None
        data = self.model_combo.currentData()
        if not isinstance(data, tuple):
            self._error("No base model chosen: pick one in the list or use Browse….")
            return None
        out_dir = user_models_dir()
        target = out_dir / f"{config.name}.safetensors"
        if target.exists() and not self._confirm(
            "Replace model?",
            f"A model named '{config.name}' already exists in {out_dir}. Replace it when this run finishes?",
            ok="Replace",
        ):
            self.status.setText("Not started: choose another name.")
            return None
        if no_fov:
            show_info(f"No FOV mask for {', '.join(no_fov)}: the field of view will be estimated from the image.")
        names = ", ".join(p.name for p in train[:5]) + ("…" if len(train) > 5 else "")
        description = f"{len(train)} corrected image(s) ({names})"
        self.run_info = _Run(
            config=config, train_pairs=train, val_pairs=val, init=data[1], out_dir=out_dir, description=description
        )
        self._start(config, resume=None)
        return self._worker

    def _start(self, config, resume) -> None:
        run = self.run_info
        self.last_error = None
        worker = self._start_worker(
            self._job,
            f"fine-tuning '{config.name}'",
            config,
            run.train_pairs,
            run.val_pairs,
            run.init,
            run.out_dir,
            resume,
            run.description,
            run.overwrite,
            returned=self._on_returned,
            finished=self._on_finished,
        )
        self._set_running(True)
        if resume is None:
            self.loss_plot.clear()
            self.log.clear()
            self._clear_table()
            self.result_label.setText("Running…")
            self.save_button.setVisible(False)
        self.progress.setRange(0, 0)  # busy until the first step
        self.progress.setFormat("preparing…")
        self.status.setText(
            f"{self._verb(config, resume)} '{config.name}' from {Path(str(run.init)).stem} on "
            f"{len(run.train_pairs)} image(s)"
            + (f", validating on {len(run.val_pairs)}" if run.val_pairs else ", no validation images")
            + f" ({config.device})…"
        )
        worker.start()

    def _verb(self, config, resume) -> str:
        if resume is None:
            return "Fine-tuning"
        done = self.run_info.result
        return "Saving" if done is not None and config.steps == done.steps else "Resuming"

    def cancel(self, *_) -> None:
        """Stop before the next step; the engine writes a checkpoint."""
        if self._worker is not None and self.alive:
            self._cancel.set()
            self.cancel_button.setEnabled(False)
            self.status.setText("Cancelling: stopping after the current step…")

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        # While it runs the pair lists are locked: fold them so the loss plot fits the screen.
        if running and self._unfold_after_run is None:
            self._unfold_after_run = [sec for sec in (self.train_section, self.val_section) if sec.is_expanded()]
            for sec in self._unfold_after_run:
                sec.set_expanded(False)
            self.run_section.set_expanded(True)
        elif not running and self._unfold_after_run is not None:
            for sec in self._unfold_after_run:
                sec.set_expanded(True)
            self._unfold_after_run = None
        for w in (
            self.model_combo,
            self.refresh_button,
            self.steps_spin,
            self.crop_spin,
            self.lr_edit,
            self.augment_check,
            self.device_combo,
            self.name_edit,
            self.train_list,
            self.val_list,
            self.train_folder_button,
            self.train_folder_clear,
            self.val_folder_button,
            self.val_folder_clear,
            self.val_add_button,
            self.save_button,
            self.resume_button,
        ):
            w.setEnabled(not running)

    def _job(
        self, config, train_pairs, val_pairs, init, out_dir, resume, description, overwrite, should_stop
    ) -> _Outcome:
        """Background work: train (or finish from a checkpoint).  Never raises.  The engine gives
        the metrics before (at the base model's threshold) and after (at the new card's, also for
        a cancelled run's weights)."""
        from napari_dpn.training import train

        try:
            result = train(
                config,
                train_pairs,
                val_pairs or None,
                init=init,
                out_dir=out_dir,
                resume=resume,
                callback=self._bridge.event.emit,
                should_stop=should_stop,
                description=description,
                overwrite=overwrite,
            )
            return _Outcome(result=result, after=result.metrics_after)
        except DPNError as exc:
            return _Outcome(error=str(exc))
        except MemoryError:
            return _Outcome(error=f"Out of memory on {config.device}: choose a smaller crop or 'cpu' as device.")
        except Exception as exc:  # noqa: BLE001 - shown as a notification, never a traceback
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            if "out of memory" in text.lower():
                return _Outcome(error=f"Out of memory on {config.device}: choose a smaller crop or 'cpu' as device.")
            return _Outcome(error=f"Fine-tuning failed ({type(exc).__name__}: {text}).")

    # ------------------------------------------------------------------ events (GUI thread)

    def _log(self, text: str) -> None:
        self.log.setVisible(True)
        self.log.appendPlainText(text)

    def _on_event(self, event) -> None:
        if not self.alive:
            return
        from napari_dpn import training as t

        if isinstance(event, t.StepEvent):
            if self.progress.maximum() != event.total:
                self.progress.setRange(0, event.total)
            self.progress.setValue(event.step)
            self.progress.setFormat(
                f"step {event.step}/{event.total} · "
                f"{event.seconds_per_step:.2f} s/step · ETA "
                f"{duration(event.eta_seconds)}"
            )
            self.loss_plot.add(event.step, event.loss, event.head_losses)
        elif isinstance(event, t.ValidationEvent):
            m = event.metrics
            self._log(f"step {event.step}: AUC {m['auc']:.4f}, F1 {m['f1']:.4f}")
        elif isinstance(event, t.MessageEvent):
            self._log(event.text)
        elif isinstance(event, t.CheckpointEvent):
            self._log(f"checkpoint at step {event.step}: {event.path.name}")
        elif isinstance(event, t.CancelledEvent):
            self._log(f"stopped at step {event.step}")
            self.progress.setFormat(f"stopped at step {event.step} · evaluating…")
        elif isinstance(event, t.DoneEvent):
            self._log(f"saved {event.model_path.name}")

    def _on_finished(self) -> None:
        if not self.alive:
            return
        self._worker = None
        self._set_running(False)
        self.loss_plot.redraw(force=True)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)

    def _on_returned(self, out: _Outcome) -> None:
        if not self.alive:
            return
        self.loss_plot.redraw(force=True)
        run = self.run_info
        if out.error:
            self.progress.setFormat("stopped")
            self.result_label.setText(out.error)
            self._error(out.error)
            return
        res = out.result
        run.result = res
        run.before = res.metrics_before if res.metrics_before is not None else run.before
        run.after = out.after
        self._fill_table(run.before, run.after)
        self._show_results()
        if res.cancelled:
            self.progress.setFormat(f"cancelled at step {res.steps}/{run.config.steps}")
            text = f"Cancelled at step {res.steps}; the checkpoint is kept: {res.checkpoint}. No model was saved."
            if run.after:
                text += (
                    f" Saved, these weights would get the threshold {run.after['threshold']:.3f} "
                    "(max accuracy on the validation images); the table uses it."
                )
            self.result_label.setText(text)
            self.status.setText(
                f"Cancelled at step {res.steps}. 'Resume' trains on to the Steps set; "
                "'Save model from checkpoint' keeps these weights as a model."
            )
            self.save_button.setText(f"Save model from checkpoint (step {res.steps})")
            self.save_button.setVisible(True)
            show_info(f"Fine-tuning cancelled at step {res.steps}; checkpoint {res.checkpoint.name} kept.")
            return
        run.saved = True
        self.save_button.setVisible(False)
        self.progress.setRange(0, max(1, res.steps))
        self.progress.setValue(res.steps)
        self.progress.setFormat(f"done · {res.steps} steps")
        card = res.card
        rule = getattr(card, "threshold_rule", "") or "max accuracy"
        self.result_label.setText(
            f"Recommended threshold {res.threshold:.3f} ({rule}); stored in the model card.\n"
            f"Saved '{card.name}' to {res.model_path} — pick it in 'Segment vessels'."
        )
        self.status.setText(f"Done: '{card.name}' saved after {res.steps} steps.")
        show_info(f"Fine-tuned model '{card.name}' saved (threshold {res.threshold:.3f}).")
        self._announce_model(card.name)

    def save_checkpoint_as_model(self, *_):
        """After a cancel: finish the run at the checkpoint's step (save model, card, metrics)."""
        run = self.run_info
        if self._worker is not None or run is None or run.result is None or not run.result.cancelled:
            return None
        from dataclasses import replace

        config = replace(run.config, steps=int(run.result.steps))
        run.overwrite = False
        self._start(config, resume=run.result.checkpoint)
        return self._worker

    def resume(self, *_, checkpoint=None):
        """Continue a run from its checkpoint up to the Steps set: the last cancelled (or finished)
        run of this widget, else a checkpoint file the user picks (``checkpoint`` in scripts),
        trained on the ticked pairs.  The new model never replaces an existing one."""
        if self._worker is not None:
            return None
        from dataclasses import replace

        from napari_dpn import training

        run = self.run_info
        if checkpoint is None and run is not None and run.result is not None:
            checkpoint = run.result.checkpoint
        elif checkpoint is None:
            checkpoint = self._ask_checkpoint()
            if checkpoint is None:
                return None
        try:
            ck = training.load_checkpoint(checkpoint)
            steps = int(self.steps_spin.value())
            if steps <= ck["step"]:
                raise InputError(
                    f"The checkpoint is at step {ck['step']}: set Steps above {ck['step']} to train on from it."
                )
            if run is None or run.result is None or Path(run.result.checkpoint) != Path(checkpoint):
                train, val, _ = self.collect_pairs()
                run = self.run_info = _Run(
                    config=training.TrainConfig(**ck["config"]),
                    train_pairs=train,
                    val_pairs=val,
                    init=(ck.get("base_card") or {}).get("name") or ck["architecture"],
                    out_dir=Path(checkpoint).parent,
                    description=ck.get("description") or f"{len(train)} corrected image(s)",
                )
        except DPNError as exc:
            self._error(str(exc))
            return None
        run.overwrite = False
        config = replace(run.config, steps=steps, device=self.device_combo.currentText() or "auto")
        run.config = config
        self._start(config, resume=Path(checkpoint))
        return self._worker

    def _ask_checkpoint(self):
        """Ask for a checkpoint file (``*.ckpt.pt``); tests replace this method."""
        from qtpy.QtWidgets import QFileDialog

        from napari_dpn.models import user_models_dir

        path, _ = QFileDialog.getOpenFileName(
            self, "Resume from a checkpoint", str(user_models_dir()), "Checkpoints (*.ckpt.pt)"
        )
        return Path(path) if path else None

    def _announce_model(self, name: str) -> None:
        """Make the new model appear in every model list at once (ours and Segment vessels')."""
        from ._model_picker import announce_new_model

        self._name_edited = False
        announce_new_model()
