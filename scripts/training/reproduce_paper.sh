#!/usr/bin/env bash
# The paper's recipe from scratch on a GPU machine: `dpn`, Xavier init, Adam 1e-3, weight decay 5e-4,
# batch 1, the four-head class-balanced loss, flips/rotations/mirror/random crops.
#   DRIVE 20/20: 100k steps, 512 crops | STARE 10/10: 30k steps, 512 crops, CLAHE | CHASE_DB1 20/8: 100k steps, 736 crops
# Each run checkpoints every 2000 steps and resumes when the script is run again; each is then
# evaluated into docs/results/<dataset>_<name>.json. Usage:
#   scripts/training/reproduce_paper.sh DATASETS_ROOT [drive|stare|chase ...]    (STEPS_SCALE=0.1 for a shorter run)
set -euo pipefail
root=${1:?usage: $0 DATASETS_ROOT [drive|stare|chase ...]}; shift
sets=("${@:-drive stare chase}"); [ $# -eq 0 ] && sets=(drive stare chase)
scale=${STEPS_SCALE:-1}
cd "$(dirname "$0")/../.."
py=${PYTHON:-.venv/bin/python}
for ds in "${sets[@]}"; do
  case $ds in
    drive) split=default; steps=100000 ;;
    stare) split=10/10;   steps=30000 ;;
    chase) split=20/8;    steps=100000 ;;
    *) echo "unknown dataset $ds" >&2; exit 2 ;;
  esac
  steps=$(python3 -c "print(max(1, int($steps * $scale)))")
  name="dpn-$ds-paper"
  ckpt="runs/$name/$name.ckpt.pt"
  if [ ! -f "$ckpt" ] && [ -f "checkpoints/$name.ckpt.pt" ]; then  # the committed state of an earlier GPU run
    mkdir -p "runs/$name"; cp "checkpoints/$name.ckpt.pt" "$ckpt"
  fi
  resume=(); [ -f "$ckpt" ] && resume=(--resume "$ckpt")
  "$py" -m napari_dpn.cli train --dataset "$ds" --root "$root" --split "$split" --arch dpn --steps "$steps" \
    --val none --checkpoint-every 2000 --out "runs/$name" --name "$name" "${resume[@]}"
  "$py" -m napari_dpn.cli evaluate --dataset "$ds" --root "$root" --split "$split" \
    --model "runs/$name/$name.safetensors" --json "docs/results/${ds}_$name.json" --quiet
done
