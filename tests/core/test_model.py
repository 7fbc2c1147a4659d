"""The two networks: sizes, parameter counts, heads, and the release net against a NumPy reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import signal

from napari_dpn.model import (
    ARCHITECTURES,
    MIN_SIDE,
    DPNRelease,
    _CaffeUp2,
    bilinear_kernel,
    build_model,
    count_parameters,
    flush_denormals_,
)


def test_paper_parameter_count_matches_section_3():
    m = build_model("dpn")
    assert count_parameters(m) == 95_988
    assert sum(p.numel() for p in m.blocks[0].parameters()) == 13_880  # DP-Block
    assert all(sum(p.numel() for p in b.parameters()) == 11_592 for b in m.blocks[1:])  # DPR-Blocks
    assert len(m.blocks) == 8


def test_release_numbers_match_the_caffemodel():
    m = build_model("dpn-release")
    assert count_parameters(m) == 119_044
    assert count_parameters(m, learnable_only=False) == 135_556  # + 16 fixed deconvolutions


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("hw", [(MIN_SIDE, MIN_SIDE), (9, 13), (31, 17), (64, 65), (101, 77)])
def test_output_has_input_size(arch, hw):
    m = build_model(arch).eval()
    with torch.no_grad():
        y = m(torch.rand(1, 3, *hw))
    assert y.shape == (1, 1, *hw)
    assert float(y.min()) >= 0 and float(y.max()) <= 1


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_training_mode_returns_four_head_logits(arch):
    m = build_model(arch).train()
    outs = m(torch.rand(2, 3, 24, 20))
    assert len(outs) == 4 and all(o.shape == (2, 1, 24, 20) for o in outs)
    # logits, not probabilities: the last head before the sigmoid equals eval output's logit
    m.eval()
    with torch.no_grad():
        p = m(torch.zeros(1, 3, 24, 20))
    m.train()
    with torch.no_grad():
        logit = m(torch.zeros(1, 3, 24, 20))[-1]
    assert torch.allclose(torch.sigmoid(logit), p, atol=1e-6)


def test_bilinear_kernel_is_caffes_filler():
    k = bilinear_kernel(8, 4)
    r = np.array([0.25, 0.75, 0.75, 0.25])
    assert k.shape == (8, 8, 4, 4)
    np.testing.assert_allclose(k[3, 5].numpy(), np.outer(r, r))


# ------------------------------------------------------------------ independent NumPy reference of Caffe's layers


def _conv(x, w, b):
    """Caffe convolution, 3x3 pad 1 or 1x1: x (C,H,W), w (O,C,k,k)."""
    k = w.shape[-1]
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p)))
    out = np.empty((w.shape[0],) + x.shape[1:])
    for o in range(w.shape[0]):
        out[o] = sum(signal.correlate2d(xp[c], w[o, c], mode="valid") for c in range(x.shape[0])) + b[o]
    return out


def _pool(x, k, s):
    """Caffe max pooling, no pad, output size rounded up (windows clipped at the border)."""
    c, h, w = x.shape
    oh, ow = -(-(h - k) // s) + 1, -(-(w - k) // s) + 1
    out = np.empty((c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = x[:, i * s : min(i * s + k, h), j * s : min(j * s + k, w)].max(axis=(1, 2))
    return out


def _deconv_crop(x, w, b, like):
    """Caffe Deconvolution k4 s2 (scatter-add), then Crop at offset 1 to ``like``'s size."""
    c, h, wd = x.shape
    out = np.zeros((w.shape[1], 2 * h + 2, 2 * wd + 2))
    for i in range(h):
        for j in range(wd):
            out[:, 2 * i : 2 * i + 4, 2 * j : 2 * j + 4] += np.einsum("c,cokl->okl", x[:, i, j], w)
    out += b[:, None, None]
    return out[:, 1 : 1 + like.shape[1], 1 : 1 + like.shape[2]]


def _release_reference(sd, x):
    relu = lambda a: np.maximum(a, 0)  # noqa: E731
    g = lambda k: sd[k].numpy().astype(np.float64)  # noqa: E731
    x = relu(_conv(x, g("front.weight"), g("front.bias")))
    feats = []
    for n in range(8):
        p = f"blocks.{n}."
        c = lambda name, t: relu(_conv(t, g(p + name + ".weight"), g(p + name + ".bias")))  # noqa: E731
        f1 = c("b1", x)
        f2 = c("b2", _pool(x, 3, 2))
        f3 = c("b3", _pool(x, 5, 4))
        f23 = c("b23", np.concatenate([_deconv_crop(f3, g(p + "b3_up.weight"), g(p + "b3_up.bias"), f2), f2]))
        y = c("out", np.concatenate([_deconv_crop(f23, g(p + "b23_up.weight"), g(p + "b23_up.bias"), f1), f1]))
        x = c("res", np.concatenate([y, x]))
        if n % 2 == 1:
            feats.append(x)
    logit = _conv(feats[-1], g("heads.heads.3.weight"), g("heads.heads.3.bias"))[0]
    return 1 / (1 + np.exp(-logit))


