"""The paper's loss (eq. 1-3) and the optimiser's parameter groups (decay, the release's lr multipliers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

HEAD_NAMES = ("aux1", "aux2", "aux3", "main")


def class_balance_beta(label: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 2 per image: beta = N- / (N+ + N-) over the counted pixels; shape (N,)."""
    label = label.float()
    w = torch.ones_like(label) if mask is None else mask.float()
    n = w.sum(dim=(1, 2, 3))
    n_pos = (w * label).sum(dim=(1, 2, 3))
    return (n - n_pos) / n.clamp_min(1)


def balanced_bce(logits: torch.Tensor, label: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 1 from logits, mean over the counted pixels of each image, then over the batch.

    ``-(beta * sum_{y=1} log p + (1 - beta) * sum_{y=0} log(1 - p)) / n_counted``.
    """
    label = label.to(logits.dtype)
    w = torch.ones_like(logits) if mask is None else mask.to(logits.dtype)
    beta = class_balance_beta(label, w).view(-1, 1, 1, 1)
    per_pixel = beta * label * F.logsigmoid(logits) + (1 - beta) * (1 - label) * F.logsigmoid(-logits)
    per_image = -(per_pixel * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3)).clamp_min(1)
    return per_image.mean()


def dpn_loss(
    outputs: Sequence[torch.Tensor], label: torch.Tensor, mask: torch.Tensor | None = None, aux_heads: bool = True
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Eq. 3 without the L2 term (that is the optimiser's weight decay): the sum of the heads' losses.

    Returns (total, per-head losses); without ``aux_heads`` only the main head counts.
    """
    per_head = [balanced_bce(o.float(), label, mask) for o in outputs]
    total = cast(torch.Tensor, sum(per_head)) if aux_heads else per_head[-1]
    return total, per_head


def param_groups(model: nn.Module, lr: float, weight_decay: float, caffe_lr_mults: bool = True) -> list[dict]:
    """Adam parameter groups: decay on conv weights only; optionally the release's lr multipliers."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_bias = name.endswith("bias")
        mult = 1.0
        if caffe_lr_mults:
            mult = (0.1 if name.startswith("heads.") else 1.0) * (2.0 if is_bias else 1.0)
        groups.setdefault((mult, 0.0 if is_bias else weight_decay), []).append(p)
    return [{"params": ps, "lr": lr * m, "weight_decay": wd, "lr_mult": m} for (m, wd), ps in groups.items()]
