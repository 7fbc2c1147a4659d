#!/usr/bin/env bash
# Fine-tune the imported DRIVE release model on the STARE 10/10 and CHASE_DB1 20/8 training splits.
# This is the cheap CPU route of docs/results.md (reported as fine-tuned, not as the paper's recipe).
# Resumable: rerun the script and each run continues from its last checkpoint.
# Usage: scripts/training/finetune_release.sh DATASETS_ROOT [STEPS]
set -euo pipefail
root=${1:?usage: $0 DATASETS_ROOT [STEPS]}
steps=${2:-1500}
cd "$(dirname "$0")/../.."
for spec in "stare 10/10 ${CROP:-512}" "chase 20/8 ${CROP:-736}"; do
  set -- $spec
  name="dpn-release-$1-ft"
  ckpt="runs/$name/$name.ckpt.pt"
  resume=(); [ -f "$ckpt" ] && resume=(--resume "$ckpt")
  .venv/bin/napari-dpn train --dataset "$1" --root "$root" --split "$2" --init dpn-release-drive \
    --steps "$steps" --crop "$3" --lr 1e-4 --val none --threshold-rule max_acc --checkpoint-every 100 ${THREADS:+--threads $THREADS} \
    --out "runs/$name" --name "$name" "${resume[@]}"
  .venv/bin/napari-dpn evaluate --dataset "$1" --root "$root" --split "$2" --model "runs/$name/$name.safetensors" \
    --json "docs/results/$1_$name.json" --quiet
done
