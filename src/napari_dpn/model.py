"""The networks (the two DPNs) and their registry: architecture name -> class, input convention, output contract.

``dpn``          the paper's network (Guo, section 3): 95,988 parameters.
``dpn-release``  the network of the official Caffe release, whose DRIVE weights we import.

Both keep full resolution between blocks; each block looks at three scales
(full, 1/2, 1/4) and fuses them coarse-to-fine by concatenation.  In training
mode a model returns the logits of its four heads (three auxiliary, then the
main one); in evaluation mode it returns the main head's probability map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .architectures import ARCHITECTURES, FRESH_INPUT

# Smallest side the networks accept: the 1/4 branch must keep at least one pixel
# after the release's un-padded 5x5 pooling (defined in the torch-free image_io).
from .image_io import MIN_SIDE as MIN_SIDE


def _conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class _Heads(nn.Module):
    """Four 1x1 side outputs; the last one is the network's answer."""

    def __init__(self, channels: int = 16):
        super().__init__()
        self.heads = nn.ModuleList(_conv(channels, 1, 1) for _ in range(4))

    def forward(self, feats: list[torch.Tensor], training: bool):
        if training:
            return [h(f) for h, f in zip(self.heads, feats)]
        return torch.sigmoid(self.heads[-1](feats[-1]))


# --------------------------------------------------------------------------- paper


