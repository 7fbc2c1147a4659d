#!/usr/bin/env bash
# Everything a lent GPU (one H200, ~10 minutes of work) should do, in the brief's order, as one
# command: (1) dpn-universal and the three leave-one-dataset-out models, trained side by side from
# their checkpoints under one time budget; (2) the GPU speed figures (throughput, a training step
# alone); everything comes back packed in OUT.
#   scripts/training/gpu_session.sh DATASETS_ROOT SECONDS OUT
# Runs resume from runs/<name>/ or checkpoints/<name>.ckpt.pt (commit the new checkpoints
# afterwards so the next machine continues). Needs the repository's venv or a python with it.
set -uo pipefail
root=${1:?usage: $0 DATASETS_ROOT SECONDS OUT}; budget=${2:?seconds}; out=${3:?out dir}
cd "$(dirname "$0")/../.."
py=${PYTHON:-python3}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHON=$py
mkdir -p "$out"
{ date -u; nvidia-smi; "$py" -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"; git rev-parse HEAD; } > "$out/gpu.log" 2>&1
pids=()
for holdout in "" drive stare chase; do
  name=dpn-universal${holdout:+-no-$holdout}
  # On a GPU: the paper's 512 crops; every run continues from its checkpoint in checkpoints/ (the
  # held-out ones were started from a model that never saw the held-out set), else a held-out run
  # starts from a fresh network.
  init=dpn-drive; [ -n "$holdout" ] && init=none
  CROP=${CROP:-512} INIT=$init DEVICE=cuda THREADS=2 TIME_LIMIT=$budget \
    timeout -s INT "$((${budget%.*} + 120))" scripts/training/train_universal.sh "$root" $holdout \
    > "$out/$name.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
"$py" scripts/benchmarks/gpu_throughput.py --folder "$root/DRIVE/test/images" --count 2000 --device cuda \
  --out "$out/gpu_throughput.json" >> "$out/gpu.log" 2>&1
"$py" scripts/benchmarks/bench_train.py --device cuda >> "$out/gpu.log" 2>&1
for d in runs/dpn-universal*; do tar czf "$out/$(basename "$d").tgz" -C runs "$(basename "$d")"; done
date -u >> "$out/gpu.log"
