"""``napari-dpn train``: train or fine-tune on a public dataset or on a folder of annotated images.

    napari-dpn train --dataset drive --root DATASETS [--split default] [--steps N] ...
    napari-dpn train --images DIR [--labels DIR] [--fovs DIR] [--init MODEL|none] ...

Folder mode fine-tunes the default model (``models.DEFAULT_MODEL``; ``--init none``: a fresh network)
at its working scale, as ``segment`` resamples photographs (``training.finetune_config``).  It pairs
``IMAGE.ext`` with ``IMAGE_vessels.png`` (and ``IMAGE_fov.png``; estimated when absent), the
convention the napari Save button writes (``annotations.py``), or, failing that, with the one label
sharing the image's leading number (DRIVE's ``21_manual1.gif`` beside ``21_training.tif``).
``--dataset`` training keeps the paper's protocol: a fresh network at the images' own scale unless
``--init`` / ``--working-ppd`` are given.

A model is never replaced without ``--overwrite``: an existing ``NAME.safetensors``/``.json`` (or an
earlier run's ``NAME.ckpt.pt``) in the output folder stops the command before step 1; default names
carry the date and time to the second and are made unique in the output folder.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime
from pathlib import Path

from .. import layouts, training
from ..annotations import folder_pairs
from ..datasets import DATASETS, ScaledSample, dataset_key, load_split
from ..errors import InputError
from ..image_writers import ensure_output_folder
from ..model import NETWORKS
from ..models import DEFAULT_MODEL, user_models_dir, validate_model_name
from ..training import TrainConfig, finetune_config, load_checkpoint
from ..training.config import AMP_MODES
from . import options
from .model_names import claim_name, reserve_default_name
from .progress import Progress, format_metrics


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to the main parser's subparsers."""
    p = subparsers.add_parser(
        "train",
        help="train or fine-tune DPN on a dataset or on your annotated images",
        description=__doc__.split("\n\n")[0],
    )
    _add_data_options(p.add_argument_group("training data (one of --dataset or --images)"))
    _add_validation_options(p.add_argument_group("validation"))
    run = p.add_argument_group("model and schedule")
    _add_model_options(run)
    _add_schedule_options(run)
    _add_output_options(run)
    p.set_defaults(func=cmd_train)
    return p


def _add_data_options(src) -> None:
    src.add_argument(
        "--dataset",
        help=f"{layouts.keys_text()} (the paper's splits); several joined by "
        "commas train one model on all of them (with --working-ppd)",
    )
    src.add_argument("--root", metavar="DIR", help=f"folder holding {layouts.folders_text()} (with --dataset)")
    src.add_argument("--split", default=None, help="drive: default; stare: 10/10|loo-K; chase: 20/8|14/14")
    src.add_argument("--images", metavar="DIR", help="folder of your images")
    src.add_argument("--labels", metavar="DIR", help="folder of IMAGE_vessels.png masks (default: --images)")
    src.add_argument("--fovs", metavar="DIR", help="folder of IMAGE_fov.png masks (default: --labels)")


def _add_validation_options(val) -> None:
    val.add_argument(
        "--val",
        choices=("test", "train", "none"),
        default=None,
        help="with --dataset: validate on the split's test images (default) or training images",
    )
    val.add_argument("--val-images", metavar="DIR", help="with --images: a folder of annotated validation images")
    val.add_argument("--val-labels", metavar="DIR")
    val.add_argument("--val-fovs", metavar="DIR")
    val.add_argument("--val-every", type=int, default=None, metavar="N", help="validate every N steps (default 500)")


def _add_model_options(run) -> None:
    """Where the weights start and at which scale the images are seen."""
    run.add_argument(
        "--init",
        metavar="MODEL",
        help="the model to fine-tune (name or path), or 'none' for a fresh network; default with "
        "--images: the default model (dpn-universal); with --dataset: a fresh network (the paper's protocol)",
    )
    run.add_argument(
        "--scale",
        default=None,
        metavar="auto|native|FACTOR",
        help="with --images and a base model: resample the images to the base model's working scale "
        "as segment does (auto, the default: FOV diameter / field angle), keep them as they are "
        "(native), or by a factor",
    )
    options.add_field_angle(
        run,
        "the camera's field angle in degrees, for --scale auto (default: the 45 degree guess, as segment)",
        type=float,
    )
    run.add_argument("--arch", choices=tuple(NETWORKS), default="dpn", help="architecture of a fresh network")
    run.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint (give the same data again)")


