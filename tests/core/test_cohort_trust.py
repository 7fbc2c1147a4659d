"""`segment`'s output folder against a hostile user (issue #20 item 16 and the manifest items).

A planted run folder, names that CSV and the outputs list must carry exactly, a manifest with a
huge field, two runs into one folder, Ctrl-C on a 2-worker cluster, a scheduler that is not one,
``--json`` over a file, and a real full disk (a small tmpfs).  Every test drives the command line
(``napari_dpn.cli.main``) as a user would; small synthetic photographs on the CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_dpn.cli import main
from napari_dpn.cohort import RUN_PREFIX
from napari_dpn.lock import LOCK_NAME
from napari_dpn.manifest import MANIFEST_NAME, read_manifest, split_names
from napari_dpn.models import DEFAULT_MODEL
from synthetic_fundus import fundus

SIZE = 96
KINDS = ("probability", "vessels", "fov")
SEGMENT = ["--device", "cpu", "--quiet", "--precision", "fp32", "--fusion", "none"]
pytestmark = pytest.mark.photos(count=4, size=SIZE)


def save_photo(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((fundus(SIZE, seed=seed)[0] * 255).astype(np.uint8)).save(path, format="PNG")
    return path


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def rows_by_name(out: Path) -> dict[str, dict]:
    return {Path(r["image"]).name: r for r in read_manifest(out)}


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry under ``folder`` (links not followed): its bytes, or where a link points."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            key = str(p.relative_to(folder))
            if p.is_symlink():
                found[key] = ("link", os.readlink(p))
            elif p.is_file():
                found[key] = p.read_bytes()
            else:
                found[key] = "folder"
    return found


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


# ----------------------------------------------------------------------------- item 16: planted run folders


@pytest.fixture
def victim(tmp_path, photos):
    """A shared --out, the victim's home with a .bashrc and a folder of 54 files, and a planter."""
    out = tmp_path / "shared-out"
    out.mkdir()
    home = tmp_path / "home"
    (home / "thesis").mkdir(parents=True)
    (home / ".bashrc").write_text("export PATH=$HOME/bin:$PATH\n")
    for i in range(54):
        (home / "thesis" / f"chapter{i:02d}.tex").write_text(f"chapter {i}\n")
    return out, home


def plant(out: Path, outputs, *, stage=None, files=None, overwrite=True, name="0123456789", staged=None):
    """A run folder as the planted JSON of the battery: owner says this machine and a dead process,
    one intent with the given outputs, stage folder and staged files (created with ``staged``
    contents where they lie inside the planted folder)."""
    folder = out / f"{RUN_PREFIX}{name}"
    folder.mkdir(exist_ok=True)
    (folder / "owner.json").write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid()}))
    if stage is None:
        stage = folder / ".napari-dpn-stage-0123456789ab"
        stage.mkdir(exist_ok=True)
    if files is None:
        files = [Path(stage) / Path(o).name for o in outputs]
        for f, content in zip(files, staged or [b"planted"] * 3):
            if not f.exists():
                f.write_bytes(content)
    image = str(out.parent / "photos" / "eye0.png")
    row = {"image": image, "status": "done", "error": "", "model": DEFAULT_MODEL, "model_sha256": "0" * 64}
    intent = {
        "job": {
            "index": 0,
            "image": image,
            "outputs": [str(o) for o in outputs],
            "overwrite": overwrite,
            "replaceable": [],
            "previous_model": None,
        },
        "result": {"row": row, "name": "eye0.png"},
        "stage": str(stage),
        "files": [str(f) for f in files],
        "shas": [sha(Path(f)) if Path(f).is_file() else "0" * 64 for f in files],
    }
    (folder / "0.placing.json").write_text(json.dumps(intent))
    return folder


def layout(out: Path) -> list[Path]:
    return [out / f"eye0_{k}.png" for k in KINDS]


def victim_runs(photos, out, capsys):
    """The victim's next segment into the shared folder (another photograph)."""
    rc, stdout, err = run(["segment", photos / "eye1.png", "--out", out, *SEGMENT], capsys)
    assert rc == 0, err
    assert "Traceback" not in err and "1 image(s) segmented" in stdout
    assert all((out / f"eye1_{k}.png").is_file() for k in KINDS)
    return err


