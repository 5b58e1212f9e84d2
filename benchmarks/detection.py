"""Detection benchmark (issue 2): recall on LFW, on tight UTKFace crops, on a 1920×1080 scene of
20 LFW faces of 24–200 px, and median ms per 1920×1080 image.

Usage: python benchmarks/detection.py [--n 1000] [--threads 2] [--out docs/results/detection.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from identitydp.detect import CenterFaceDetector  # noqa: E402
from test_pipeline import compose_scene  # noqa: E402  (the tests' scene builder, so both agree)

DATA = REPO.parent / "shared" / "data"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(rb - lt, 0, None))
    return float(inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter))


def recall(detector, files, desc) -> float:
    found = 0
    for f in tqdm(files, desc=desc, unit="img"):
        found += len(detector.detect(np.asarray(Image.open(f).convert("RGB")))) > 0
    return found / len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scenes", type=int, default=5, help="random 20-face scenes to average over")
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "detection.json"))
    args = ap.parse_args()
    cv2.setNumThreads(args.threads)
    det = CenterFaceDetector()
    lfw = sorted((DATA / "lfw" / "lfw-deepfunneled").glob("*/*.jpg"))
    utk = sorted((DATA / "train" / "utkface").glob("*.jpg"))
    res: dict = {"threads": args.threads, "detector": {"threshold": det.threshold, "max_side": det.max_side}}
    res["lfw_recall"] = recall(det, lfw[: args.n], "LFW")
    res["utkface_tight_recall"] = recall(det, utk[: args.n], "UTKFace")
    sizes = list(np.linspace(24, 200, 20).round().astype(int))
    hits, total, false_boxes, times = 0, 0, 0, []
    for seed in range(args.scenes):
        rng = np.random.default_rng(seed)
        pool = [lfw[i] for i in rng.choice(len(lfw), 400, replace=False)]
        scene, truth = compose_scene(sorted(pool), sizes, canvas=(1080, 1920), seed=seed)
        det.detect(scene)
        for _ in range(5):
            t0 = time.perf_counter()
            found = det.detect(scene)
            times.append((time.perf_counter() - t0) * 1000)
        matched = [any(iou(t, b) > 0.3 for b in found.boxes) for t in truth]
        hits += sum(matched)
        total += len(truth)
        false_boxes += sum(not any(iou(b, t) > 0.3 for t in truth) for b in found.boxes)
    res["scene_recall"] = hits / total
    res["scene_unmatched_boxes_per_scene"] = false_boxes / args.scenes
    res["ms_per_1920x1080_median"] = float(np.median(times))
    print(f"LFW recall (first {args.n}):             {res['lfw_recall']:.2%}")
    print(f"UTKFace tight 200x200 recall (first {args.n}): {res['utkface_tight_recall']:.2%}")
    print(f"1920x1080 scene of 20 faces 24-200 px:  {res['scene_recall']:.2%} ({args.scenes} scenes)")
    print(f"median ms per 1920x1080 image ({args.threads} threads): {res['ms_per_1920x1080_median']:.0f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
