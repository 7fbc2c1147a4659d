"""Fixtures and markers shared by every test.

- ``user_models`` (autouse): a private, empty user-models folder for every test, so no test reads
  or writes the real one; ``models_dir``: the same with a small random-weights model, 'tiny-test'.
- ``photos``: a folder of synthetic fundus photographs (``@pytest.mark.photos(count=, size=)``).
- ``one_torch_thread``: bit-identical runs, and the shared machine stays usable.
- Markers: ``gui`` (every test under tests/napari/, set here) and ``slow`` (dataset evaluations,
  training runs, Dask clusters, subprocesses, napari viewers): ``pytest -m "not slow"`` is the quick loop.

Nothing here imports Qt, napari or torch at import time: the core tests run with ``-p no:xvfb`` and
without a display, and collect this file too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from synthetic_fundus import fundus
from widget_setup import save_random_model

WIDGET_MODULES = (  # every module whose notifications the widgets show
    "napari_dpn._napari._segment_widget",
    "napari_dpn._napari._segment_running",
    "napari_dpn._napari._segment_threshold",
    "napari_dpn._napari._segment_saving",
    "napari_dpn._napari._segment_resume",
    "napari_dpn._napari._finetune_widget",
    "napari_dpn._napari._session_widget",
    "napari_dpn._napari._session_loop",
)


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_display: opens a napari viewer (Qt needs a display)")
    config.addinivalue_line("markers", "photos(count=3, size=96): what the ``photos`` fixture makes")


GUI_TESTS = Path(__file__).parent / "napari"

# The ``slow`` tests, by function name (all their parameters): each took 1.5 s or more on the 2-core
# CPU machine (most train, start a Dask cluster or segment a big photograph), or reads the staged
# datasets.  Listed here, in one place, so that ``pytest -m "not slow"`` stays a one-minute loop; a new
# test that takes seconds goes here too (``pytest --durations=20`` names them).
SLOW = {
    # core: a Dask cluster, the batch pipeline, a subprocess
    "test_two_worker_cluster_segments_a_folder_with_a_manifest_and_a_rerun_skips_it",
    "test_killing_a_worker_mid_run_still_segments_every_image_exactly_once",
    "test_batch_pipeline_writes_what_one_image_at_a_time_writes",
    "test_batches_run_one_pass_and_the_manifest_says_so",
    "test_gpu_throughput_benchmark_runs_on_the_cpu",
    "test_serial_run_writes_the_manifest_and_a_new_model_reruns_only_unchanged_outputs",
    "test_the_next_run_completes_what_a_dead_run_left_half_placed",
    "test_a_torn_last_line_is_ignored_and_the_manifest_rewritten_whole",
    "test_a_retried_task_returns_its_receipt_and_writes_nothing",
    "test_a_retry_completes_the_placement_a_dead_worker_began",
    "test_a_full_disk_during_segment_is_one_sentence_and_each_image_all_or_none",
    "test_ctrl_c_with_two_workers_keeps_the_rows_of_every_image_placed",
    "test_names_with_tabs_newlines_spaces_and_semicolons_survive_the_manifest",
    "test_a_foreign_stage_folder_is_never_removed",
    "test_a_scheduler_that_is_not_one_is_a_sentence_within_seconds",
    "test_a_second_run_into_the_same_folder_is_refused_and_a_dead_ones_lock_is_taken_over",
    # core: training runs
    "test_short_training_lowers_loss_and_raises_auc",
    "test_averaged_checkpoints_finish_as_a_model_that_says_so",
    "test_train_command_on_a_folder",
    "test_same_seed_same_losses",
    "test_cancel_leaves_checkpoint_and_resume_matches_uninterrupted",
    "test_time_limit_finishes_at_the_step_reached_and_resume_continues",
    "test_a_resumed_run_takes_the_learning_rate_it_is_given",
    "test_max_accuracy_threshold_rule_and_caffe_equivalent_weight_decay",
    "test_any_camera_training_equalises_each_crop_after_the_jitter",
    "test_nan_loss_stops_and_keeps_last_good_weights",
    "test_an_ablation_run_leaves_its_parts_out_and_says_so",
    "test_ctrl_c_leaves_a_consistent_checkpoint",
    "test_session_finetune_trains_at_the_working_scale_and_keeps_the_card",
    "test_cli_finetune_trains_at_the_base_models_working_scale_and_keeps_its_card",
    "test_a_newer_or_malformed_checkpoint_is_refused_in_one_sentence",
    "test_two_runs_in_the_same_second_get_two_models",
    "test_a_resumed_run_replaces_only_its_own_model",
    # core: big or many segmentations
    "test_a_genuine_big_jpeg_is_segmented_in_bounded_memory",
    "test_twelve_bit_and_cmyk_tiffs_segment_like_the_8bit_photograph",
    "test_tiled_equals_one_pass",
    "test_progress_and_cancel_between_tiles",
    "test_segment_photo_uses_the_field_angle",
    "test_a_guessed_field_angle_hedges_with_a_coarser_pass_too",
    "test_cancel_stops_a_single_untiled_pass_between_layers",
    "test_evaluate_prints_the_table_and_writes_json",
    "test_bad_image_in_a_batch_is_skipped_not_fatal",
    "test_segment_folder_writes_probability_vessels_and_fov",
    "test_annotation_and_dataset_label_files_are_never_segmented",
    "test_cli_segment_scale_disc",
    "test_annotation_paths",
    "test_output_has_input_size",
    # core: the staged datasets
    "test_a_real_drive_tiff_reads",
    "test_every_format_in_the_datasets_reads",
    "test_a_drive_training_image",
    "test_upscaled_drive_image_segments_as_well_as_the_original",
}


def pytest_collection_modifyitems(config, items):
    """Every napari test is ``gui`` (it needs Qt, and most a display); the tests in SLOW, and every
    test that opens a napari viewer (1.5-50 s each, measured), are ``slow``."""
    for item in items:
        if GUI_TESTS in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.gui)
        if getattr(item, "originalname", item.name) in SLOW or "make_napari_viewer" in getattr(
            item, "fixturenames", ()
        ):
            item.add_marker(pytest.mark.slow)


def _no_display() -> bool:
    # Read when a test starts: pytest-xvfb sets DISPLAY only once pytest is configured.
    return sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_display") and _no_display():
        pytest.skip("a napari viewer needs a display: run with pytest-xvfb (default) or xvfb-run")


@pytest.fixture(autouse=True)
def user_models(tmp_path, monkeypatch) -> Path:
    """A private user-models folder (``NAPARI_DPN_MODELS``), empty and not yet created: no test
    sees the user's own models or saves among them."""
    folder = tmp_path / "user-models"
    monkeypatch.setenv("NAPARI_DPN_MODELS", str(folder))
    return folder


