"""Running the network for the Segment widget: the background job and putting its result in the viewer.

:class:`RunningMixin` checks the chosen image on the GUI thread, converts, loads the model and
segments it in a napari worker (:meth:`RunningMixin._job` never raises), reports progress through
a queued Qt signal (:class:`_Bridge`), and puts a new result into the viewer one layer per
event-loop turn so that the viewer never stalls.  Corrections already made on the image's vessels
layer are kept: the new result then goes to the probability layer only.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, QTimer, Signal

from napari_dpn.errors import DPNError, InputError
from napari_dpn.text import duration

from . import _roles
from ._segment_state import NO_IMAGE_MESSAGE, STEP_MS, _Outcome, _Result, looks_like_annotation


class _Bridge(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    progress = Signal(float)


class RunningMixin:
    """Segmenting the chosen image in the background (part of :class:`SegmentWidget`).

    Uses the widget's ``viewer``, ``alive``, ``_worker``, ``_cancel``, ``_start_worker`` (from
    ``DockWidget``), ``_results``, ``_models``, ``_bridge``, ``_run_serial``, ``_run_started``,
    ``_arrival``, ``_syncing``, the controls ``status``, ``progress``, ``run_button``,
    ``cancel_button``, ``model_combo``, ``refresh_button``, ``device_combo``, ``clahe_check``,
    ``fusion_check``, ``field_combo``, ``image_combo`` and ``slider``, and ``current_image()``,
    ``current_card()``, ``_loaded_fov_layer``, ``_put_probability``, ``_put_fov``,
    ``_put_vessels``, ``_sync_controls`` and ``_update_comparison``.
    """

    def _error(self, message: str) -> None:
        self.status.setText(message)
        show_error(message)

    @staticmethod
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
            raise InputError(
                f"'{layer.name}' is a {type(layer).__name__.lower()} layer; choose an image layer to segment."
            )
        data = layer.data[0] if layer.multiscale else layer.data
        data = np.asarray(data)
        if data.ndim - (1 if layer.rgb else 0) != 2:
            raise InputError(
                f"'{layer.name}' is a {data.ndim}-D stack {tuple(data.shape)}; "
                "DPN segments one 2-D photograph at a time."
            )
        if looks_like_annotation(layer):
            raise InputError(
                f"'{layer.name}' is an annotation (a mask), not a photograph; open "
                "it with the 'DPN retinal vessels' reader to get a labels layer, "
                "and choose the photograph to segment."
            )
        return data

    @classmethod
    def image_rgb(cls, layer) -> np.ndarray:
        """The layer's pixels as core RGB float (for scripts; the widget converts in its worker)."""
        from napari_dpn.image_io import as_rgb

        return as_rgb(cls.image_data(layer))

    @property
    def is_running(self) -> bool:
        return self._worker is not None or self._arrival is not None

    def run(self, *_, layer=None):
        """Segment the chosen image layer (or ``layer``) in a background worker.

        Returns the worker (or None if nothing was started).  Corrections on the image's vessels
        layer are never replaced: with an edited layer the new result goes to the probability
        layer only.
        """
        if self.is_running or not self.alive:
            return None
        layer = layer if layer is not None else self.current_image()
        if layer is None and len(self.viewer.layers):
            layer = self.viewer.layers.selection.active
        try:
            data = self.image_data(layer)
        except DPNError as exc:
            self._error(str(exc))
            return None
        card = self.current_card()
        model = self.model_combo.currentData()
        if card is None or not isinstance(model, tuple):
            self._error("No model chosen: install the shipped weights or use Browse… to pick a weights file.")
            return None
        fov_layer = self._loaded_fov_layer(layer)
        fov = np.asarray(fov_layer.data) > 0 if fov_layer is not None else None
        device = self.device_combo.currentText() or "auto"
        self._run_serial += 1
        worker = self._start_worker(
            self._job,
            f"segmenting '{layer.name}' with {card.name}",
            self._run_serial,
            layer,
            fov_layer,
            model[1],
            device,
            self.clahe_check.isChecked(),
            self.field_combo.currentData(),
            self.fusion_check.isChecked(),
            data,
            fov,
            returned=self._on_returned,
            finished=self._on_finished,
        )
        self._run_started = time.monotonic()
        self._set_running(True)
        self.status.setText(f"Segmenting '{layer.name}' with {card.name} on {device}…")
        worker.start()
        return worker

    def cancel(self, *_) -> None:
        """Stop the run: the network stops within one layer (``inference.predict``'s
        ``should_stop``); the last result on screen stays as it was."""
        if self._worker is not None:
            self._cancel.set()
            self.cancel_button.setEnabled(False)
            self.status.setText("Stopping… the result on screen stays as it was.")

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.progress.setVisible(running)
        # Busy until a tiled run reports its first tile; a single pass has nothing to report.
        self.progress.setRange(0, 0)
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        for w in (
            self.model_combo,
            self.device_combo,
            self.clahe_check,
            self.fusion_check,
            self.field_combo,
            self.image_combo,
            self.refresh_button,
        ):
            w.setEnabled(not running)

    def _on_progress(self, fraction: float) -> None:
        if not self.alive or self._worker is None:
            return
        fraction = max(0.0, min(1.0, float(fraction)))
        if fraction >= 1.0:
            return  # the pass is over; the bar stays busy while the result is put in place
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 100)
        self.progress.setValue(int(round(100 * fraction)))
        if fraction > 0:
            elapsed = time.monotonic() - self._run_started
            self.progress.setFormat(f"%p% · ETA {duration(elapsed * (1 - fraction) / fraction)}")

    def _load(self, spec: str):
        """Load (and cache) a model; runs in the worker thread."""
        from napari_dpn.models import load_model, resolve_model_path

        path = resolve_model_path(spec)
        key = (str(path), path.stat().st_mtime_ns)
        if key not in self._models:
            self._models[key] = load_model(path, device="cpu")
        return self._models[key]

    def _job(self, run, layer, fov_layer, spec, device, clahe, field, fused, data, fov, should_stop) -> _Outcome:
        """Background work: convert, load, segment at the model's scale (``segmentation.segment``:
        FOV, scale, network, map back), threshold.  Never raises.  ``field``: the camera's field
        angle, None (estimated) or 'native'; ``fused``: the two-scale fusion."""
        out = _Outcome(run=run, layer=layer, fov_layer=fov_layer)
        try:
            from napari_dpn.image_io import as_rgb
            from napari_dpn.scale import DEFAULT_FUSION, card_fusion
            from napari_dpn.segmentation import segment

            rgb = as_rgb(data)
            loaded = self._load(spec)
            import sklearn.metrics  # noqa: F401 - here, not on the GUI thread: the comparison that follows needs it

            card = loaded.card
            if bool(card.input.get("clahe")) != clahe:
                card = dataclasses.replace(card, input={**card.input, "clahe": clahe})
                loaded = dataclasses.replace(loaded, card=card)
            if should_stop():
                return dataclasses.replace(out, cancelled=True)
            seg = segment(
                loaded,
                rgb,
                fov=fov,
                scale="native" if field == "native" else "auto",
                field_angle=field if isinstance(field, float) else None,
                fusion=(card_fusion(card) or DEFAULT_FUSION) if fused else None,
                device=device,
                progress=self._bridge.progress.emit,
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
        except DPNError as exc:
            if should_stop():
                return dataclasses.replace(out, cancelled=True)
            return dataclasses.replace(out, error=str(exc))
        except MemoryError:
            return dataclasses.replace(
                out, error=f"Out of memory on {device}: choose 'cpu' as device or a smaller image."
            )
        except Exception as exc:  # noqa: BLE001 - shown as a notification, never a traceback
            if should_stop():
                return dataclasses.replace(out, cancelled=True)
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            if "out of memory" in text.lower():
                return dataclasses.replace(out, error=f"Out of memory on {device}: choose 'cpu' as device.")
            return dataclasses.replace(out, error=f"Segmentation failed ({type(exc).__name__}: {text}).")

    def _on_finished(self) -> None:
        if not self.alive:
            return
        self._worker = None
        if self._arrival is None:
            self._set_running(False)
            self._sync_controls()

    def _on_returned(self, out: _Outcome) -> None:
        if not self.alive or out.run != self._run_serial:
            return
        if out.cancelled:
            self.status.setText("Cancelled; nothing was changed.")
            return
        if out.error:
            self._error(out.error)
            return
        layer = out.layer
        if layer not in self.viewer.layers:
            self.status.setText("The image layer was closed while segmenting.")
            return
        pred = out.prediction
        fov_layer = out.fov_layer if out.fov_layer in self.viewer.layers else None
        old = self._results.get(id(layer))
        # Corrections made before the run or while it ran stay; the result goes beside them.
        keep = old is not None and old.edited and old.layer(self.viewer, "vessels") is not None
        if keep:
            res = old
            res.prob, res.threshold, res.card = out.prob, out.threshold, out.card
            if res.fov is None or res.layer(self.viewer, "fov") is None:
                res.fov = out.fov
        else:
            res = _Result(
                image=layer,
                name=layer.name,
                prob=out.prob,
                fov=out.fov,
                threshold=out.threshold,
                layers=dict(old.layers) if old else {},
            )
            self._results[id(layer)] = res
        res.model_label, res.device = out.model_label, str(pred.device)
        res.seconds, res.note = float(pred.seconds), getattr(pred, "note", None) or getattr(out.scale, "note", None)
        res.scale = out.scale.describe() if out.scale is not None else ""
        res.roc_cache = {}
        res._mask = (res.prob, res.threshold, out.mask) if res.fov is out.fov else None
        steps = [lambda: self._put_probability(res), lambda: self._put_fov(res, fov_layer)]
        if not keep:
            steps.append(lambda: self._put_vessels(res, res.vessel_mask().astype(np.uint8)))
        steps.append(lambda: self._arrived(res, keep))
        self._arrival = deque(steps)
        QTimer.singleShot(STEP_MS, self._next_arrival_step)

    def _next_arrival_step(self) -> None:
        """Put a new result into the viewer one layer per event-loop turn: adding a layer costs
        napari 0.1–0.3 s, three at once stalled the viewer for over half a second."""
        if not self.alive or self._arrival is None:
            return
        step = self._arrival.popleft()
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - never leave the widget half-busy
            self._arrival = None
            self._error(f"Could not show the result ({type(exc).__name__}: {exc}).")
        if self._arrival:
            QTimer.singleShot(STEP_MS, self._next_arrival_step)
            return
        self._arrival = None
        if self._worker is None:
            self._set_running(False)
            self._sync_controls()

    def _arrived(self, res: _Result, kept: bool) -> None:
        if res.image not in self.viewer.layers:
            self.status.setText("The image layer was closed while segmenting.")
            return
        if res.image is self.current_image():
            self._syncing = True
            self.slider.setValue(res.threshold)
            self._syncing = False
        self._show_run_info(res)
        if kept:
            message = (
                f"Your corrections in '{_roles.vessels_name(res.name)}' were kept; the new "
                f"result is in '{_roles.probability_name(res.name)}'. 'Re-apply "
                "threshold…' replaces the corrections by it."
            )
            self.status.setText(self.status.text() + " " + message)
            show_info(message)
        if res.note:
            show_warning(res.note)
        self._sync_controls()
        self._update_comparison()

    def _show_run_info(self, res: _Result) -> None:
        if res.prob is None:
            self.status.setText(
                f"'{res.name}': resumed from {Path(res.resumed).name}; "
                "'Segment vessels' adds a probability map without touching it."
                if res.resumed
                else f"'{res.name}': not segmented yet."
            )
            return
        text = f"'{res.name}': {res.model_label}, {res.seconds:.2f} s on {res.device}."
        if res.scale:
            text += f" Scale: {res.scale}."
        if res.note:
            text += f" Note: {res.note}"
        self.status.setText(text)
