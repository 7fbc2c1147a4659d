"""Models are never silently replaced (promise 6).

The hostile inputs and faults for the core and the CLI (issue #10: nothing a user makes is ever lost
or silently wrong), split from test_reliability.py by module; the promise numbers are the section
numbers there and below.  Every case checks the one-sentence message and that no user file changed.
What these tests hold the code to is written down in docs/promises.md; the GUI cases are in
test_reliability_gui.py.
"""

from __future__ import annotations

import pytest

from napari_dpn.errors import InputError
from napari_dpn.models import load_model
from promise_helpers import (
    TRAIN,
    _caffemodel,
    _saved,
    error_line,
    one_sentence,
    run,
    snapshot,
    unchanged,
)

pytestmark = [pytest.mark.photos(count=2, size=64), pytest.mark.usefixtures("one_torch_thread")]


# ============================================================================= 6. models are never silently replaced


def test_two_runs_in_the_same_second_get_two_models(pairs, tmp_path, capsys, monkeypatch):
    import datetime as real

    import napari_dpn.cli.train as train_cli

    class Frozen(real.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2030, 1, 2, 3, 4, 5)

    monkeypatch.setattr(train_cli, "datetime", Frozen)
    models = tmp_path / "models"
    assert run(["train", "--images", pairs, "--out", models, *TRAIN], capsys)[0] == 0
    first = snapshot(models)
    rc, out, _ = run(["train", "--images", pairs, "--out", models, *TRAIN], capsys)
    assert rc == 0
    unchanged(first, models, new_allowed=set(snapshot(models)) - set(first))
    names = sorted(p.stem for p in models.glob("*.safetensors"))
    # issue #20 item 3: --images fine-tunes the default model, whose name starts the default name
    assert names == ["dpn-universal-train-20300102-030405", "dpn-universal-train-20300102-030405-2"]
    assert not list(models.glob(".*lock"))


def test_train_refuses_an_existing_model_name(pairs, tmp_path, capsys):
    models = tmp_path / "models"
    _saved(models, name="mine", threshold=0.3)
    before = snapshot(tmp_path)
    rc, _, err = run(["train", "--images", pairs, "--out", models, "--name", "mine", *TRAIN], capsys)
    assert rc == 2
    text = error_line(err)
    assert "'mine' already exists" in text and "--overwrite" in text
    unchanged(before, tmp_path)


def test_train_overwrite_replaces_an_existing_model(pairs, tmp_path, capsys):
    models = tmp_path / "models"
    _saved(models, name="mine", threshold=0.3)
    rc, out, _ = run(["train", "--images", pairs, "--out", models, "--name", "mine", "--overwrite", *TRAIN], capsys)
    assert rc == 0 and "saved mine" in out
    assert load_model(models / "mine.safetensors").card.training["steps"] == 1


def test_train_refuses_to_restart_over_an_earlier_runs_checkpoint(pairs, tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    (models / "mine.ckpt.pt").write_bytes(b"an earlier run")
    before = snapshot(tmp_path)
    rc, _, err = run(["train", "--images", pairs, "--out", models, "--name", "mine", *TRAIN], capsys)
    assert rc == 2 and "--resume" in error_line(err)
    unchanged(before, tmp_path)


def test_a_resumed_run_replaces_only_its_own_model(pairs, tmp_path, capsys):
    """A run continued after its time limit saves over the model it saved before (and nothing else)."""
    models = tmp_path / "models"
    assert run(["train", "--images", pairs, "--out", models, "--name", "r", *TRAIN], capsys)[0] == 0
    ckpt = models / "r.ckpt.pt"
    rc, out, _ = run(["train", "--images", pairs, "--resume", ckpt, "--name", "r", *TRAIN, "--steps", "2"], capsys)
    assert rc == 0 and "saved r (2 steps" in out
    before = snapshot(tmp_path)
    rc, _, err = run(["train", "--images", pairs, "--resume", ckpt, "--name", "other", *TRAIN, "--steps", "3"], capsys)
    assert rc == 2 and "keeps its name" in error_line(err)
    unchanged(before, tmp_path)


def test_train_refuses_a_shipped_name_in_the_user_models_folder(pairs, tmp_path, capsys):
    before = snapshot(tmp_path)
    rc, _, err = run(["train", "--images", pairs, "--name", "dpn-drive", *TRAIN], capsys)
    assert rc == 2 and "'dpn-drive' is a shipped model" in error_line(err)
    unchanged(before, tmp_path)


BAD_NAMES = [
    "../evil",
    "sub/evil",
    "/tmp/evil",
    ".hidden",
    "with space",
    "evil.safetensors",
    "..",
    "a\\b",
    "x" * 101,
    "",
]


@pytest.mark.parametrize(
    "name",
    BAD_NAMES,
    ids=["dotdot", "slash", "absolute", "hidden", "space", "suffix", "dotdot-only", "backslash", "long", "empty"],
)
def test_train_name_must_be_a_plain_name(pairs, tmp_path, capsys, name):
    before = snapshot(tmp_path)
    rc, _, err = run(["train", "--images", pairs, "--out", tmp_path / "models", "--name", name, *TRAIN], capsys)
    assert rc == 2 and "name" in error_line(err)
    unchanged(before, tmp_path)
    assert not list(tmp_path.rglob("*.safetensors"))


@pytest.mark.parametrize(
    "name, ok",
    [
        ("my-camera", True),
        ("v1.2+ft_3", True),
        ("dpn-release-drive", False),
        ("DPN-Drive", False),
        ("a b", False),
        ("-x", False),
    ],
)
def test_validate_model_name_is_the_widget_rule(name, ok):
    from napari_dpn.models import validate_model_name

    if ok:
        assert validate_model_name(f"  {name} ") == name
    else:
        with pytest.raises(InputError) as info:
            validate_model_name(name)
        one_sentence(info.value)


@pytest.mark.parametrize("existing", ["out.safetensors", "out.json"])
def test_import_caffe_never_replaces_existing_files(tmp_path, capsys, existing):
    src = _caffemodel(tmp_path)
    dst = tmp_path / "w"
    dst.mkdir()
    (dst / existing).write_text('{"an": "unrelated card"}')
    before = snapshot(tmp_path)
    rc, _, err = run(["import-caffe", src, dst / "out.safetensors"], capsys)
    assert rc == 2
    text = error_line(err)
    assert existing in text and "--overwrite" in text
    unchanged(before, tmp_path)


def test_import_caffe_overwrite_replaces(tmp_path, capsys):
    src = _caffemodel(tmp_path)
    (tmp_path / "out.json").write_text("{}")
    rc, out, _ = run(["import-caffe", src, tmp_path / "out.safetensors", "--overwrite"], capsys)
    assert rc == 0 and load_model(tmp_path / "out.safetensors").card.architecture == "dpn-release"