def _add_schedule_options(run) -> None:
    """Steps, optimiser, augmentation, device: what one run does."""
    run.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimisation steps (default: the paper's 100k/30k/100k with --dataset, else 2000)",
    )
    run.add_argument(
        "--crop", type=int, default=None, help="random crop size (default 512; 736 for CHASE-sized images)"
    )
    run.add_argument(
        "--lr",
        type=float,
        default=None,
        help="Adam learning rate (default 1e-4 when fine-tuning with --images, else 1e-3); with "
        "--resume, the rate from there on",
    )
    run.add_argument("--weight-decay", type=float, default=None, help="L2 on conv weights (default 5e-4)")
    run.add_argument("--batch-size", type=int, default=None, help="crops per step (default 1, as the paper)")
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--no-aux", action="store_true", help="train the main head only (the paper's Table 5 ablation)")
    run.add_argument("--no-augment", action="store_true", help="no offline flips/rotations and no random mirror")
    run.add_argument(
        "--clahe",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CLAHE on green (default: the dataset's paper setting, or the base model's)",
    )
    run.add_argument("--whole-crop", action="store_true", help="count every crop pixel in the loss, not only the FOV")
    run.add_argument("--checkpoint-every", type=int, default=None, metavar="N", help="default 500")
    options.add_device(run, "auto, cpu, cuda or mps")
    run.add_argument("--amp", choices=AMP_MODES, default="auto")
    run.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    _add_schedule_extras(run)


def _add_schedule_extras(run) -> None:
    run.add_argument(
        "--threshold-rule",
        choices=("youden", "max_acc"),
        default=None,
        help="how the saved card's threshold is chosen, on the validation images if any, else the "
        "training images (default max_acc, the accuracy-maximising point, as for every shipped "
        "model; youden: the ROC-optimal point)",
    )
    run.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop training after this many seconds and save the model at the step reached "
        "(its card records the steps actually run)",
    )
    run.add_argument(
        "--working-ppd",
        type=float,
        default=None,
        metavar="PX_PER_DEG",
        help="resample every training image to this many pixels per degree of retina (DRIVE is "
        "12.0); recorded in the card, so inference resamples photographs to it",
    )
    run.add_argument(
        "--augment-mode",
        choices=("paper", "robust"),
        default=None,
        help="paper: the 11 offline views + mirror (default); robust: any rotation, scale jitter, "
        "brightness/contrast/gamma/blur/noise/JPEG per crop",
    )
    run.add_argument(
        "--augment-off",
        default=None,
        metavar="PART[,PART]",
        help="with --augment-mode robust, leave these parts out to measure what each is worth: "
        "exposure, blur, noise, jpeg, scale, rotation",
    )


def _add_output_options(run) -> None:
    run.add_argument(
        "--name",
        help="name of the saved model: letters, digits, '.', '_', '-', '+' "
        "(default: BASE-DATA-DATE-TIME, unique in the output folder)",
    )
    options.add_overwrite(run, "replace a model (and checkpoint) of the same name in the output folder")
    run.add_argument(
        "--out", metavar="DIR", help="where the model and checkpoints go (default: the user models folder)"
    )
    options.add_quiet(run, "no progress bar")
    run.add_argument(
        "--log-every",
        type=int,
        default=0,
        metavar="N",
        help="also print a line with the loss and the time per step every N steps (for log files)",
    )


def _data(args):
    """(train pairs, validation pairs, description, dataset key or None)."""
    if bool(args.dataset) == bool(args.images):
        raise InputError("give either --dataset (with --root) or --images")
    if args.dataset:
        if not args.root:
            raise InputError("--dataset needs --root, the folder holding the dataset")
        keys = [dataset_key(k) for k in str(args.dataset).split(",") if k.strip()]
        if len(keys) > 1 and args.split:
            raise InputError("--split applies to one dataset; several datasets use their default splits")
        if len(keys) > 1 and not args.working_ppd:
            raise InputError("training on several datasets needs --working-ppd, a common scale (DRIVE's is 12.0)")
        train, val, parts = [], [], []
        for key in keys:
            split = load_split(key, args.root, args.split)
            if not split.train:
                raise InputError(f"the split {args.split!r} of {DATASETS[key].folder} has no training images")
            val += {"test": split.test, "train": split.train, "none": []}[args.val or "test"]
            train += split.train
            parts.append(
                f"{DATASETS[key].folder} split {args.split or DATASETS[key].default_split} "
                f"({len(split.train)} training images)"
            )
        if args.working_ppd:
            train = [ScaledSample(s, args.working_ppd) for s in train]
            val = [ScaledSample(s, args.working_ppd) for s in val]
        desc = " + ".join(parts) + (f", resampled to {args.working_ppd:g} px/deg" if args.working_ppd else "")
        return train, val, desc, keys[0] if len(keys) == 1 else "+".join(keys)
    train = folder_pairs(args.images, args.labels, args.fovs)
    val = folder_pairs(args.val_images, args.val_labels, args.val_fovs) if args.val_images else []
    return train, val, f"{len(train)} annotated image(s) from {Path(args.images).expanduser()}", None


def _resolve_init(args) -> str | None:
    """The model to start from: ``--init``; 'none' for a fresh network; without ``--init``, the
    default model for ``--images`` (a user fine-tuning corrections expects the shipped model, not
    a network that knows nothing) and a fresh network for ``--dataset`` (the paper's protocol)."""
    if args.init is not None:
        return None if str(args.init).strip().lower() in ("none", "") else args.init
    return DEFAULT_MODEL if args.images and not args.resume else None