@pytest.mark.parametrize("names", ["any names", "output names"])
def test_a_planted_intent_naming_files_outside_out_touches_nothing(victim, photos, capsys, names):
    out, home = victim
    if names == "any names":
        targets = [home / ".bashrc", home / "thesis" / "chapter00.tex", home / "x.png"]
    else:  # files in the user's home that happen to have the names segment gives eye0's outputs
        targets = [home / f"eye0_{k}.png" for k in KINDS]
        for t in targets:
            t.write_bytes(b"the user's own " + t.name.encode())
    before = snapshot(home)
    folder = plant(out, targets)
    err = victim_runs(photos, out, capsys)
    assert snapshot(home) == before
    assert f"left {folder} alone" in err
    if names == "output names":
        assert "which is not an output of eye0" in err
    assert folder.is_dir()  # left alone, for its owner to look at


def test_a_planted_intent_with_dotdot_touches_nothing(victim, photos, capsys):
    out, home = victim
    (home / "eye0_probability.png").write_bytes(b"the user's own file")
    before = snapshot(home)
    folder = plant(out, [out / ".." / "home" / "eye0_probability.png", *layout(out)[1:]])
    err = victim_runs(photos, out, capsys)
    assert snapshot(home) == before and not (out / "eye0_vessels.png").exists()
    assert f"left {folder} alone" in err and "'..'" in err


def test_a_planted_intent_through_a_linked_folder_touches_nothing(victim, photos, capsys):
    out, home = victim
    (out / "eye0_outputs").symlink_to(home)
    before = snapshot(home)
    folder = plant(out, [out / "eye0_outputs" / n for n in (".bashrc", "eye0_vessels.png", "eye0_fov.png")])
    err = victim_runs(photos, out, capsys)
    assert snapshot(home) == before
    assert f"left {folder} alone" in err


def test_an_output_name_that_is_a_link_is_not_replaced(victim, photos, capsys):
    """The intent names the layout's own outputs, but one of them is a link to the user's .bashrc."""
    out, home = victim
    (out / "eye0_vessels.png").symlink_to(home / ".bashrc")
    before, link = snapshot(home), os.readlink(out / "eye0_vessels.png")
    plant(out, layout(out))
    err = victim_runs(photos, out, capsys)
    assert snapshot(home) == before and os.readlink(out / "eye0_vessels.png") == link
    assert not (out / "eye0_probability.png").exists() and not (out / "eye0_fov.png").exists()
    assert "eye0.png: a run that died left its outputs incomplete" in err and "left as they are" in err


def test_overwrite_in_a_planted_intent_never_replaces_a_users_file(victim, photos, capsys):
    """A folder of the right shape whose intent says overwrite=true for a correction the user saved."""
    out, _ = victim
    correction = out / "eye0_vessels.png"
    correction.write_bytes(b"my corrected vessels")
    plant(out, layout(out), overwrite=True)
    err = victim_runs(photos, out, capsys)
    assert correction.read_bytes() == b"my corrected vessels"
    assert not (out / "eye0_probability.png").exists() and not (out / "eye0_fov.png").exists()
    assert "eye0.png: a run that died left its outputs incomplete" in err


@pytest.mark.parametrize("where", ["a user's folder", "dotdot", "a link"])
def test_a_foreign_stage_folder_is_never_removed(victim, photos, capsys, where):
    out, home = victim
    thesis = home / "thesis"
    folder = out / f"{RUN_PREFIX}0123456789"
    folder.mkdir()
    if where == "a user's folder":
        stage = thesis
    elif where == "dotdot":
        stage = folder / ".." / ".." / "home" / "thesis"
    else:
        stage = folder / ".napari-dpn-stage-0123456789ab"
        stage.symlink_to(thesis)
    names = [f"chapter0{i}.tex" for i in range(3)]
    before = snapshot(home)
    plant(out, layout(out), stage=stage, files=[stage / n for n in names])
    err = victim_runs(photos, out, capsys)
    assert snapshot(home) == before, "the user's folder was changed"
    assert len(list(thesis.iterdir())) == 54
    assert f"left {folder} alone" in err


