"""One human-in-the-loop cycle of *Correct a folder* on real data (issue 12).

CHASE_DB1 with a DRIVE model as start: the first ``--corrected`` images are "corrected" by copying
their ground truth in as the saved annotation (a stand-in for a grader), the session fine-tunes
the model on them (``Session.finetune``, the Fine-tune widget's engine), and the untouched
remaining images are segmented before and after.  Reported per model: the AUC of the remaining
images (pooled inside the estimated FOV), and the pixels a grader would have had to change
(FP + FN inside the FOV at the model card's threshold).

    OMP_NUM_THREADS=1 python scripts/benchmarks/human_in_the_loop.py --steps 100 \
        --json docs/results/human_in_the_loop.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _provenance import commit, cpu_model
from napari_dpn import metrics
from napari_dpn import session as S
from napari_dpn.datasets import list_samples
from napari_dpn.files import atomic_write
from napari_dpn.inference import predict
from napari_dpn.models import load_model


def score(loaded, samples):
    probs, gts, fovs, changed, secs = [], [], [], 0, 0.0
    t = float(loaded.card.threshold)
    for s in samples:
        rgb, gt, fov = s.load()
        p = predict(loaded, rgb, device="cpu")
        secs += p.seconds
        probs.append(p.probability)
        gts.append(gt)
        fovs.append(fov)
        changed += int((((p.probability >= t) & fov) != gt)[fov].sum())
    return {
        "model": loaded.card.name,
        "threshold": t,
        "auc": float(metrics.auc(probs, gts, fovs)),
        "pixels_to_change": changed,
        "pixels_to_change_per_image": changed / len(samples),
        "seconds_per_image": secs / len(samples),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/work/shared/datasets")
    ap.add_argument("--start", default="dpn-drive")
    ap.add_argument("--corrected", type=int, default=5)
    ap.add_argument("--remaining", type=int, default=0, help="score only this many remaining images (0: all)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--json", default="docs/results/human_in_the_loop.json")
    args = ap.parse_args(argv)

    samples = list_samples("chase", args.root)
    corrected, rest = samples[: args.corrected], samples[args.corrected :]
    if args.remaining:
        rest = rest[: args.remaining]
    work = Path(tempfile.mkdtemp(prefix="hitl-"))
    models_dir = work / "models"
    try:
        for s in samples[: args.corrected] + rest:
            shutil.copy(s.image_path, work / s.image_path.name)
        session = S.Session.open(work)
        names = [e.name for e in session.entries]
        for s in corrected:  # the grader's corrections: the ground truth itself
            i = names.index(s.image_path.name)
            rgb, gt, fov = s.load()
            session.save(i, gt, fov)
        before = score(load_model(args.start), rest)
        print("before", before, flush=True)
        t0 = time.perf_counter()
        result = session.finetune(
            args.start,
            steps=args.steps,
            device="cpu",
            out_dir=models_dir,
            name=f"{args.start}-chase{args.corrected}-ft",
        )
        ft_seconds = time.perf_counter() - t0
        after = score(load_model(result.model_path), rest)
        print("after", after, flush=True)
        out = {
            "meta": {
                "command": "python scripts/benchmarks/human_in_the_loop.py " + " ".join(argv or sys.argv[1:]),
                "commit": commit(),
                "cpu": cpu_model(),
                "start": args.start,
                "corrected": [s.name for s in corrected],
                "remaining": [s.name for s in rest],
                "steps": result.steps,
                "finetune_seconds": ft_seconds,
            },
            "before": before,
            "after": after,
            "session_models": session.models,
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            Path(tmp).write_text(json.dumps(out, indent=1) + "\n")
        print("wrote", path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
