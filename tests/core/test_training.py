import math
import shutil

import numpy as np
import pytest
import torch

from napari_dpn import training
from napari_dpn.errors import TrainingError
from napari_dpn.model import build_model
from napari_dpn.training import (
    CancelledEvent,
    MessageEvent,
    StepEvent,
    TrainConfig,
    balanced_bce,
    class_balance_beta,
    dpn_loss,
    load_checkpoint,
    param_groups,
    train,
    trainer,
)
from synthetic_fundus import fundus

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # bit-identical losses (conftest.py)


TRAIN = [fundus(64, seed=s) for s in range(3)]
VAL = [fundus(64, seed=s) for s in (10, 11)]


def cfg(**kw):
    base = dict(steps=8, crop=40, seed=3, device="cpu", val_every=0, checkpoint_every=0, name="t")
    return TrainConfig(**{**base, **kw})


# --------------------------------------------------------------------------- loss


def test_beta_is_computed_from_the_label():
    label = torch.zeros(2, 1, 4, 4)
    label[0, 0, 0, :3] = 1  # 3 of 16 vessel
    label[1, 0, :2, :] = 1  # 8 of 16
    np.testing.assert_allclose(class_balance_beta(label).numpy(), [13 / 16, 8 / 16])
    mask = torch.zeros_like(label)
    mask[:, :, 0, :] = 1  # only the first row counts: 3 of 4, 4 of 4 vessel
    np.testing.assert_allclose(class_balance_beta(label, mask).numpy(), [1 / 4, 0 / 4])


def test_balanced_loss_matches_hand_computation():
    z = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    y = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    p = 1 / (1 + np.exp(-z.numpy().ravel()))
    beta = 3 / 4  # N- = 3, N+ = 1
    expected = -(beta * math.log(p[0]) + (1 - beta) * sum(math.log(1 - q) for q in p[1:])) / 4
    assert balanced_bce(z, y).item() == pytest.approx(expected, rel=1e-6)
    # with a FOV mask the last pixel is not counted: beta = 2/3 over 3 pixels
    m = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]])
    expected = -(2 / 3 * math.log(p[0]) + 1 / 3 * (math.log(1 - p[1]) + math.log(1 - p[2]))) / 3
    assert balanced_bce(z, y, m).item() == pytest.approx(expected, rel=1e-6)
    # stable for saturated logits (a naive log(sigmoid) gives inf)
    assert math.isfinite(balanced_bce(torch.tensor([[[[200.0, -200.0]]]]), torch.tensor([[[[0.0, 1.0]]]])).item())