def test_a_stage_folder_holding_a_users_file_is_left_alone(victim, photos, capsys):
    """The stage folder is ours by name and place, but holds a file napari-dpn never writes."""
    out, _ = victim
    folder = plant(out, layout(out), staged=[b"p", b"v", b"f"])
    precious = folder / ".napari-dpn-stage-0123456789ab" / "notes.docx"
    precious.write_bytes(b"six months of notes")
    err = victim_runs(photos, out, capsys)
    assert precious.read_bytes() == b"six months of notes"
    assert not any((out / f"eye0_{k}.png").exists() for k in KINDS)
    assert f"left {folder} alone" in err and "notes.docx" in err


def test_a_linked_run_folder_is_left_alone(victim, photos, capsys):
    out, home = victim
    planted = home / "thesis"
    (planted / "owner.json").write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid()}))
    (out / f"{RUN_PREFIX}0123456789").symlink_to(planted)
    before = snapshot(home)
    err = victim_runs(photos, out, capsys)
    assert snapshot(home) == before
    assert "alone" in err and f"{RUN_PREFIX}0123456789" in err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give a folder away")
def test_a_run_folder_of_another_user_is_left_alone(victim, photos, capsys):
    """In a shared folder, what another account wrote is never completed into the victim's files."""
    out, _ = victim
    folder = plant(out, layout(out), staged=[b"p", b"v", b"f"])
    for p in [folder, *folder.rglob("*")]:
        os.lchown(p, 65534, 65534)
    err = victim_runs(photos, out, capsys)
    assert not any((out / f"eye0_{k}.png").exists() for k in KINDS)
    assert f"left {folder} alone" in err and "another user" in err


def test_a_genuine_dead_run_is_still_completed(victim, photos, capsys):
    """The checks keep the recovery they guard: a folder of the right shape is completed into free names."""
    out, _ = victim
    folder = plant(out, layout(out), overwrite=False, staged=[b"p", b"v", b"f"])
    err = victim_runs(photos, out, capsys)
    assert [p.read_bytes() for p in layout(out)] == [b"p", b"v", b"f"]
    assert not folder.exists() and "alone" not in err
    assert rows_by_name(out)["eye0.png"]["status"] == "done"


def test_records_planted_into_a_running_runs_folder_are_not_used(victim, photos, capsys, monkeypatch):
    """While the victim's run goes on, someone writes an intent and a receipt for its next images
    into its own run folder: outputs outside --out, overwrite=true, a foreign stage folder."""
    import tqdm as tqdm_module

    out, home = victim
    before = snapshot(home)

    def planting(results, **kwargs):
        for i, result in enumerate(results):
            if i == 0:
                (run_dir,) = out.glob(f"{RUN_PREFIX}*")
                folder = plant(
                    out,
                    [home / ".bashrc", home / "thesis" / "chapter00.tex", home / "thesis" / "chapter01.tex"],
                    stage=home / "thesis",
                    files=[home / "thesis" / f"chapter0{k}.tex" for k in (2, 3, 4)],
                    name=run_dir.name[len(RUN_PREFIX) :],
                )
                intent = json.loads((folder / "0.placing.json").read_text())
                (folder / "0.placing.json").unlink()
                for index in (1, 2):
                    intent["job"]["index"] = index
                    (folder / f"{index}.placing.json").write_text(json.dumps(intent))
                receipt = {**intent, "job": {**intent["job"], "index": 3}}
                (folder / "3.done.json").write_text(json.dumps(receipt))
            yield result

    planting.write = lambda *args, **kwargs: None
    monkeypatch.setattr(tqdm_module, "tqdm", planting)
    rc, stdout, err = run(["segment", photos, "--out", out, *SEGMENT], capsys)
    assert rc == 0 and "4 image(s) segmented" in stdout, stdout + err
    assert snapshot(home) == before
    rows = rows_by_name(out)
    assert sorted(rows) == [f"eye{i}.png" for i in range(4)] and {r["status"] for r in rows.values()} == {"done"}
    for i in range(4):
        assert all((out / f"eye{i}_{k}.png").is_file() for k in KINDS)


# ----------------------------------------------------------------------------- the manifest


NAMES = ["tab\there.png", "new\nline.png", "two  spaces.png", "semi;colon.png", "per%3Bcent.png"]


