#!/usr/bin/env bash
# Train dpn-universal: the paper's `dpn` on the training images of DRIVE, STARE, CHASE_DB1 and
# AV-WIDE together, every image resampled to 12 px/deg (DRIVE's scale), CLAHE on green, the
# any-camera augmentation (any rotation, scale jitter x0.8-1.25, brightness/contrast/gamma, blur,
# noise, JPEG), the paper's four-head class-balanced loss and weight decay.
# With HOLDOUT one dataset is left out: the leave-one-dataset-out models of docs/results.md.
#   scripts/training/train_universal.sh DATASETS_ROOT [HOLDOUT]
# Environment (defaults in brackets): STEPS [100000], CROP [256], LR [5e-4], INIT [dpn-drive, or
# dpn-stare when DRIVE is held out, so the held-out images are never seen; "none" for a fresh network], DEVICE [auto], THREADS [torch's], TIME_LIMIT [none: seconds, then the model
# is saved at the step reached]. Resumes from runs/<name>/<name>.ckpt.pt, else from a committed
# checkpoints/<name>.ckpt.pt, so a later machine continues where the last one stopped.
set -euo pipefail
root=${1:?usage: $0 DATASETS_ROOT [drive|stare|chase|avwide]}; holdout=${2:-}
cd "$(dirname "$0")/../.."
py=${PYTHON:-.venv/bin/python}
sets=(); for ds in drive stare chase avwide; do [ "$ds" = "$holdout" ] || sets+=("$ds"); done
name=dpn-universal${holdout:+-no-$holdout}
dir=runs/$name; ckpt=$dir/$name.ckpt.pt
mkdir -p "$dir"
[ -f "$ckpt" ] || [ ! -f "checkpoints/$name.ckpt.pt" ] || cp "checkpoints/$name.ckpt.pt" "$ckpt"
start=(); if [ -f "$ckpt" ]; then start=(--resume "$ckpt" --overwrite)
else
  init=${INIT:-dpn-drive}; [ -n "${INIT:-}" ] || [ "$holdout" != drive ] || init=dpn-stare
  [ "$init" = none ] || start=(--init "$init")
fi
"$py" -m napari_dpn.cli train --dataset "$(IFS=,; echo "${sets[*]}")" --root "$root" --working-ppd 12 \
  --augment-mode robust --clahe --steps "${STEPS:-100000}" --crop "${CROP:-256}" --lr "${LR:-5e-4}" \
  --val none --checkpoint-every 500 --log-every 100 --quiet --device "${DEVICE:-auto}" \
  ${THREADS:+--threads "$THREADS"} ${TIME_LIMIT:+--time-limit "$TIME_LIMIT"} \
  --out "$dir" --name "$name" "${start[@]}" 2>&1 | tee -a "$dir/train.log"