def test_total_loss_sums_the_four_heads_or_only_the_main_one():
    y = (torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    outs = [torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    total, heads = dpn_loss(outs, y)
    assert len(heads) == 4 and total.item() == pytest.approx(sum(h.item() for h in heads))
    main, _ = dpn_loss(outs, y, aux_heads=False)
    assert main.item() == pytest.approx(heads[-1].item())


def test_param_groups_decay_conv_weights_only():
    model = build_model("dpn")
    groups = param_groups(model, 1e-3, 5e-4)
    n = sum(p.numel() for g in groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())
    names = {id(p): k for k, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            is_bias = names[id(p)].endswith("bias")
            assert g["weight_decay"] == (0.0 if is_bias else 5e-4)
            head = names[id(p)].startswith("heads.")
            assert g["lr"] == pytest.approx(1e-3 * (0.1 if head else 1) * (2 if is_bias else 1))
    plain = param_groups(model, 1e-3, 5e-4, caffe_lr_mults=False)
    assert {g["lr"] for g in plain} == {1e-3}


@pytest.mark.parametrize(
    "convention",
    [
        {"channel_order": "RGB", "scale": 1.0, "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.1], "clahe": False},
        {"channel_order": "BGR", "scale": 255.0, "mean": [0, 0, 0], "std": [1, 1, 1], "clahe": False},
    ],
)
def test_training_input_equals_inference_input(convention):
    from napari_dpn.preprocess import normalise

    crops = np.random.default_rng(0).integers(0, 256, (2, 16, 12, 3), dtype=np.uint8)
    got = training.network_input(crops, convention, torch.device("cpu"))
    want = np.stack([normalise(c.astype(np.float32) / 255, convention) for c in crops])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------- training runs


def test_short_training_lowers_loss_and_raises_auc(tmp_path):
    from napari_dpn.architectures import FRESH_INPUT
    from napari_dpn.models import load_model

    result = train(cfg(steps=100, crop=48, seed=0), TRAIN, VAL, out_dir=tmp_path)
    first, last = np.mean(result.losses[:15]), np.mean(result.losses[-15:])
    assert last < 0.5 * first, (first, last)
    before, after = result.metrics_before["auc"], result.metrics_after["auc"]
    assert after > 0.9 and after > before + 0.1, (before, after)
    loaded = load_model(result.model_path)
    assert loaded.card.threshold == pytest.approx(result.metrics_after["threshold"])
    assert loaded.card.input == {**FRESH_INPUT, "clahe": False}
    assert loaded.card.training["steps"] == 100 and loaded.card.training["n_images"] == 3
    assert loaded.card.metrics["before"]["auc"] == pytest.approx(before)


def test_same_seed_same_losses(tmp_path):
    a = train(cfg(), TRAIN, out_dir=tmp_path / "a").losses
    b = train(cfg(), TRAIN, out_dir=tmp_path / "b").losses
    c = train(cfg(seed=4), TRAIN, out_dir=tmp_path / "c").losses
    assert a == b and a != c


def test_cancel_leaves_checkpoint_and_resume_matches_uninterrupted(tmp_path):
    full = train(cfg(steps=10), TRAIN, out_dir=tmp_path / "full")
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 4  # True before the 5th step: 4 steps done

    events = []
    part = train(cfg(steps=10), TRAIN, out_dir=tmp_path / "part", should_stop=stop, callback=events.append)
    assert part.cancelled and part.steps == 4 and part.model_path is None
    assert any(isinstance(e, CancelledEvent) and e.step == 4 for e in events)
    ck = load_checkpoint(part.checkpoint)
    assert ck["step"] == 4
    model = build_model(ck["architecture"])
    model.load_state_dict(ck["model"])
    assert part.losses == full.losses[:4]

    resumed = train(cfg(steps=10), TRAIN, out_dir=tmp_path / "part", resume=part.checkpoint)
    assert resumed.steps == 10 and not resumed.cancelled
    assert resumed.losses == full.losses  # identical from step 5 on
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0)


def test_a_resumed_run_takes_the_learning_rate_it_is_given(tmp_path):
    """Adam's saved state carries the old rate; a lower --lr for the last phase must still apply."""
    part = train(cfg(steps=4, lr=1e-3), TRAIN, out_dir=tmp_path / "a")
    for run in ("same", "lower"):
        (tmp_path / run).mkdir()
        shutil.copy(part.checkpoint, tmp_path / run)

    def resume(run, lr):
        events = []
        result = train(
            cfg(steps=6, lr=lr),
            TRAIN,
            out_dir=tmp_path / run,
            resume=tmp_path / run / "t.ckpt.pt",
            callback=events.append,
        )
        return result, [e.text for e in events if isinstance(e, MessageEvent)]

    same, said = resume("same", 1e-3)
    assert not any("learning rate" in text for text in said)
    lower, said = resume("lower", 1e-4)
    assert any(text.startswith("learning rate 0.0001 from here on") for text in said)
    rates = {round(g["lr"] / g["lr_mult"], 12) for g in load_checkpoint(lower.checkpoint)["optimizer"]["param_groups"]}
    assert rates == {1e-4}
    assert lower.card.training["lr_changes"] == [{"step": 4, "lr": 1e-4, "was": 1e-3}]
    assert same.card.training["lr_changes"] == []
    assert lower.losses[:5] == same.losses[:5] and lower.losses[5] != same.losses[5]


def test_time_limit_finishes_at_the_step_reached_and_resume_continues(tmp_path, monkeypatch):
    full = train(cfg(steps=8), TRAIN, out_dir=tmp_path / "full")
    ticks = iter(range(1000))
    monkeypatch.setattr(trainer, "_clock", lambda: float(next(ticks)))  # one second per look at the clock
    events = []
    part = train(cfg(steps=8, time_limit=3.5), TRAIN, out_dir=tmp_path / "part", callback=events.append)
    assert not part.cancelled and part.steps == 3 and part.model_path.is_file()
    card = part.card.training
    assert card["steps"] == 3 and card["steps_planned"] == 8
    assert card["stopped_early"] == "time limit of 3.5 s reached after 3 of 8 steps"
    assert part.card.description.endswith("(3 steps of the 8 planned: stopped by its time limit)")
    assert any(isinstance(e, MessageEvent) and e.text == card["stopped_early"] for e in events)
    assert part.losses == full.losses[:3]
    resumed = train(cfg(steps=8), TRAIN, out_dir=tmp_path / "part", resume=part.checkpoint)
    assert resumed.steps == 8 and resumed.losses == full.losses
    assert resumed.card.training["stopped_early"] is None
    with pytest.raises(TrainingError, match="time limit must be positive"):
        train(cfg(time_limit=0), TRAIN, out_dir=tmp_path / "bad")


def test_nan_loss_stops_and_keeps_last_good_weights(tmp_path, monkeypatch):
    ref = train(cfg(steps=3), TRAIN, out_dir=tmp_path / "ref")
    real = training.dpn_loss
    calls = []

    def poisoned(*a, **kw):
        total, heads = real(*a, **kw)
        calls.append(1)
        return (total * float("nan"), heads) if len(calls) == 5 else (total, heads)

    monkeypatch.setattr(trainer, "dpn_loss", poisoned)
    with pytest.raises(TrainingError, match="NaN") as err:
        train(cfg(steps=10), TRAIN, out_dir=tmp_path / "nan")
    assert "step 5" in str(err.value) and "t.ckpt.pt" in str(err.value)
    # The weights after 4 updates gave the NaN, so the last weights known good are those after 3.
    ck = load_checkpoint(tmp_path / "nan" / "t.ckpt.pt")
    assert ck["step"] == 3 and "(step 3)" in str(err.value)
    for k, v in ref.model.state_dict().items():
        torch.testing.assert_close(ck["model"][k], v, rtol=0, atol=0)


def test_exploding_learning_rate_is_caught(tmp_path):
    with pytest.raises(TrainingError, match="learning rate below") as err:
        train(cfg(steps=20, lr=1e6), TRAIN, out_dir=tmp_path)
    ck = load_checkpoint(tmp_path / "t.ckpt.pt")
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    assert ck["step"] < 20, str(err.value)


def test_main_head_only_and_fine_tune_keep_the_base_input_convention(tmp_path):
    from napari_dpn.models import LoadedModel, ModelCard, load_model

    base = LoadedModel(
        build_model("dpn-release").eval(),
        ModelCard(
            name="base",
            architecture="dpn-release",
            input={"channel_order": "BGR", "scale": 255.0, "mean": [0, 0, 0], "std": [1, 1, 1], "clahe": False},
        ),
    )
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    events = []
    result = train(cfg(steps=3, aux_heads=False), TRAIN, init=base, out_dir=tmp_path, callback=events.append)
    head_losses = [e.head_losses for e in events if isinstance(e, StepEvent)]
    assert all(
        e.loss == pytest.approx(h["main"]) for e, h in zip([e for e in events if isinstance(e, StepEvent)], head_losses)
    )
    card = load_model(result.model_path).card
    assert card.architecture == "dpn-release" and card.base_model == "base"
    assert card.input["channel_order"] == "BGR" and card.input["scale"] == 255.0
    assert card.threshold_rule.startswith("accuracy-maximising point on the 3 training images")  # issue #20 item 4
    for k, v in base.model.state_dict().items():  # the caller's model is not modified
        torch.testing.assert_close(v, before[k])


# --------------------------------------------------------------------------- bad input


def test_bad_pairs_get_clear_messages(tmp_path):
    rgb, label, fov = TRAIN[0]
    with pytest.raises(TrainingError, match="no training images"):
        train(cfg(), [], out_dir=tmp_path)
    with pytest.raises(TrainingError, match=r"annotation is 60x64 but the image is 64x64"):
        train(cfg(), [(rgb, label[:, :60], fov)], out_dir=tmp_path)
    with pytest.raises(TrainingError, match="no vessel pixels"):
        train(cfg(), [(rgb, np.zeros_like(label), fov)], out_dir=tmp_path)
    with pytest.raises(TrainingError, match="FOV mask is 64x32"):
        train(cfg(), [(rgb, label, fov[:32])], out_dir=tmp_path)
    with pytest.raises(TrainingError, match="validation image 1: the annotation has no vessel"):
        train(cfg(), TRAIN, [(rgb, np.zeros_like(label), fov)], out_dir=tmp_path)


def test_missing_fov_is_estimated_and_reported(tmp_path):
    events = []
    rgb, label, _ = TRAIN[0]
    result = train(cfg(steps=2), [(rgb, label, None), (rgb, label)], out_dir=tmp_path, callback=events.append)
    notes = [e.text for e in events if isinstance(e, MessageEvent) and "FOV" in e.text]
    assert len(notes) == 2 and all("no FOV mask given; estimated it" in n for n in notes)
    assert result.steps == 2


# --------------------------------------------------------------------------- command line


def test_train_command_on_a_folder(tmp_path, capsys):
    from skimage.io import imsave

    from napari_dpn.annotations import annotation_paths
    from napari_dpn.cli import main

    for i, (rgb, label, fov) in enumerate(TRAIN[:2]):
        img = tmp_path / "data" / f"eye{i}.png"
        img.parent.mkdir(exist_ok=True)
        imsave(img, (rgb * 255).astype(np.uint8), check_contrast=False)
        lab, fv = annotation_paths(img)
        imsave(lab, label.astype(np.uint8) * 255, check_contrast=False)
        imsave(fv, fov.astype(np.uint8) * 255, check_contrast=False)
    out = tmp_path / "out"
    rc = main(
        [
            "train",
            "--images",
            str(tmp_path / "data"),
            "--steps",
            "3",
            "--crop",
            "32",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--name",
            "mine",
            "--quiet",
        ]
    )
    assert rc == 0
    assert (out / "mine.safetensors").is_file() and (out / "mine.json").is_file()
    assert "saved mine" in capsys.readouterr().out
    rc = main(
        [
            "train",
            "--images",
            str(tmp_path / "data"),
            "--resume",
            str(out / "mine.ckpt.pt"),
            "--steps",
            "5",
            "--device",
            "cpu",
            "--quiet",
            "--log-every",
            "2",
            "--time-limit",
            "600",
        ]
    )
    assert rc == 0 and load_checkpoint(out / "mine.ckpt.pt")["step"] == 5
    err = capsys.readouterr().err
    assert "step 4/5: loss " in err and "ms/step" in err and "step 5/5" not in err
    assert load_checkpoint(out / "mine.ckpt.pt")["config"]["time_limit"] == 600

    rc = main(["train", "--images", str(tmp_path), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "napari-dpn: error: no annotated images" in err and "_vessels.png" in err


def test_ctrl_c_leaves_a_consistent_checkpoint(tmp_path):
    def interrupt(event):
        if isinstance(event, StepEvent) and event.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg(steps=10), TRAIN, out_dir=tmp_path, callback=interrupt)
    ck = load_checkpoint(tmp_path / "t.ckpt.pt")
    # the interrupt may land inside an update, so the weights from before it are kept
    assert ck["step"] == 2 and len(ck["losses"]) == 2


def test_max_accuracy_threshold_rule_and_caffe_equivalent_weight_decay(tmp_path):
    from napari_dpn.metrics import choose_train_threshold
    from napari_dpn.models import load_model

    result = train(cfg(steps=2, threshold_rule="max_acc"), TRAIN, out_dir=tmp_path)
    card = load_model(result.model_path).card
    assert card.threshold_rule == "accuracy-maximising point on the 3 training images"
    probs = [predict_model(result.model_path, rgb) for rgb, _, _ in TRAIN]
    want = choose_train_threshold(probs, [lab for _, lab, _ in TRAIN], [f for _, _, f in TRAIN], rule="max_acc")
    assert card.threshold == pytest.approx(want, abs=1e-6)
    ck = torch.load(result.checkpoint, weights_only=False)
    decays = {g["weight_decay"] for g in ck["optimizer"]["param_groups"]}
    crop = ck["config"]["crop"]
    assert sorted(decays) == pytest.approx([0.0, 5e-4 / crop**2])  # biases none; conv weights lambda per crop pixel


def predict_model(path, rgb):
    from napari_dpn.inference import predict
    from napari_dpn.models import load_model

    return predict(load_model(path), rgb, device="cpu", precision="fp32").probability


def test_any_camera_training_equalises_each_crop_after_the_jitter(tmp_path):
    """augment_mode 'robust' with CLAHE keeps plain RGB views and equalises in the sampler."""
    from napari_dpn.training.trainer import _Trainer

    t = _Trainer(cfg(steps=2, augment_mode="robust", clahe=True), TRAIN, None, None, tmp_path, None, None, None, None)
    assert t.sampler.clahe and t.input["clahe"] and not t.crop_input["clahe"]
    np.testing.assert_array_equal(t.sampler.views[0].image, trainer.augment.to_uint8(t.train[0].rgb))
    result = train(cfg(steps=2, augment_mode="robust", clahe=True), TRAIN, out_dir=tmp_path / "run")
    assert result.steps == 2 and result.card.input["clahe"] and all(math.isfinite(v) for v in result.losses)


def test_an_ablation_run_leaves_its_parts_out_and_says_so(tmp_path):
    """--augment-off reaches the sampler and the card; it only makes sense with the any-camera mode."""
    from napari_dpn.training.trainer import _Trainer

    off = cfg(steps=1, augment_mode="robust", clahe=True, augment_off=("noise", "jpeg", "noise"))
    t = _Trainer(off, TRAIN, None, None, tmp_path, None, None, None, None)
    assert t.sampler.photometric.noise_p == t.sampler.photometric.jpeg_p == 0 and t.sampler.photometric.blur_p > 0
    result = train(off, TRAIN, out_dir=tmp_path / "run")
    assert list(result.card.training["settings"]["augment_off"]) == ["jpeg", "noise"]
    with pytest.raises(TrainingError, match="needs the any-camera augmentation"):
        train(cfg(augment_off=("noise",)), TRAIN, out_dir=tmp_path / "bad")
    with pytest.raises(TrainingError, match="unknown augmentation part"):
        train(cfg(augment_mode="robust", augment_off=("hue",)), TRAIN, out_dir=tmp_path / "bad")


def test_averaged_checkpoints_finish_as_a_model_that_says_so(tmp_path):
    """Weight averaging: the mean of one run's checkpoints, finished by resuming at the last step."""
    first = train(cfg(steps=4), TRAIN, out_dir=tmp_path / "run")
    early = shutil.copy(first.checkpoint, tmp_path / "step4.ckpt.pt")
    later = train(cfg(steps=8), TRAIN, out_dir=tmp_path / "run", resume=first.checkpoint)
    avg_path = training.average_checkpoints([later.checkpoint, early], tmp_path / "avg.ckpt.pt")
    avg, a, b = (load_checkpoint(p) for p in (avg_path, early, later.checkpoint))
    assert avg["averaged_steps"] == [4, 8] and avg["step"] == 8
    for k, v in avg["model"].items():
        torch.testing.assert_close(v, (a["model"][k] + b["model"][k]) / 2)
    assert any(not torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # two different states

    done = train(cfg(steps=8), TRAIN, out_dir=tmp_path / "avg", resume=avg_path)
    assert done.steps == 8 and done.model_path.is_file()
    assert done.card.training["weights_averaged_over_steps"] == [4, 8]
    assert done.card.description.endswith("; weights: the mean of the checkpoints at steps [4, 8]")
    for k, v in done.model.state_dict().items():
        torch.testing.assert_close(v, avg["model"][k], rtol=0, atol=0)
    more = train(cfg(steps=10), TRAIN, out_dir=tmp_path / "avg", resume=done.checkpoint)
    assert "weights_averaged_over_steps" not in more.card.training  # trained on: no longer the mean

    other = train(cfg(steps=5, crop=32), [fundus(64, seed=7)], out_dir=tmp_path / "other")
    with pytest.raises(TrainingError, match="different images"):
        training.average_checkpoints([early, other.checkpoint], tmp_path / "bad.ckpt.pt")
    with pytest.raises(TrainingError, match="at least two"):
        training.average_checkpoints([early], tmp_path / "bad.ckpt.pt")