@pytest.mark.parametrize("hw", [(13, 11), (16, 21)])
def test_release_matches_numpy_reference(hw):
    torch.manual_seed(1)
    m = DPNRelease().eval()
    with torch.no_grad():  # small weights keep the ReLUs alive and the output away from saturation
        for p in m.parameters():
            p.mul_(0.7)
    x = np.random.default_rng(0).random((3, *hw))
    with torch.no_grad():
        got = m(torch.from_numpy(x).float()[None])[0, 0].double().numpy()
    want = _release_reference(m.state_dict(), x)
    assert want.std() > 1e-4  # the reference output is not flat
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_release_general_deconvolution_path_when_kernels_differ():
    """Fine-tuned or foreign kernels that are not all equal must use the full deconvolution."""
    torch.manual_seed(2)
    m = DPNRelease().eval()
    sd = m.state_dict()
    sd["blocks.0.b3_up.weight"] = torch.rand(8, 8, 4, 4)
    m.load_state_dict(sd)
    x = np.random.default_rng(1).random((3, 12, 12))
    with torch.no_grad():
        got = m(torch.from_numpy(x).float()[None])[0, 0].double().numpy()
    np.testing.assert_allclose(got, _release_reference(m.state_dict(), x), atol=2e-5)


def test_paper_block_is_shift_equivariant_by_four():
    """Tiled inference relies on this: shifting the input by 4 px shifts the output by 4 px."""
    torch.manual_seed(3)
    m = build_model("dpn").eval()
    x = torch.rand(1, 3, 80, 80)
    with torch.no_grad():
        a = m(x)[..., 40:60, 40:60]
        b = m(x[..., 4:, 4:])[..., 36:56, 36:56]
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("hw", [(MIN_SIDE, MIN_SIDE), (37, 50)])
def test_release_folded_inference_equals_the_unfolded_network(hw):
    """Eval mode folds the 8 identical up-sampled channels into the next kernels; training mode does not."""
    torch.manual_seed(4)
    m = DPNRelease()
    keys = list(m.state_dict())
    x = torch.rand(1, 3, *hw)
    with torch.no_grad():
        unfolded = torch.sigmoid(m.train()(x)[-1])  # training mode: the plain cat + conv path
        folded = m.eval()(x)
    assert list(m.state_dict()) == keys
    assert torch.allclose(folded, unfolded, atol=1e-5)


@pytest.mark.parametrize("hw, like", [((146, 141), (292, 282)), ((292, 282), (584, 565)), ((3, 4), (6, 9))])
def test_bilinear_up_sum_equals_the_caffe_deconvolution(hw, like):
    """up_sum interpolates instead of deconvolving (a oneDNN slow path): same numbers, odd sizes too."""
    up = _CaffeUp2()
    x = torch.rand(2, 8, *hw)
    ref = F.conv_transpose2d(x.sum(1, keepdim=True), up.weight[:1, :1], stride=2)[..., 1 : 1 + like[0], 1 : 1 + like[1]]
    assert up.bilinear
    torch.testing.assert_close(up.up_sum(x, torch.empty(1, 1, *like)), ref, atol=2e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_release_inference_stays_channels_last(monkeypatch, dtype):
    """The folded path once wrote NCHW concatenations, which made every later layer 2-4x slower."""
    m = DPNRelease().eval().to(memory_format=torch.channels_last)
    conv2d, seen = F.conv2d, []

    def spy(x, *args, **kwargs):
        seen.append((tuple(x.shape), x.is_contiguous(memory_format=torch.channels_last)))
        return conv2d(x, *args, **kwargs)

    monkeypatch.setattr(F, "conv2d", spy)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        m(torch.rand(1, 3, 40, 37).contiguous(memory_format=torch.channels_last))
    assert len(seen) > 40 and [s for s in seen if not s[1]] == []


def test_release_training_still_gets_gradients_everywhere():
    m = DPNRelease().train()
    sum(o.sum() for o in m(torch.rand(1, 3, 20, 20))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in m.named_parameters() if "heads" not in n)


def test_flush_denormals_zeroes_only_subnormal_weights():
    m = build_model("dpn-release").eval()
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        m.blocks[0].b2.weight[0] = 1e-40  # a filter that weight decay drove to nothing
        before = m(x)
        w = m.blocks[0].b2.weight.clone()
    assert flush_denormals_(m) == w[0].numel()
    assert (m.blocks[0].b2.weight[0] == 0).all() and torch.equal(m.blocks[0].b2.weight[1:], w[1:])
    with torch.no_grad():
        assert torch.equal(m(x), before)
    assert flush_denormals_(m) == 0
