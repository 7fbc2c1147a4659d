"""The training engine: the paper's loss and optimiser, with checkpoints, resume and cancel.

What the paper (sections 3.3, 4.2, 4.3) and the official release fix, and what we chose:

* Loss: class-balanced cross-entropy (eq. 1-2) on each of the four heads, summed (eq. 3).
  beta = N- / (N+ + N-) is recomputed every iteration from the label being trained on (per
  image of the batch).  It is computed from logits with ``logsigmoid`` so it never takes the
  log of a saturated sigmoid.
* Counted pixels (``fov_only``): the release's Caffe data layer counts the whole crop.  We
  count only pixels inside the FOV by default: the black border, the zero padding of small
  images and the corners rotated in by the 22/45/... degree views are not "annotated
  background" but no image at all; counting them adds trivially easy negatives that shift beta
  towards vessels and the loss towards the border, and user annotations often leave the
  outside of the fundus unlabelled.  ``fov_only=False`` reproduces the release.
* Normalisation: Caffe's HED-style loss layer sums over pixels.  We divide by the number of
  counted pixels, so the loss reads the same for any crop size, batch size or FOV coverage.
  Adam's steps do not depend on the scale of the loss, so this changes nothing for the data
  term; the weight decay is scaled to match: the paper's lambda (5e-4) acts on Caffe's loss
  summed over the crop, which is our mean times crop*crop pixels, so the optimiser gets
  lambda / crop**2.  Unscaled, 5e-4 against a pixel-mean loss would be ~262,000 times
  stronger than in the paper and pulls pretrained weights towards zero.
* Optimiser: Adam, lr 1e-3 (fixed, as in the release's solver), batch size 1, L2 weight decay
  5e-4 on convolution weights only (torch Adam's ``weight_decay`` adds it to the gradient, as
  Caffe does).  With ``caffe_lr_mults`` (default) the release's per-layer multipliers are
  used too: biases learn at 2x and get no decay; the four 1x1 heads learn at 0.1x (bias 0.2x).
* Initialisation: fresh models are Caffe-xavier initialised by ``model.build_model``; fresh
  models read RGB in 0..1 normalised as ``architectures.FRESH_INPUT``; fine-tuned models keep their
  base model's input convention (the release model wants BGR 0..255).
* AMP: ``auto`` uses bf16 autocast on CUDA GPUs that support it (else fp16 with a gradient
  scaler) and nothing on CPU/MPS: on the reference CPU bf16 autocast made a dpn step 4-5x
  slower (docs/training-speed.md).
"""

from .checkpoint import CHECKPOINT_FORMAT, average_checkpoints, load_checkpoint
from .config import MAX_CROP, RUN_CONTROL, TrainConfig, finetune_config
from .data import Pair, check_annotation, network_input, prepare_pairs, to_working_scale
from .events import (
    CancelledEvent,
    CheckpointEvent,
    DoneEvent,
    MessageEvent,
    StepEvent,
    TrainResult,
    ValidationEvent,
)
from .loss import HEAD_NAMES, balanced_bce, class_balance_beta, dpn_loss, param_groups
from .trainer import FLUSH_EVERY, train
from .validation import summarise_metrics

__all__ = [
    "CHECKPOINT_FORMAT",
    "FLUSH_EVERY",
    "HEAD_NAMES",
    "MAX_CROP",
    "RUN_CONTROL",
    "CancelledEvent",
    "CheckpointEvent",
    "DoneEvent",
    "MessageEvent",
    "Pair",
    "StepEvent",
    "TrainConfig",
    "TrainResult",
    "ValidationEvent",
    "average_checkpoints",
    "balanced_bce",
    "check_annotation",
    "class_balance_beta",
    "dpn_loss",
    "finetune_config",
    "load_checkpoint",
    "network_input",
    "param_groups",
    "prepare_pairs",
    "summarise_metrics",
    "to_working_scale",
    "train",
]
