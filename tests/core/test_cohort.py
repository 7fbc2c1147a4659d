"""Cohort runs (issue #13): a local Dask cluster, a lost worker, the manifest, re-runs.

Small synthetic photographs on the CPU; each Dask test starts its own 2-worker cluster (a few
seconds each, most of it importing torch in the workers).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_dpn.cli import main
from napari_dpn.cohort import RUN_PREFIX, Cohort, segment_job, settings_for
from napari_dpn.errors import OutputError
from napari_dpn.image_io import read_mask
from napari_dpn.manifest import MANIFEST_FIELDS, MANIFEST_NAME, Manifest, read_manifest
from napari_dpn.models import DEFAULT_MODEL
from napari_dpn.planning import images_in
from paths import REPO
from synthetic_fundus import fundus

SIZE = 96
KINDS = ("probability", "vessels", "fov")
pytestmark = pytest.mark.photos(count=6, size=SIZE)


def save_photo(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((fundus(SIZE, seed=seed)[0] * 255).astype(np.uint8)).save(path)
    return path


def outputs_of(out: Path, stems) -> dict[str, int]:
    """Output file name -> st_mtime_ns, for every output of ``stems``; asserts each exists."""
    found = {}
    for stem in stems:
        for kind in KINDS:
            p = out / f"{stem}_{kind}.png"
            assert p.is_file(), f"{p.name} is missing"
            found[p.name] = p.stat().st_mtime_ns
    return found


def no_leftovers(out: Path) -> None:
    """No staging folder, receipt, temporary or check file is left in the output folder."""
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert not hidden, hidden


def rows_by_name(out: Path) -> dict[str, dict]:
    rows = read_manifest(out)
    names = [Path(r["image"]).name for r in rows]
    assert len(names) == len(set(names)), "one row per image"
    return dict(zip(names, rows))


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


SEGMENT = ["--device", "cpu", "--quiet", "--precision", "fp32"]


# ----------------------------------------------------------------------------- a 2-worker local cluster


def test_two_worker_cluster_segments_a_folder_with_a_manifest_and_a_rerun_skips_it(photos, tmp_path, capsys):
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a PNG")
    out = tmp_path / "out"
    rc, stdout, err = run(["segment", photos, "--out", out, "--workers", 2, *SEGMENT], capsys)
    assert rc == 1, err  # one image failed; the other six are done
    assert "6 image(s) segmented" in stdout and "1 failed" in stdout
    assert "skipped broken.png: Cannot read" in err and "Traceback" not in err
    stems = [f"eye{i}" for i in range(6)]
    written = outputs_of(out, stems)
    assert sorted(p.name for p in out.iterdir()) == sorted([*written, MANIFEST_NAME])
    rows = rows_by_name(out)
    assert set(rows) == {*(f"{s}.png" for s in stems), "broken.png"}
    for stem in stems:
        row = rows[f"{stem}.png"]
        assert row["status"] == "done" and row["error"] == "" and row["device"] == "cpu"
        assert row["model"] == DEFAULT_MODEL and len(row["model_sha256"]) == 64
        assert float(row["seconds"]) > 0 and float(row["scale_factor"]) > 0 and row["scale_method"]
        assert 0.6 * SIZE < float(row["fov_diameter"]) < SIZE
        vessels, fov = read_mask(out / f"{stem}_vessels.png"), read_mask(out / f"{stem}_fov.png")
        assert float(row["vessel_density"]) == pytest.approx(vessels.sum() / fov.sum(), abs=1e-5)
        assert row["outputs"] == f"{stem}_probability.png;{stem}_vessels.png;{stem}_fov.png"
    bad = rows["broken.png"]
    assert bad["status"] == "failed" and bad["error"].startswith("Cannot read") and "\n" not in bad["error"]
    assert bad["error"].count(". ") == 0  # one sentence

    # The same command again: the six are done with this model, only the failed image is retried.
    rc, stdout, err = run(["segment", photos, "--out", out, "--workers", 2, *SEGMENT], capsys)
    assert rc == 1 and stdout.startswith("0 image(s) segmented; outputs in") and "1 failed" in stdout
    assert "6 skipped because they were done with this model" in stdout and "skipped broken.png: Cannot read" in err
    assert err.count(f"done with {DEFAULT_MODEL} and these options in an earlier run") == 6
    assert outputs_of(out, stems) == written  # nothing written again
    again = rows_by_name(out)
    assert {n: again[n] for n in rows if n != "broken.png"} == {n: rows[n] for n in rows if n != "broken.png"}
    assert again["broken.png"]["status"] == "failed" and again["broken.png"]["error"] == bad["error"]  # retried
    no_leftovers(out)

    # Without the broken file nothing is left to do: no cluster starts, nothing changes.
    (photos / "broken.png").unlink()
    rc, stdout, err = run(["segment", photos, "--out", out, "--workers", 2, *SEGMENT], capsys)
    assert rc == 0 and stdout.startswith("0 image(s) segmented; 6 skipped because they were done with this model")
    assert outputs_of(out, stems) == written


# ----------------------------------------------------------------------------- a worker dies mid-run


def test_killing_a_worker_mid_run_still_segments_every_image_exactly_once(photos, tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    marks = tmp_path / "marks"
    marks.mkdir()

    class KillOnce(distributed.WorkerPlugin):
        """Kills its worker process (as a crash or the OOM killer would) twice in the run: when the
        task of image 1 starts, and just after the task of image 3 finished, before its result is sent."""

        def __init__(self, folder):
            self.folder = folder

        def transition(self, key, start, finish, **kwargs):
            name = str(key)
            for suffix, when in (("-1", ("ready", "executing")), ("-3", ("executing", "memory"))):
                mark = os.path.join(self.folder, suffix)
                if name.endswith(suffix) and (start, finish) == when and not os.path.exists(mark):
                    open(mark, "w").close()
                    os._exit(1)

    out = tmp_path / "out"
    out.mkdir()
    images, _ = images_in([str(photos)])
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.CRITICAL
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.register_plugin(KillOnce(str(marks)), name="kill-once")
        settings = settings_for(DEFAULT_MODEL, device="cpu", precision="fp32", torch_threads=1)
        with Cohort(out, settings) as cohort:
            plan = cohort.plan(images)
            results = list(cohort.run(plan.jobs, scheduler=cluster.scheduler_address))
        # The command line on the same cluster: only the new photograph is segmented there.
        save_photo(photos / "eye6.png", 6)
        rc = main(
            [
                "segment",
                str(photos),
                "--out",
                str(out),
                "--scheduler",
                cluster.scheduler_address,
                "--device",
                "cpu",
                "--precision",
                "fp32",
            ]
        )
        assert rc == 0
    captured = capsys.readouterr()
    assert "napari-dpn: Dask cluster at tcp://" in captured.err and "worker(s)" in captured.err
    assert "1 image(s) segmented" in captured.out and "6 skipped because they were done" in captured.out
    assert sorted(os.listdir(marks)) == ["-1", "-3"]  # both kills happened
    names = [r.name for r in results]
    assert sorted(names) == [f"eye{i}.png" for i in range(6)]  # each image reported once
    assert all(r.status == "done" for r in results), [r.row for r in results if r.status != "done"]
    written = outputs_of(out, [f"eye{i}" for i in range(7)])
    assert sorted(p.name for p in out.iterdir()) == sorted([*written, MANIFEST_NAME])
    rows = rows_by_name(out)
    assert len(rows) == 7 and all(r["status"] == "done" for r in rows.values())
    # Image 3's outputs were written once, by the attempt whose worker died: the retry found its receipt.
    assert rows["eye3.png"]["output_sha256"]
    no_leftovers(out)


# ----------------------------------------------------------------------------- the same manifest without Dask


def test_serial_run_writes_the_manifest_and_a_new_model_reruns_only_unchanged_outputs(photos, tmp_path, capsys):
    out = tmp_path / "out"
    two = [photos / "eye0.png", photos / "eye1.png"]
    assert run(["segment", *two, "--out", out, *SEGMENT], capsys)[0] == 0
    rows = rows_by_name(out)
    assert {r["status"] for r in rows.values()} == {"done"} and set(rows) == {"eye0.png", "eye1.png"}
    assert [k for k in MANIFEST_FIELDS] == list(rows["eye0.png"])

    # A correction saved from napari over eye1's vessels: never replaced, even for a new model.
    (out / "eye1_vessels.png").write_bytes((out / "eye0_vessels.png").read_bytes())
    before = outputs_of(out, ["eye0", "eye1"])
    rc, stdout, err = run(["segment", *two, "--out", out, "--model", "dpn-drive", *SEGMENT], capsys)
    assert rc == 0 and "1 image(s) segmented with dpn-drive" in stdout
    assert f"eye0.png: done with {DEFAULT_MODEL} in an earlier run; its unchanged outputs are replaced" in err
    assert "skipped eye1.png: eye1_vessels.png was changed after napari-dpn wrote it" in err
    after = outputs_of(out, ["eye0", "eye1"])
    assert all(after[f"eye0_{k}.png"] != before[f"eye0_{k}.png"] for k in KINDS)
    assert all(after[f"eye1_{k}.png"] == before[f"eye1_{k}.png"] for k in KINDS)
    rows = rows_by_name(out)
    assert rows["eye0.png"]["status"] == "done" and rows["eye0.png"]["model"] == "dpn-drive"
    assert rows["eye1.png"]["status"] == "skipped" and "was changed" in rows["eye1.png"]["error"]

    # The new model again: eye0 is done with it; eye1 still skipped; nothing is written.
    manifest = (out / MANIFEST_NAME).read_bytes()
    rc, stdout, err = run(["segment", *two, "--out", out, "--model", "dpn-drive", *SEGMENT], capsys)
    assert rc == 0 and stdout.startswith("0 image(s) segmented; 1 skipped because their outputs exist")
    assert "1 skipped because they were done with this model" in stdout
    assert outputs_of(out, ["eye0", "eye1"]) == after and (out / MANIFEST_NAME).read_bytes() == manifest

    # Another threshold changes the vessel mask: eye0 is segmented again, as for another model.
    rc, stdout, err = run(
        ["segment", *two, "--out", out, "--model", "dpn-drive", "--threshold", "0.3", *SEGMENT], capsys
    )
    assert rc == 0 and "1 image(s) segmented with dpn-drive" in stdout
    assert (
        "eye0.png: done with dpn-drive and other options (threshold=card scale=auto field_angle=- fusion=none)" in err
    )
    assert rows_by_name(out)["eye0.png"]["options"] == "threshold=0.3 scale=auto field_angle=- fusion=none"
    no_leftovers(out)


def test_a_retried_task_returns_its_receipt_and_writes_nothing(photos, tmp_path, monkeypatch):
    """What Dask does after a worker died between writing the outputs and sending the result."""
    import napari_dpn.tasks as tasks

    out, run_dir = tmp_path / "out", tmp_path / "out" / f"{RUN_PREFIX}test"
    run_dir.mkdir(parents=True)
    settings = settings_for(DEFAULT_MODEL, device="cpu", precision="fp32")
    plan = Cohort(out, settings).plan([photos / "eye0.png"])
    first = segment_job(plan.jobs[0], settings, str(run_dir))
    monkeypatch.setattr(tasks, "write_outputs", lambda *a, **k: pytest.fail("written twice"))
    monkeypatch.setattr(tasks, "stage_outputs", lambda *a, **k: pytest.fail("written twice"))
    again = segment_job(plan.jobs[0], settings, str(run_dir))
    assert first.status == "done" and again.row == first.row and again.summary == first.summary


def test_a_torn_last_line_is_ignored_and_the_manifest_rewritten_whole(photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(["segment", photos / "eye0.png", "--out", out, *SEGMENT], capsys)[0] == 0
    path = out / MANIFEST_NAME
    good = path.read_text()
    path.write_text(good + good.splitlines()[1][:40])  # a crash while appending the next row
    manifest = Manifest(out)
    assert list(manifest.rows) == [str((photos / "eye0.png").resolve())] and manifest.changed
    rc, _, err = run(["segment", photos / "eye0.png", photos / "eye1.png", "--out", out, *SEGMENT], capsys)
    assert rc == 0 and f"eye0.png: done with {DEFAULT_MODEL}" in err
    text = path.read_text()
    assert text.count("\n") == 3 and text.endswith("\n")  # header + one row per image
    assert set(rows_by_name(out)) == {"eye0.png", "eye1.png"}


def test_a_foreign_file_named_like_the_manifest_is_one_sentence(photos, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_NAME).write_text("patient,age\n1,70\n")
    with pytest.raises(OutputError, match="is not a napari-dpn manifest"):
        Manifest(out)
    rc, _, err = run(["segment", photos / "eye0.png", "--out", out, *SEGMENT], capsys)
    assert rc == 2 and "is not a napari-dpn manifest" in err and (out / MANIFEST_NAME).read_text().startswith("patient")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workers", "0"], "--workers must be 1 or more"),
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not both"),
    ],
)
def test_bad_cluster_options_are_one_line(photos, tmp_path, capsys, argv, message):
    rc, _, err = run(["segment", photos, "--out", tmp_path / "out", *argv, *SEGMENT], capsys)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- the batch pipeline (GPU path, run on the CPU)


def test_batch_pipeline_writes_what_one_image_at_a_time_writes(tmp_path):
    """Two sizes (two batches), a corrupt file, and a photograph without a circular FOV (its scale
    needs the network: it takes the per-image path) -- the same outputs and rows as without batches."""
    from napari_dpn.image_io import read_image

    folder = tmp_path / "in"
    for i in range(3):
        save_photo(folder / f"a{i}.png", i)
    for i in range(2):
        path = folder / f"b{i}.png"
        Image.fromarray((fundus(112, seed=10 + i)[0] * 255).astype(np.uint8)).save(path)
    inner = fundus(160, seed=20)[0][40:120, 40:120]  # all retina: no FOV edge
    Image.fromarray((inner * 255).astype(np.uint8)).save(folder / "c0.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a PNG")
    images, _ = images_in([str(folder)])
    settings = settings_for(DEFAULT_MODEL, device="cpu", precision="fp32", fusion=None)  # batches: one pass
    runs = {}
    for name, batch in (("single", 1), ("batched", 2)):
        out = tmp_path / name
        with Cohort(out, settings) as cohort:
            plan = cohort.plan(images)
            results = list(cohort.run(plan.jobs, batch_size=batch, loader_workers=1))
        assert sorted(r.name for r in results) == sorted(p.name for p in images)
        runs[name] = rows_by_name(out)
        no_leftovers(out)
    single, batched = runs["single"], runs["batched"]
    assert single["broken.png"]["status"] == batched["broken.png"]["status"] == "failed"
    assert single["broken.png"]["error"] == batched["broken.png"]["error"]
    for name in ("a0.png", "a1.png", "a2.png", "b0.png", "b1.png", "c0.png"):
        a, b = single[name], batched[name]
        assert a["status"] == b["status"] == "done"
        for key in ("scale_factor", "scale_method", "fov_diameter", "outputs", "device", "model_sha256"):
            assert a[key] == b[key], (name, key)
        assert float(a["vessel_density"]) == pytest.approx(float(b["vessel_density"]), abs=2e-3)
        stem = Path(name).stem
        pa = read_image(tmp_path / "single" / f"{stem}_probability.png").astype(float)
        pb = read_image(tmp_path / "batched" / f"{stem}_probability.png").astype(float)
        assert np.abs(pa - pb).max() <= 0.001 * 65535, name
        va = read_mask(tmp_path / "single" / f"{stem}_vessels.png")
        vb = read_mask(tmp_path / "batched" / f"{stem}_vessels.png")
        assert (va != vb).mean() < 0.002, name


def test_gpu_throughput_benchmark_runs_on_the_cpu(tmp_path):
    import importlib.util
    import json

    root = REPO
    spec = importlib.util.spec_from_file_location(
        "gpu_throughput", root / "scripts" / "benchmarks" / "gpu_throughput.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    target = tmp_path / "bench.json"
    report = bench.main(
        [
            "--synthetic",
            "--size",
            "96",
            "96",
            "--count",
            "3",
            "--batch-sizes",
            "1",
            "2",
            "--network-iters",
            "1",
            "--device",
            "cpu",
            "--loader-workers",
            "0",
            "--out",
            str(target),
        ]
    )
    assert json.loads(target.read_text())["device"] == "cpu"
    assert [r["batch"] for r in report["network"]] == [1, 2]
    assert all(r["network_images_per_s"] > 0 and r["network_with_copies_images_per_s"] > 0 for r in report["network"])
    assert report["disk"][0]["images"] == 3 and report["disk"][0]["statuses"] == {"done": 3}


def test_batch_size_with_a_cluster_is_one_line(photos, tmp_path, capsys):
    rc, _, err = run(
        ["segment", photos, "--out", tmp_path / "out", "--workers", "2", "--batch-size", "4", *SEGMENT], capsys
    )
    assert rc == 2 and "--batch-size is for one process" in err and not (tmp_path / "out").exists()


def test_batches_run_one_pass_and_the_manifest_says_so(photos, tmp_path, capsys):
    """The batch path has no two-scale fusion: the CLI turns it off with a line, the API refuses."""
    from napari_dpn.errors import InputError

    rc, _, err = run(["segment", photos, "--out", tmp_path / "out", "--batch-size", "2", *SEGMENT], capsys)
    assert rc == 0 and "without two-scale fusion" in err
    assert {r["options"] for r in rows_by_name(tmp_path / "out").values()} == {
        "threshold=card scale=auto field_angle=- fusion=none"
    }
    images, _ = images_in([str(photos)])
    with (
        Cohort(tmp_path / "api", settings_for(DEFAULT_MODEL, device="cpu")) as cohort,
        pytest.raises(InputError, match="--fusion none"),
    ):
        list(cohort.run(cohort.plan(images).jobs, batch_size=2))


# ----------------------------------------------------------------------------- a process dies while placing outputs

DIE_WHILE_PLACING = """
import os, sys
from pathlib import Path
import napari_dpn.files as files
from napari_dpn.cohort import Cohort, settings_for
from napari_dpn.models import DEFAULT_MODEL

