"""The face chip dlib's recognizer expects, from CenterFace's 5 landmarks (no torch here).

Used by the torch network (:mod:`identitydp.models.dlib_resnet`) and by its ONNX Runtime twin
(:mod:`identitydp.models.dlib_onnx`) alike.
"""

from __future__ import annotations

import numpy as np

INPUT_SIZE = 150
EMBEDDING_DIM = 128
# dlib's input layer (input_rgb_image_sized<150>) subtracts these per-channel means and divides
# by 256 (face-api divides by 255; the two differ by < 2e-6 in cosine distance to dlib).
MEAN_RGB = (122.782, 117.001, 104.298)
INPUT_DIVISOR = 256.0

# CenterFace 5-point landmarks (left eye, right eye, nose, left / right mouth corner, image
# left/right) of the face in a dlib 150x150 face chip (padding 0.25), in chip pixels.
# Fitted by scripts/fit_dlib_template.py on 581 training faces (292 UTKFace + 289 CelebA, never
# LFW): dlib's HOG detector + shape_predictor_5 gave dlib's exact chip transform, CenterFace's
# landmarks on the same images were mapped into the chip and averaged. Per-point spread (std,
# x / y px): 2.5/4.0, 2.4/3.7, 5.5/3.1, 4.3/4.1, 4.2/4.0 — the two landmark sets are defined
# differently (dlib: eye corners and nose base), so per-face framing differs a little from dlib's.
DLIB_CHIP_150 = np.array(
    [
        [48.2651, 49.6238],
        [100.8641, 47.8218],
        [74.3126, 78.8843],
        [52.8831, 103.7111],
        [96.4458, 102.0782],
    ],
    dtype=np.float64,
)
DLIB_CHIP_150.setflags(write=False)
# Weights of the points in the similarity fit: the inverse variance of each point around the
# template (1/sx^2 + 1/sy^2 of the spreads above, normalised), so that the nose and mouth, which
# move with pose and expression, pull less than the eyes. Measured on LFW View 2 (6,000 pairs,
# cosine distance, 10 folds): 98.57 % with equal weights, 98.98 % with these; the chips differ
# from the equal-weight ones by cosine distance 0.0005 on average.
DLIB_CHIP_WEIGHTS = np.array([0.2684, 0.2970, 0.1587, 0.1350, 0.1409], dtype=np.float64)
DLIB_CHIP_WEIGHTS.setflags(write=False)


def weighted_similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted Umeyama similarity (K, 2) ``src`` → ``dst``: :func:`identitydp.align.estimate_similarity`."""
    from ..align import estimate_similarity

    return estimate_similarity(src, dst, weights)


def dlib_chip_matrix(landmarks5: np.ndarray) -> np.ndarray:
    """(2, 3) affine from frame pixels to the 150x150 dlib chip, from (5, 2) CenterFace landmarks."""
    return weighted_similarity(landmarks5, DLIB_CHIP_150, DLIB_CHIP_WEIGHTS)


def dlib_chip(image_rgb: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
    """Cut the 150x150 face chip dlib's recognizer expects.

    Args:
        image_rgb: (H, W, 3) uint8 RGB frame.
        landmarks5: (5, 2) CenterFace landmarks of one face, frame pixels.

    Returns:
        (150, 150, 3) uint8 RGB chip (bilinear; outside the frame replicates the border).
    """
    import cv2

    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image_rgb.shape} {image_rgb.dtype}")
    matrix = dlib_chip_matrix(landmarks5)
    return cv2.warpAffine(
        image_rgb, matrix, (INPUT_SIZE, INPUT_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