def test_names_with_tabs_newlines_spaces_and_semicolons_survive_the_manifest(tmp_path, capsys):
    folder = tmp_path / "odd"
    for i, name in enumerate(NAMES):
        save_photo(folder / name, i)
    out = tmp_path / "out"
    rc, stdout, err = run(["segment", folder, "--out", out, *SEGMENT], capsys)
    assert rc == 0 and f"{len(NAMES)} image(s) segmented" in stdout, err
    rows = rows_by_name(out)
    assert sorted(rows) == sorted(NAMES)
    for name, row in rows.items():
        stem = Path(name).stem
        assert row["image"] == str((folder / name).resolve())
        assert split_names(row["outputs"]) == [f"{stem}_{k}.png" for k in KINDS]

    # The same command: every image is done, none is called foreign.
    rc, stdout, err = run(["segment", folder, "--out", out, *SEGMENT], capsys)
    assert rc == 0 and stdout.startswith(f"0 image(s) segmented; {len(NAMES)} skipped because they were done"), (
        stdout + err
    )
    assert "already exists" not in err

    # Another model: the unchanged outputs of every image are recognised as napari-dpn's and replaced.
    rc, stdout, err = run(["segment", folder, "--out", out, "--model", "dpn-drive", *SEGMENT], capsys)
    assert rc == 0 and f"{len(NAMES)} image(s) segmented with dpn-drive" in stdout, stdout + err
    assert "was changed" not in err
    assert {r["model"] for r in rows_by_name(out).values()} == {"dpn-drive"}


