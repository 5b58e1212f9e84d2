"""Pixel-level realism measurements that need no network: sharpness and seams.

* **Sharpness ratio**: high-frequency energy ``Σ (x − GaussianBlur(x, σ = 1.5 px))²`` of the
  grey image inside the central face region (the detector box shrunk to its central 60 %),
  anonymized / original. 1 = as much fine detail as the photo; an upscaled thumbnail or a blur
  scores far below 1; a method that adds noise can score above 1.
* **Seam score**: mean gradient magnitude on a thin band along the boundary of the pasted
  region (the pixels the method changed) divided by the mean gradient magnitude inside it. The
  same ratio is computed on the *original* image with the same band and region; their quotient
  is reported (1 = the paste boundary is no more visible than the photo's own content there;
  a pasted rectangle or a hard mask edge scores well above 1).
"""

from __future__ import annotations

import cv2
import numpy as np

SHARPNESS_SIGMA = 1.5
#: Central part of the detector box used for the sharpness ratio (fraction of width / height).
SHARPNESS_CENTRE = 0.6
#: Half-width of the seam band in pixels, and the erosion that defines "inside".
SEAM_BAND_PX = 2
SEAM_INSIDE_PX = 6
#: A pixel counts as changed when any channel differs by more than this (in 0..255).
CHANGED_LEVEL = 2


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)


def central_box(box: np.ndarray, shape: tuple[int, int], fraction: float = SHARPNESS_CENTRE) -> tuple[int, int, int, int]:
    """Integer x1, y1, x2, y2 of the central ``fraction`` of a box, clipped to the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * fraction / 2, (y2 - y1) * fraction / 2
    h, w = shape
    xa, ya = int(max(0, np.floor(cx - hw))), int(max(0, np.floor(cy - hh)))
    xb, yb = int(min(w, np.ceil(cx + hw))), int(min(h, np.ceil(cy + hh)))
    return xa, ya, xb, yb


def high_frequency_energy(image: np.ndarray, box: np.ndarray) -> float:
    """Mean squared residual of a σ = 1.5 px Gaussian blur in the central face region.

    Args:
        image: (H, W, 3) uint8 RGB; box: (4,) face box in pixels.
    """
    grey = _grey(image)
    resid = grey - cv2.GaussianBlur(grey, (0, 0), SHARPNESS_SIGMA)
    xa, ya, xb, yb = central_box(box, grey.shape)
    if xb <= xa or yb <= ya:
        return 0.0
    return float((resid[ya:yb, xa:xb] ** 2).mean())


def changed_region(original: np.ndarray, anonymized: np.ndarray) -> np.ndarray:
    """Boolean (H, W) region the method changed: pixels differing by more than
    :data:`CHANGED_LEVEL`, closed and with holes filled (the pasted area, not its speckle)."""
    diff = np.abs(original.astype(np.int16) - anonymized.astype(np.int16)).max(axis=2) > CHANGED_LEVEL
    mask = diff.astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(mask)
    if contours:
        cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def _gradient(grey: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    return np.sqrt(gx * gx + gy * gy)


def seam_ratios(original: np.ndarray, anonymized: np.ndarray) -> tuple[float, float] | None:
    """(boundary / inside gradient ratio of the anonymized image, same ratio on the original).

    ``None`` when the method changed too little to have a boundary (no-op, tiny faces).
    """
    region = changed_region(original, anonymized).astype(np.uint8)
    if region.sum() < 100:
        return None
    k_band = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * SEAM_BAND_PX + 1,) * 2)
    k_in = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * SEAM_INSIDE_PX + 1,) * 2)
    band = (cv2.dilate(region, k_band) - cv2.erode(region, k_band)).astype(bool)
    inside = cv2.erode(region, k_in).astype(bool)
    if band.sum() < 20 or inside.sum() < 50:
        return None
    ratios = []
    for image in (anonymized, original):
        g = _gradient(_grey(image))
        ratios.append(float(g[band].mean() / max(g[inside].mean(), 1e-3)))
    return ratios[0], ratios[1]
