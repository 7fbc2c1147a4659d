#!/usr/bin/env bash
# Several trainings at once on one GPU, each stopped after a time budget and saved at the step
# reached (its card records the steps actually run), then packed for the trip back.
#   scripts/training/train_on_gpu.sh DATASETS_ROOT SECONDS PACK_DIR [job ...]
# Jobs (default: all): drive stare chase drive-noaux drive-clahe chase-ft
#   drive/stare/chase: `dpn` from scratch with the paper's recipe (scripts/training/reproduce_paper.sh)
#   drive-noaux: Table 5's ablation (main head only); drive-clahe: Table 4's DRIVE model with CLAHE
#   chase-ft: continue the dpn-release-chase-ft fine-tune (crop 256, lr 1e-4) from its checkpoint
# A job whose runs/<name>/<name>.ckpt.pt (or committed checkpoints/<name>.ckpt.pt) exists resumes
# from it, so a later GPU session continues where the last one stopped.
# Runs go to runs/<name>/ (train.log there); PACK_DIR gets <name>.tgz of each and gpu.log.
set -uo pipefail
root=${1:?usage: $0 DATASETS_ROOT SECONDS PACK_DIR [job ...]}; budget=${2:?seconds}; pack=${3:?pack dir}; shift 3
jobs_=("$@"); [ $# -eq 0 ] && jobs_=(drive stare chase drive-noaux drive-clahe chase-ft)
cd "$(dirname "$0")/../.."
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
threads=${THREADS:-2}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p runs "$pack"
{ date -u; nvidia-smi 2>/dev/null; "$py" -c "import torch, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; git rev-parse HEAD 2>/dev/null; } > "$pack/gpu.log" 2>&1
"$py" -c "import napari_dpn.cli" >> "$pack/gpu.log" 2>&1 || { echo "napari_dpn does not import" >&2; cat "$pack/gpu.log" >&2; exit 3; }
common=(--device "$device" --val none --checkpoint-every 2000 --threshold-rule max_acc --quiet --log-every 1000
        --threads "$threads" --time-limit "$budget")
names=(); pids=()
for job in "${jobs_[@]}"; do
  case $job in
    # --dataset without --steps/--crop/--clahe gives the paper's recipe (datasets.DATASETS)
    drive)       name=dpn-drive-paper; args=(--dataset drive) ;;
    stare)       name=dpn-stare-paper; args=(--dataset stare --split 10/10) ;;
    chase)       name=dpn-chase-paper; args=(--dataset chase --split 20/8) ;;
    drive-noaux) name=dpn-drive-noaux; args=(--dataset drive --no-aux) ;;
    drive-clahe) name=dpn-drive-clahe; args=(--dataset drive --clahe) ;;
    chase-ft)    name=dpn-release-chase-ft; args=(--dataset chase --split 20/8 --init dpn-release-drive
                                                  --crop 256 --lr 1e-4) ;;
    *) echo "unknown job $job" >&2; exit 2 ;;
  esac
  dir=runs/$name; mkdir -p "$dir"
  ckpt=$dir/$name.ckpt.pt
  [ -f "$ckpt" ] || [ ! -f "checkpoints/$name.ckpt.pt" ] || cp "checkpoints/$name.ckpt.pt" "$ckpt"  # committed state
  resume=(); [ -f "$ckpt" ] && resume=(--resume "$ckpt")
  # SIGINT at the backstop makes the engine write its checkpoint before it exits.
  timeout -s INT "$((${budget%.*} + 75))" "$py" -m napari_dpn.cli train "${args[@]}" --root "$root" "${common[@]}" \
    --out "$dir" --name "$name" "${resume[@]}" >> "$dir/train.log" 2>&1 &
  names+=("$name"); pids+=($!)
done
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 15 >> "$pack/gpu.log" 2>/dev/null &
mon=$!
wait "${pids[@]}"
kill $mon 2>/dev/null
for name in "${names[@]}"; do
  tail -n 3 "runs/$name/train.log" | sed "s|^|$name: |" >> "$pack/gpu.log"
  tar czf "$pack/$name.tgz" -C runs "$name"
done
date -u >> "$pack/gpu.log"
