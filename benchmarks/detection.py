"""Detection benchmark (issues 2, 15): recall on LFW, on tight UTKFace crops, on a 1920×1080 scene
of 20 LFW faces of 24–200 px, median ms per 1920×1080 image (with and without the close-up pass),
and a face-size sweep: LFW faces filling 2 %–95 % of a 1512×2016 frame's height, recall per size.

Usage: python benchmarks/detection.py [--n 1000] [--threads 2] [--sweep-faces 20]
       [--parts lfw,utkface,scene,sweep] [--out docs/results/detection.json]
"""

from __future__ import annotations

import argparse
import json
import os
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
from test_pipeline import closeup_scene, compose_scene  # noqa: E402  (the tests' scene builders, so both agree)

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


#: Face heights of the sweep, as fractions of the frame height.
SWEEP_FRACTIONS = [0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95]


def lfw_face(detector, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An LFW photo and the box of its central face (the detector's own, as ground truth)."""
    img = np.asarray(Image.open(path).convert("RGB"))
    found = detector.detect(img)
    if not len(found):
        raise ValueError(f"{path}: no face")
    centres = (found.boxes[:, :2] + found.boxes[:, 2:]) / 2
    return img, found.boxes[int(np.argmin(np.linalg.norm(centres - 125, axis=1)))]


def size_sweep(detector, lfw: list[Path], n_faces: int, canvas=(2016, 1512)) -> dict:
    """Recall per face size: each of ``n_faces`` LFW people pasted at every size of SWEEP_FRACTIONS."""
    people = lfw[:: max(1, len(lfw) // n_faces)][:n_faces]
    faces = [lfw_face(detector, p) for p in people]
    bins = {}
    for frac in tqdm(SWEEP_FRACTIONS, desc="size sweep", unit="size"):
        hits = extra = 0
        for k, (img, box) in enumerate(faces):
            scene, truth = closeup_scene(img, box, frac, canvas=canvas, seed=k)
            found = detector.detect(scene)
            hits += any(iou(truth, b) > 0.3 for b in found.boxes)
            extra += sum(iou(truth, b) <= 0.3 for b in found.boxes)
        bins[f"{frac:g}"] = {"recall": hits / len(faces), "unmatched_boxes_per_image": extra / len(faces)}
    close = [b["recall"] for f, b in bins.items() if float(f) >= 0.4]
    return {"canvas_wxh": [canvas[1], canvas[0]], "faces_per_size": len(faces), "face_height_fraction": bins,
            "recall_40_to_95_percent": float(np.mean(close))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scenes", type=int, default=5, help="random 20-face scenes to average over")
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "detection.json"))
    ap.add_argument("--sweep-faces", type=int, default=20, help="LFW people per size of the face-size sweep")
    ap.add_argument("--parts", default="lfw,utkface,scene,sweep", help="comma-separated subset to run")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    cv2.setNumThreads(args.threads)
    det = CenterFaceDetector(threads=args.threads)
    no_coarse = CenterFaceDetector(coarse_side=0, threads=args.threads)
    lfw = sorted((DATA / "lfw" / "lfw-deepfunneled").glob("*/*.jpg"))
    utk = sorted((DATA / "train" / "utkface").glob("*.jpg"))
    out = Path(args.out)
    res: dict = json.loads(out.read_text()) if out.is_file() and parts != {"lfw", "utkface", "scene", "sweep"} else {}
    res["load_average_1min_at_start"] = round(os.getloadavg()[0], 2)  # the ms figures depend on it
    res.update({"threads": args.threads, "detector": {"threshold": det.threshold, "max_side": det.max_side, "coarse_side": det.coarse_side,
                                                      "runtime": "onnxruntime"}})
    if "lfw" in parts:
        res["lfw_recall"] = recall(det, lfw[: args.n], "LFW")
        print(f"LFW recall (first {args.n}):             {res['lfw_recall']:.2%}")
    if "utkface" in parts:
        res["utkface_tight_recall"] = recall(det, utk[: args.n], "UTKFace")
        print(f"UTKFace tight 200x200 recall (first {args.n}): {res['utkface_tight_recall']:.2%}")
    if "scene" in parts:
        sizes = list(np.linspace(24, 200, 20).round().astype(int))
        hits, total, false_boxes, times, times_nc = 0, 0, 0, [], []
        for seed in range(args.scenes):
            rng = np.random.default_rng(seed)
            pool = [lfw[i] for i in rng.choice(len(lfw), 400, replace=False)]
            scene, truth = compose_scene(sorted(pool), sizes, canvas=(1080, 1920), seed=seed)
            det.detect(scene)
            for _ in range(5):  # interleaved, so that background load hits both alike
                t0 = time.perf_counter()
                found = det.detect(scene)
                times.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                no_coarse.detect(scene)
                times_nc.append((time.perf_counter() - t0) * 1000)
            matched = [any(iou(t, b) > 0.3 for b in found.boxes) for t in truth]
            hits += sum(matched)
            total += len(truth)
            false_boxes += sum(not any(iou(b, t) > 0.3 for t in truth) for b in found.boxes)
        res["scene_recall"] = hits / total
        res["scene_unmatched_boxes_per_scene"] = false_boxes / args.scenes
        res["ms_per_1920x1080_median"] = float(np.median(times))
        res["ms_per_1920x1080_without_coarse_pass_median"] = float(np.median(times_nc))
        res["ms_coarse_pass_per_1920x1080_median"] = float(np.median(np.array(times) - np.array(times_nc)))
        print(f"1920x1080 scene of 20 faces 24-200 px:  {res['scene_recall']:.2%} ({args.scenes} scenes)")
        print(f"median ms per 1920x1080 image ({args.threads} threads): {res['ms_per_1920x1080_median']:.0f} "
              f"(without the close-up pass {res['ms_per_1920x1080_without_coarse_pass_median']:.0f}; "
              f"paired difference {res['ms_coarse_pass_per_1920x1080_median']:.0f})")
    if "sweep" in parts:
        res["size_sweep"] = size_sweep(det, lfw, args.sweep_faces)
        res["size_sweep_without_coarse_pass"] = size_sweep(no_coarse, lfw, args.sweep_faces)
        for key in ("size_sweep", "size_sweep_without_coarse_pass"):
            bins = res[key]["face_height_fraction"]
            print(f"{key}: " + ", ".join(f"{f}: {b['recall']:.0%}" for f, b in bins.items())
                  + f"; 40-95 %: {res[key]['recall_40_to_95_percent']:.1%}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
if __name__ == "__main__":
    main()