real, placed = files.place_no_clobber, []

def place_then_die(tmp, path):
    real(tmp, path)
    placed.append(Path(path))
    if Path(path).parent == Path(sys.argv[2]):  # (the first three calls write the staged copies)
        os._exit(3)  # the probability map is in place, the two masks are not

files.place_no_clobber = place_then_die
cohort = Cohort(sys.argv[2], settings_for(DEFAULT_MODEL, device="cpu", precision="fp32"))
for result in cohort.run(cohort.plan([Path(sys.argv[1])]).jobs):
    pass
"""


@pytest.fixture
def died_while_placing(photos, tmp_path):
    """An output folder where a run died between placing eye0's probability map and its masks."""
    import subprocess
    import sys

    import napari_dpn

    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(napari_dpn.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", DIE_WHILE_PLACING, str(photos / "eye0.png"), str(out)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stderr
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["eye0_probability.png"]
    run_dirs = list(out.glob(f"{RUN_PREFIX}*"))
    assert len(run_dirs) == 1 and list(run_dirs[0].glob("*.placing.json"))
    return out, run_dirs[0]


def test_a_retry_completes_the_placement_a_dead_worker_began(died_while_placing, photos):
    import json

    from napari_dpn.recovery import job_from

    out, run_dir = died_while_placing
    intent = json.loads(next(run_dir.glob("*.placing.json")).read_text())
    job = job_from(intent["job"])
    first = (out / "eye0_probability.png").stat().st_ino
    settings = settings_for(DEFAULT_MODEL, device="cpu", precision="fp32")
    result = segment_job(job, settings, str(run_dir))  # what Dask runs on another worker
    assert result.status == "done" and result.row["output_sha256"] == ";".join(intent["shas"])
    outputs_of(out, ["eye0"])
    assert (out / "eye0_probability.png").stat().st_ino == first  # not written again
    assert list(run_dir.glob("*.done.json")) and not list(run_dir.glob("*.placing.json"))


def test_the_next_run_completes_what_a_dead_run_left_half_placed(died_while_placing, photos, capsys):
    out, run_dir = died_while_placing
    first = (out / "eye0_probability.png").stat().st_ino
    rc, stdout, err = run(["segment", photos / "eye0.png", "--out", out, *SEGMENT], capsys)
    assert rc == 0 and stdout.startswith("0 image(s) segmented; 1 skipped because they were done"), stdout + err
    outputs_of(out, ["eye0"])
    assert (out / "eye0_probability.png").stat().st_ino == first
    assert rows_by_name(out)["eye0.png"]["status"] == "done"
    assert not run_dir.exists()
    no_leftovers(out)


def test_a_cohort_takes_the_two_scale_factor_from_the_model_card():
    """'auto' is resolved when the run is planned, so the manifest records what was done."""
    universal, drive = settings_for(DEFAULT_MODEL), settings_for("dpn-drive")
    assert universal.fusion == 1.5 and "fusion=1.5" in universal.options
    assert drive.fusion is None and "fusion=none" in drive.options
    assert settings_for("dpn-drive", fusion="1.25").fusion == 1.25