def test_a_field_over_128_kb_is_read_and_never_written(photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(["segment", photos / "eye0.png", "--out", out, *SEGMENT], capsys)[0] == 0
    path = out / MANIFEST_NAME
    header, row = path.read_text().splitlines()[:2]
    huge = row.replace(str((photos / "eye0.png").resolve()), str((photos / "eye1.png").resolve()))
    huge = huge.replace(",done,,", ",failed," + "x" * 200_000 + ",", 1)
    path.write_text(f"{header}\n{row}\n{huge}\n")
    rc, stdout, err = run(["segment", photos / "eye0.png", photos / "eye1.png", "--out", out, *SEGMENT], capsys)
    assert rc == 0 and "1 image(s) segmented" in stdout and "Traceback" not in err, err
    rows = rows_by_name(out)
    assert rows["eye1.png"]["status"] == "done" and rows["eye0.png"]["status"] == "done"
    assert max(len(line) for line in path.read_text().splitlines()) < 10_000


# ----------------------------------------------------------------------------- one run at a time per folder

HOLD_LOCK = """
import sys, time
from napari_dpn.cohort import Cohort, settings_for
from napari_dpn.models import DEFAULT_MODEL
cohort = Cohort(sys.argv[1], settings_for(DEFAULT_MODEL, device="cpu"))
print("holding", flush=True)
sys.stdin.readline()
"""


def _python_env():
    import napari_dpn

    src = str(Path(napari_dpn.__file__).parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def test_a_second_run_into_the_same_folder_is_refused_and_a_dead_ones_lock_is_taken_over(photos, tmp_path, capsys):
    out = tmp_path / "out"
    other = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_python_env(),
    )
    try:
        assert other.stdout.readline().strip() == "holding"
        rc, stdout, err = run(["segment", photos, "--out", out, *SEGMENT], capsys)
        assert rc == 2 and stdout == "" and len(err.strip().splitlines()) == 1, err
        assert f"another napari-dpn segment run (pid {other.pid}" in err and "one at a time" in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing segmented, nothing marked
    finally:
        other.kill()  # as a crash or kill -9 would: its lock file stays
        other.wait(30)
    assert (out / LOCK_NAME).exists()
    rc, stdout, err = run(["segment", photos, "--out", out, *SEGMENT], capsys)
    assert rc == 0 and "4 image(s) segmented" in stdout, err
    assert not (out / LOCK_NAME).exists()
    assert {r["status"] for r in rows_by_name(out).values()} == {"done"}


def test_without_file_locks_a_lock_of_a_dead_process_is_stale(photos, tmp_path, capsys, monkeypatch):
    """File systems without flock: the file is the lock; a dead pid on this machine frees it."""
    out = tmp_path / "out"
    out.mkdir()
    gone = dead_pid()
    monkeypatch.setitem(sys.modules, "fcntl", None)  # import fcntl fails, as on Windows
    lock = out / LOCK_NAME
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": "now"}))
    rc, _, err = run(["segment", photos / "eye0.png", "--out", out, *SEGMENT], capsys)
    assert rc == 2 and f"(pid {os.getpid()}" in err and not (out / "eye0_vessels.png").exists()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": gone, "started": "then"}))
    rc, stdout, err = run(["segment", photos / "eye0.png", "--out", out, *SEGMENT], capsys)
    assert rc == 0 and "1 image(s) segmented" in stdout and not lock.exists(), err


# ----------------------------------------------------------------------------- Ctrl-C on a 2-worker cluster


def test_ctrl_c_with_two_workers_keeps_the_rows_of_every_image_placed(photos, tmp_path, capsys, monkeypatch):
    """Ctrl-C while results are on their way: every image whose outputs are in place has its row,
    and the next run skips it as done (it was "already exists" forever)."""
    pytest.importorskip("distributed")
    import tqdm as tqdm_module

    out = tmp_path / "out"
    stems = [f"eye{i}" for i in range(4)]

    def interrupted(results, **kwargs):
        for result in results:
            yield result
            deadline = time.monotonic() + 120
            while not all((out / f"{s}_{k}.png").is_file() for s in stems for k in KINDS):
                assert time.monotonic() < deadline, "the workers did not finish"
                time.sleep(0.05)
            raise KeyboardInterrupt  # the user's Ctrl-C, with three results not yet received here

    interrupted.write = lambda *args, **kwargs: None
    monkeypatch.setattr(tqdm_module, "tqdm", interrupted)
    rc, _, err = run(["segment", photos, "--out", out, "--workers", 2, *SEGMENT], capsys)
    assert rc == 130 and "interrupted" in err
    rows = rows_by_name(out)
    assert sorted(rows) == [f"{s}.png" for s in stems] and {r["status"] for r in rows.values()} == {"done"}
    assert not list(out.glob(".*"))
    monkeypatch.undo()
    monkeypatch.setenv("NAPARI_DPN_MODELS", str(tmp_path / "user-models"))
    rc, stdout, err = run(["segment", photos, "--out", out, *SEGMENT], capsys)
    assert rc == 0 and stdout.startswith("0 image(s) segmented; 4 skipped because they were done"), stdout + err


# ----------------------------------------------------------------------------- --scheduler that is not a scheduler


@contextlib.contextmanager
def http_server(lifetime: float = 30.0):
    """An HTTP server on 127.0.0.1 that stops by itself after ``lifetime`` seconds."""
    import http.server

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    timer = threading.Timer(lifetime, server.shutdown)
    timer.daemon = True
    timer.start()
    try:
        yield f"tcp://127.0.0.1:{server.server_address[1]}"
    finally:
        timer.cancel()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("kind", ["empty file", "half-written file", "http port", "missing file"])
def test_a_scheduler_that_is_not_one_is_a_sentence_within_seconds(photos, tmp_path, capsys, kind):
    pytest.importorskip("distributed")
    out = tmp_path / "out"
    with http_server() as address:
        if kind == "http port":
            target = address
        else:
            target = tmp_path / "scheduler.json"
            if kind == "empty file":
                target.write_text("")
            elif kind == "half-written file":
                target.write_text('{"type": "Scheduler", "address": "tcp://12')
        t0 = time.monotonic()
        rc, _, err = run(
            ["segment", photos, "--out", out, "--scheduler", target, "--scheduler-timeout", "2", *SEGMENT], capsys
        )
        seconds = time.monotonic() - t0
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert seconds < 15
    expected = {
        "empty file": "is empty",
        "half-written file": "not a complete Dask scheduler file",
        "http port": "no Dask scheduler answered",
        "missing file": "there is no scheduler file",
    }[kind]
    assert expected in err
    assert not any(p.name.endswith(".png") for p in out.iterdir()) if out.exists() else True


def test_a_bad_scheduler_timeout_is_one_line(photos, tmp_path, capsys):
    rc, _, err = run(["segment", photos, "--out", tmp_path / "o", "--scheduler-timeout", "0", *SEGMENT], capsys)
    assert rc == 2 and "--scheduler-timeout must be" in err


# ----------------------------------------------------------------------------- --json over a file


def test_json_never_replaces_a_file_unless_asked(photos, tmp_path, capsys):
    out = tmp_path / "out"
    photo = photos / "eye3.png"
    before = photo.read_bytes()
    rc, stdout, err = run(["segment", photos / "eye0.png", "--out", out, "--json", photo, *SEGMENT], capsys)
    assert rc == 2 and stdout == "" and "not a .json report" in err and "--overwrite" in err
    assert photo.read_bytes() == before and not out.exists()

    report = tmp_path / "report.json"
    report.write_text('{"earlier": true}\n')
    rc, _, err = run(["segment", photos / "eye0.png", "--out", out, "--json", report, *SEGMENT], capsys)
    assert rc == 2 and "already exists (a report)" in err and json.loads(report.read_text()) == {"earlier": True}

    rc, stdout, err = run(
        ["segment", photos / "eye0.png", "--out", out, "--json", report, "--overwrite", *SEGMENT], capsys
    )
    assert rc == 0 and "eye0.png" in json.loads(report.read_text())["images"], err

    rc, _, err = run(["evaluate", "--dataset", "drive", "--root", tmp_path, "--json", photo], capsys)
    assert rc == 2 and "not a .json report" in err and photo.read_bytes() == before


# ----------------------------------------------------------------------------- a full disk


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "400k"):
    folder.mkdir(parents=True, exist_ok=True)
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """Fill the disk of ``folder`` until about ``leave`` bytes are free."""
    filler = folder / "filler.bin"
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