def _up2(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear 2x up-sampling cropped to ``like``'s size.

    A fixed factor of 2 (rather than resizing to the target size) keeps the block
    shift-equivariant, so tiled and whole-image inference agree exactly.
    """
    up = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    h, w = like.shape[-2:]
    return up[..., :h, :w]


class DPBlock(nn.Module):
    """Paper's DP-Block: branches of 16, 8, 8 filters at 1, 1/2, 1/4 scale.

    With ``residual`` it is the DPR-Block: the block output is summed with the
    block input and passed through one more 3x3 convolution.
    """

    def __init__(self, cin: int, residual: bool):
        super().__init__()
        self.b1 = _conv(cin, 16)
        self.b2 = _conv(cin, 8)
        self.b3 = _conv(cin, 8)
        self.b23 = _conv(16, 8)
        self.out = _conv(24, 16)
        self.res = _conv(16, 16) if residual else None
        if residual and cin != 16:
            raise ValueError("a DPR-Block needs 16 input channels to sum with its output")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = F.relu_(self.b1(x))
        x2 = F.max_pool2d(x, 3, 2, padding=1)  # ceil(H/2)
        x3 = F.max_pool2d(x, 5, 4, padding=2)  # ceil(H/4)
        f2 = F.relu_(self.b2(x2))
        f3 = F.relu_(self.b3(x3))
        f23 = F.relu_(self.b23(torch.cat([_up2(f3, f2), f2], 1)))
        y = F.relu_(self.out(torch.cat([_up2(f23, f1), f1], 1)))
        if self.res is not None:
            y = F.relu_(self.res(y + x))
        return y


class _EightBlocks(nn.Module):
    """Front 3x3 conv (3 -> 32), eight full-resolution blocks, heads after blocks 2, 4, 6, 8."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.front = _conv(3, 32)
        self.blocks = nn.ModuleList(blocks)
        self.heads = _Heads()
        xavier_init(self)

    def forward(self, x: torch.Tensor):
        x = F.relu_(self.front(x))
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i % 2 == 1:
                feats.append(x)
        return self.heads(feats, self.training)


class DPN(_EightBlocks):
    """The paper's Detail-Preserving Network: front conv, DP-Block, seven DPR-Blocks.

    Heads after DPR-Blocks 1, 3, 5 (auxiliary) and 7 (main).
    """

    architecture = "dpn"

    def __init__(self):
        super().__init__([DPBlock(32, residual=False)] + [DPBlock(16, residual=True) for _ in range(7)])


# --------------------------------------------------------------------------- release


def bilinear_kernel(channels: int = 8, size: int = 4) -> torch.Tensor:
    """Caffe's ``bilinear`` filler for an ungrouped deconvolution (every in/out pair the same)."""
    f = (size + 1) // 2
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    r = 1 - torch.abs(torch.arange(size, dtype=torch.float32) / f - c)
    k = r[:, None] * r[None, :]
    return k.expand(channels, channels, size, size).clone()


class _CaffeUp2(nn.Module):
    """Fixed k4 s2 deconvolution, cropped at offset 1 to the finer map (Caffe ``Crop``)."""

    weight: torch.Tensor  # buffers (register_buffer): typed here for the checker
    bias: torch.Tensor

    def __init__(self, channels: int = 8):
        super().__init__()
        self.register_buffer("weight", bilinear_kernel(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self._uniform: bool | None = None
        self._bilinear: bool | None = None

    @property
    def uniform(self) -> bool:
        """True when every in/out kernel pair is the same and there is no bias (Caffe's bilinear filler)."""
        if self._uniform is None:
            self._uniform = bool((self.weight == self.weight[:1, :1]).all()) and not bool(self.bias.any())
        return self._uniform

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.uniform:
            # Every output channel is the same sum of all upsampled inputs: upsample the sum once.
            return self.up_sum(x, like).expand(-1, self.weight.shape[1], -1, -1)
        h, w = like.shape[-2:]
        up = F.conv_transpose2d(x, self.weight, self.bias, stride=2)
        return up[..., 1 : 1 + h, 1 : 1 + w]

    def up_sum(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The one distinct output channel of a uniform deconvolution, (N, 1, h, w).

        With Caffe's bilinear kernel this is bilinear 2x up-sampling with zeros outside the map:
        interpolating the zero-padded sum gives it without oneDNN's one-channel deconvolution, which
        took 18 ms instead of 0.5 ms for some widths (e.g. 282, DRIVE's half width) on two threads.
        """
        h, w = like.shape[-2:]
        s = x.sum(1, keepdim=True)
        if self.bilinear:
            up = F.interpolate(F.pad(s, (1, 1, 1, 1)), scale_factor=2.0, mode="bilinear", align_corners=False)
            return up[..., 2 : 2 + h, 2 : 2 + w]
        up = F.conv_transpose2d(s, self.weight[:1, :1].to(x.dtype), stride=2)
        return up[..., 1 : 1 + h, 1 : 1 + w]

    @property
    def bilinear(self) -> bool:
        """True for Caffe's bilinear filler (what the release uses), the kernel ``up_sum`` can interpolate."""
        if self._bilinear is None:
            k = self.weight[:1, :1].detach().float().cpu()
            self._bilinear = self.uniform and bool(torch.equal(k, bilinear_kernel(1)))
        return self._bilinear

    def _load_from_state_dict(self, *args, **kwargs):
        self._uniform = self._bilinear = None  # re-check the fast paths for the loaded kernels
        super()._load_from_state_dict(*args, **kwargs)


def _conv_folded(conv: nn.Conv2d, up: torch.Tensor, f: torch.Tensor, copies: int = 8) -> torch.Tensor:
    """``conv(cat([up.expand(copies), f]))`` for a one-channel ``up``: fold the copies into the kernel."""
    w = conv.weight
    w = torch.cat([w[:, :copies].sum(1, keepdim=True), w[:, copies:]], 1)
    # A cropped one-channel view has no clear memory format, and torch.cat would then write the
    # 17 channels in NCHW order: the convolution after it, and every layer downstream, ran 2-4x
    # slower with channels_last weights (test_release_inference_stays_channels_last).
    fmt = torch.channels_last if f.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return F.conv2d(torch.cat([up.contiguous(memory_format=fmt), f], 1), w, conv.bias, padding=conv.padding)


class ReleaseBlock(nn.Module):
    """A block of the official release: the DP-Block, then concat(output, input) -> 3x3 conv."""

    def __init__(self, cin: int):
        super().__init__()
        self.b1 = _conv(cin, 16)
        self.b2 = _conv(cin, 8)
        self.b3 = _conv(cin, 8)
        self.b3_up = _CaffeUp2()
        self.b23 = _conv(16, 8)
        self.b23_up = _CaffeUp2()
        self.out = _conv(24, 16)
        self.res = _conv(16 + cin, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = F.relu_(self.b1(x))
        f2 = F.relu_(self.b2(F.max_pool2d(x, 3, 2, ceil_mode=True)))
        f3 = F.relu_(self.b3(F.max_pool2d(x, 5, 4, ceil_mode=True)))
        if not self.training and self.b3_up.uniform and self.b23_up.uniform:
            return self._forward_folded(x, f1, f2, f3)
        f23 = F.relu_(self.b23(torch.cat([self.b3_up(f3, f2), f2], 1)))
        y = F.relu_(self.out(torch.cat([self.b23_up(f23, f1), f1], 1)))
        return F.relu_(self.res(torch.cat([y, x], 1)))

    def _forward_folded(self, x, f1, f2, f3):
        """Inference with the uniform deconvolutions: the same result, about 25% faster on the CPU.

        The up-sampled map has 8 identical channels, so the next convolution can take the one
        channel with the sum of those 8 input-channel slices of its kernel (9 instead of 16 and
        17 instead of 24 input channels) and the 8 copies are never written out.  The weights are
        derived on the fly, so training and the state dict are untouched.
        """
        f23 = F.relu_(_conv_folded(self.b23, self.b3_up.up_sum(f3, f2), f2))
        y = F.relu_(_conv_folded(self.out, self.b23_up.up_sum(f23, f1), f1))
        if y.dtype == torch.float32:
            # fp32: two convolutions and a sum beat writing the 32-channel concatenation;
            # bf16 (AMX) is the other way round.
            w, n = self.res.weight, y.shape[1]
            out = F.conv2d(y, w[:, :n], self.res.bias, padding=1)
            return F.relu_(out.add_(F.conv2d(x, w[:, n:], padding=1)))
        return F.relu_(self.res(torch.cat([y, x], 1)))


class DPNRelease(_EightBlocks):
    """The network of the official release (guomugong/DPN), eight concatenating blocks."""

    architecture = "dpn-release"

    def __init__(self):
        super().__init__([ReleaseBlock(32)] + [ReleaseBlock(16) for _ in range(7)])


# --------------------------------------------------------------------------- helpers


def xavier_init(model: nn.Module) -> None:
    """Caffe's ``xavier`` filler (the paper's initialisation): U(-a, a), a = sqrt(3 / fan_in); zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            bound = (3.0 / fan_in) ** 0.5
            with torch.no_grad():
                m.weight.uniform_(-bound, bound)
            assert m.bias is not None  # every convolution of these networks has a bias
            nn.init.zeros_(m.bias)


def flush_denormals_(model: nn.Module) -> int:
    """Set subnormal weights (|w| < 1.2e-38) to zero, in place; returns how many there were.

    The release's Caffe weights hold thousands of them (filters that weight decay drove to
    nothing); every multiply with one takes a slow microcode path on x86, which made the
    fp32 CPU forward about 2.5x slower.  Zeroing them changes outputs far below float32 resolution.
    """
    n = 0
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                sub = (t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)
                k = int(sub.sum())
                if k:
                    t.masked_fill_(sub, 0.0)
                    n += k
    return n


# --------------------------------------------------------------------------- registry


class SegmentationNetwork(Protocol):
    """The output contract every registered network keeps (what training, inference and the
    checkpoints rely on).

    Input: a float tensor ``(N, 3, H, W)`` prepared by the card's input convention
    (``Network.input`` for a fresh network: channel order, scale, mean, std, CLAHE), any
    ``H, W >= MIN_SIDE``; the output has the input's ``H, W`` (full resolution, no cropping), and
    a pixel's answer does not depend on where the image is cut (tiled inference relies on it).

    ``forward`` in training mode (``model.train()``): a list of four logit maps ``(N, 1, H, W)``,
    three auxiliary heads then the main one, in the order of ``training.HEAD_NAMES``
    (``dpn_loss`` weighs them; ``--no-aux`` trains the last alone).  In evaluation mode
    (``model.eval()``): the main head's vessel probability ``(N, 1, H, W)`` in 0..1 (a sigmoid
    applied), the map ``segment`` thresholds.  ``architecture`` names its registry entry (saved
    in the model card and in checkpoints).
    """

    architecture: str

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]: ...


@dataclass(frozen=True)
class Network:
    """A registry entry: how to build a fresh network of this architecture and how it reads images."""

    name: str
    build: Callable[[], nn.Module]
    input: dict  # the input convention of a fresh network (a model card's ``input``)
    summary: str = ""


NETWORKS: dict[str, Network] = {}


def register_network(name: str, build: Callable[[], nn.Module], input: dict | None = None, summary: str = "") -> None:
    """Add a network: ``build()`` returns a fresh :class:`SegmentationNetwork` whose ``architecture``
    is ``name``; it is then a choice of ``napari-dpn train --arch`` and a model card's architecture."""
    NETWORKS[name] = Network(name, build, dict(FRESH_INPUT if input is None else input), summary)
    if name not in ARCHITECTURES:
        ARCHITECTURES.append(name)  # the torch-free list models.py checks cards against


register_network("dpn", DPN, summary="the paper's network (Guo, section 3)")
register_network("dpn-release", DPNRelease, summary="the network of the official Caffe release")


def build_model(architecture: str) -> nn.Module:
    """A freshly initialised network of the named architecture (see :data:`NETWORKS`)."""
    network = NETWORKS.get(architecture)
    if network is None:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(NETWORKS)}")
    return network.build()


def count_parameters(model: nn.Module, learnable_only: bool = True) -> int:
    n = sum(p.numel() for p in model.parameters())
    if not learnable_only:
        n += sum(b.numel() for b in model.buffers())
    return n