@pytest.fixture
def models_dir(user_models) -> Path:
    """The private user-models folder with a small random-weights 'dpn' model, 'tiny-test' (seed 0)."""
    save_random_model(user_models)
    return user_models


def save_photos(folder: Path, count: int = 3, size: int = 96) -> Path:
    """``folder/eye0.png`` ... ``eye{count-1}.png``: synthetic fundus photographs (seed i, size x size)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray((fundus(size, seed=i)[0] * 255).astype(np.uint8)).save(folder / f"eye{i}.png")
    return folder


@pytest.fixture
def photos(request, tmp_path) -> Path:
    """``tmp_path/photos`` with synthetic photographs eye0.png, eye1.png, ... (3 of 96 px unless a
    ``@pytest.mark.photos(count=..., size=...)`` on the test or its module says otherwise)."""
    marker = request.node.get_closest_marker("photos")
    return save_photos(tmp_path / "photos", **(marker.kwargs if marker else {}))


@pytest.fixture
def one_torch_thread():
    """One torch thread: the same thread count in every run (bit-identical losses), and the shared
    machine stays usable."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def notes(monkeypatch):
    """What the dock widgets show as napari notifications, recorded instead of shown:
    {"error": [...], "warning": [...], "info": [...]}."""
    got = {"error": [], "warning": [], "info": []}
    for module in WIDGET_MODULES:
        for kind, messages in got.items():
            monkeypatch.setattr(
                f"{module}.show_{kind}", messages.append, raising=False
            )  # not every widget uses every kind
    return got


@pytest.fixture
def dock_widget(make_napari_viewer):
    """``dock_widget(cls, name)``: a new viewer with ``cls(viewer)`` docked as ``name``."""

    def dock(cls, name: str):
        viewer = make_napari_viewer()
        widget = cls(viewer)
        viewer.window.add_dock_widget(widget, name=name)
        return widget

    return dock


@pytest.fixture
def stall_probe(qtbot):
    """A QTimer firing every 10 ms on the GUI thread that records the largest gap between two
    ticks: how long the event loop was blocked (a frozen viewer).  ``probe.reset()`` starts a
    new measurement, ``probe.max_gap`` is its largest gap in seconds (the gap that is still open
    counts too).  A latency budget of the GUI, not a speed benchmark."""
    import time

    from qtpy.QtCore import QTimer

    class Probe:
        def __init__(self):
            self.timer = QTimer()
            self.timer.setInterval(10)
            self.timer.timeout.connect(self._tick)
            self.reset()
            self.timer.start()

        def reset(self):
            self.last = time.perf_counter()
            self._max = 0.0

        def _tick(self):
            now = time.perf_counter()
            self._max = max(self._max, now - self.last)
            self.last = now

        @property
        def max_gap(self) -> float:
            return max(self._max, time.perf_counter() - self.last)

        def measure(self, action, until=lambda: True, timeout_ms: int = 120_000, settle_ms: int = 100) -> float:
            """Max gap while ``action()`` runs (synchronously, as a click handler does) and the
            event loop then works until ``until()`` and ``settle_ms`` more.

            A full garbage collection runs first: with napari and torch loaded the interpreter's
            own full collections pause every thread for 0.1-0.4 s whenever they fall due, which
            is not what a widget's latency budget measures."""
            import gc

            qtbot.wait(30)
            gc.collect()
            self.reset()
            action()
            qtbot.waitUntil(until, timeout=timeout_ms)
            qtbot.wait(settle_ms)
            self._tick()
            return self._max

    probe = Probe()
    yield probe
    probe.timer.stop()