@pytest.mark.parametrize("where", [[], ["--workers", "2"]], ids=["this process", "two workers"])
def test_a_full_disk_during_segment_is_one_sentence_and_each_image_all_or_none(tmp_path, capsys, where):
    if where:
        pytest.importorskip("distributed")
    photos = tmp_path / "many"
    stems = [f"eye{i}" for i in range(8)]
    for i, stem in enumerate(stems):
        save_photo(photos / f"{stem}.png", i)
    with small_disk(tmp_path / "disk") as disk:
        out = disk / "out"
        out.mkdir()
        filler = fill(disk, 3 * 4096 * 3 + 8192)  # room for about two images
        rc, stdout, err = run(["segment", photos, "--out", out, *where, *SEGMENT], capsys)
        assert rc == 2 and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1 and "the disk is full" in err, err
        for stem in stems:
            there = [(out / f"{stem}_{k}.png").exists() for k in KINDS]
            assert all(there) or not any(there), (stem, there)
        assert not [p.name for p in out.iterdir() if p.name.startswith(".napari-dpn-stage")]

        # Room again: the same command finishes the job, and no image is ever called foreign.
        filler.unlink()
        rc, stdout, err = run(["segment", photos, "--out", out, *SEGMENT], capsys)
        assert rc == 0 and "already exists" not in err, stdout + err
        rows = rows_by_name(out)
        assert sorted(rows) == [f"{s}.png" for s in stems] and {r["status"] for r in rows.values()} == {"done"}
        assert not list(out.glob(".*"))


@pytest.mark.parametrize("kind", ["fifo", "link"])
def test_a_manifest_that_is_a_fifo_or_a_link_is_one_sentence(photos, tmp_path, capsys, kind):
    """Planted in a shared folder: a FIFO made the next run wait for ever; a link had rows appended
    to whatever it pointed at."""
    out = tmp_path / "out"
    out.mkdir()
    manifest = out / MANIFEST_NAME
    elsewhere = tmp_path / "other-project.csv"
    elsewhere.write_text("image,status,model_sha256\n")
    if kind == "fifo":
        os.mkfifo(manifest)
    else:
        manifest.symlink_to(elsewhere)
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.update(rc=main(["segment", str(photos / "eye0.png"), "--out", str(out), *SEGMENT])),
        daemon=True,
    )
    thread.start()
    thread.join(60)
    if thread.is_alive():  # unblock the reader so the test process can end
        fd = os.open(manifest, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("segment waited on the planted manifest")
    err = capsys.readouterr().err
    assert outcome["rc"] == 2 and "not a manifest napari-dpn wrote" in err and len(err.strip().splitlines()) == 1
    assert elsewhere.read_text() == "image,status,model_sha256\n"