def _config(args, key):
    # Fine-tuning a model on one's own images: its working scale, the shipped threshold rule, lr 1e-4.
    base = finetune_config() if args.images and args.init else TrainConfig()
    if args.resume:
        saved = load_checkpoint(args.resume)["config"]
        base = TrainConfig(**saved)
    elif key and key in _dataset_keys():
        info = DATASETS[key]
        base.steps, base.crop = info.iterations, info.crop_size
        base.clahe = info.clahe if not args.init else None
    pick = lambda value, default: default if value is None else value  # noqa: E731
    name = args.name or base.name  # None: a default name is reserved in cmd_train
    if args.resume and args.name and base.name and args.name != base.name:
        raise InputError(
            f"the checkpoint belongs to the run '{base.name}', and a resumed run keeps its name; "
            f"leave out --name or give --name {base.name}"
        )
    return TrainConfig(
        steps=pick(args.steps, base.steps),
        crop=pick(args.crop, base.crop),
        lr=pick(args.lr, base.lr),
        weight_decay=pick(args.weight_decay, base.weight_decay),
        batch_size=pick(args.batch_size, base.batch_size),
        seed=pick(args.seed, base.seed),
        augment=base.augment and not args.no_augment,
        clahe=pick(args.clahe, base.clahe),
        fov_only=base.fov_only and not args.whole_crop,
        checkpoint_every=pick(args.checkpoint_every, base.checkpoint_every),
        val_every=pick(args.val_every, base.val_every),
        device=args.device,
        amp=args.amp,
        aux_heads=base.aux_heads and not args.no_aux,
        architecture=args.arch if not args.resume else base.architecture,
        threads=args.threads,
        name=name,
        threshold_rule=pick(args.threshold_rule, base.threshold_rule),
        time_limit=args.time_limit,
        augment_mode=pick(args.augment_mode, base.augment_mode),
        working_ppd=pick(args.working_ppd, base.working_ppd),
        scale=pick(args.scale, base.scale),
        field_angle=pick(args.field_angle, base.field_angle),
        augment_off=tuple(p.strip() for p in args.augment_off.split(",") if p.strip())
        if args.augment_off is not None
        else base.augment_off,
    )


def _dataset_keys() -> tuple[str, ...]:
    return tuple(DATASETS)


def _default_name_stem(args, key) -> str:
    data = key or Path(args.images).expanduser().name
    base_name = Path(args.init).stem if args.init else args.arch
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "-", f"{base_name}-{data}").strip("-._") or "model"
    if not stem[0].isalnum():
        stem = "model-" + stem
    return f"{stem[:60]}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _check_numbers(args) -> None:
    if args.log_every is not None and args.log_every < 0:
        raise InputError(f"--log-every must be 0 (never) or more steps, got {args.log_every}")


def cmd_train(args) -> int:
    _check_numbers(args)
    args.init = _resolve_init(args)
    if args.name is not None:
        validate_model_name(args.name, shipped_ok=True)  # the form first; shipped names below
    train_pairs, val_pairs, desc, key = _data(args)
    config = _config(args, key)
    config.check()
    out = (
        Path(args.out).expanduser()
        if args.out
        else (Path(args.resume).expanduser().parent if args.resume else user_models_dir())
    )
    in_registry = out.absolute() == user_models_dir().expanduser().absolute()
    if config.name:
        # A shipped name in the user models folder would be shadowed by the shipped model.
        config.name = validate_model_name(config.name, shipped_ok=not in_registry)
    ensure_output_folder(out, "--out" if args.out else "the output folder")
    if config.name:
        lock, overwrite = claim_name(out, config.name, args)
    else:
        config.name, lock = reserve_default_name(out, _default_name_stem(args, key))
        overwrite = False
    try:
        return _run(args, config, train_pairs, val_pairs, desc, out, overwrite, load_checkpoint, training.train)
    finally:
        lock.unlink(missing_ok=True)


def _run(args, config, train_pairs, val_pairs, desc, out, overwrite, load_checkpoint, train) -> int:
    start = int(load_checkpoint(args.resume)["step"]) if args.resume else 0
    progress = Progress(config.steps, args.quiet, args.log_every)
    progress.write(
        f"training {config.name}: {len(train_pairs)} training / {len(val_pairs)} validation images, "
        f"{config.steps} steps" + (f" from step {start}" if start else "") + f"; output in {out}"
    )
    try:
        result = train(
            config,
            train_pairs,
            val_pairs or None,
            init=args.init,
            out_dir=out,
            resume=args.resume,
            callback=progress,
            description=desc,
            overwrite=overwrite,
        )
    except KeyboardInterrupt:
        progress.close()
        if progress.last_ckpt:
            print(f"napari-dpn: interrupted; continue with --resume {progress.last_ckpt}", file=sys.stderr)
        else:
            print("napari-dpn: interrupted before the first checkpoint", file=sys.stderr)
        return 130
    finally:
        progress.close()
    if result.metrics_before and result.metrics_after:
        print(f"validation before: {format_metrics(result.metrics_before)}")
    if result.metrics_after:
        print(f"validation after:  {format_metrics(result.metrics_after)}")
    print(
        f"saved {result.card.name} ({result.steps} steps, threshold {result.threshold:.3f}) to {result.model_path}; "
        f"checkpoint {result.checkpoint}"
    )
    return 0
