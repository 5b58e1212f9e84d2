"""Alignment: 5-point similarity warp to a canonical crop, its inverse, and a soft face mask.

Landmark order everywhere: left eye, right eye, nose tip, left mouth corner, right mouth corner,
in the *image's* left/right (the subject's right eye is the image's left eye), pixel (x, y).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# ArcFace 5-point template for a 112×112 crop (InsightFace), in pixels.
ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def template_for(size: int, margin: float = 0.0) -> np.ndarray:
    """ArcFace template scaled to a ``size``×``size`` crop.

    Args:
        size: crop side in pixels.
        margin: extra context as a fraction of the crop; 0 gives the ArcFace framing, 0.25 shrinks
            the face so that a quarter more context shows around it (useful for generators that
            must see hair and background).

    Returns:
        (5, 2) float64 landmark positions in crop pixels.
    """
    if size <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    unit = ARCFACE_112 / 112.0
    unit = (unit - 0.5) / (1.0 + margin) + 0.5
    return unit * size


def estimate_similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """(Weighted) least-squares similarity transform (Umeyama, no reflection) mapping ``src`` to ``dst``.

    Args:
        src: (K, 2) points, K ≥ 2.
        dst: (K, 2) points.
        weights: optional (K,) non-negative weights of the points (uniform when None).

    Returns:
        (2, 3) float64 affine matrix M with ``dst ≈ M @ [x, y, 1]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need two (K, 2) point sets with K >= 2, got {src.shape} and {dst.shape}")
    w = np.full(len(src), 1.0) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(src),) or not np.all(w >= 0) or w.sum() <= 0:
        raise ValueError(f"need (K,) non-negative weights with a positive sum, got {w.shape}")
    w = w / w.sum()
    mu_src, mu_dst = w @ src, w @ dst
    src_c, dst_c = src - mu_src, dst - mu_dst
    var_src = w @ (src_c**2).sum(1)
    if var_src < 1e-12:
        raise ValueError("degenerate landmarks: all points coincide")
    u, s, vt = np.linalg.svd((dst_c * w[:, None]).T @ src_c)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    scale = (s * d).sum() / var_src
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_dst - scale * rot @ mu_src
    return matrix


@dataclass(frozen=True)
class AlignedFace:
    """A face warped to a canonical crop.

    Attributes:
        crop: (size, size, 3) uint8 RGB crop.
        matrix: (2, 3) affine from image pixels to crop pixels.
        inverse: (2, 3) affine from crop pixels back to image pixels.
        size: crop side in pixels.
    """

    crop: np.ndarray
    matrix: np.ndarray
    inverse: np.ndarray
    size: int


def align_face(
    image: np.ndarray,
    landmarks: np.ndarray,
    size: int = 128,
    margin: float = 0.0,
    template: np.ndarray | None = None,
) -> AlignedFace:
    """Warp one face to a canonical ``size``×``size`` crop.

    Args:
        image: (H, W, 3) uint8 RGB frame.
        landmarks: (5, 2) landmark pixels in the frame.
        size: crop side in pixels.
        margin: see :func:`template_for` (ignored when ``template`` is given).
        template: optional (5, 2) target positions in crop pixels.

    Returns:
        The :class:`AlignedFace`; pixels outside the frame are replicated from its border.
    """
    target = template_for(size, margin) if template is None else np.asarray(template, np.float64)
    matrix = estimate_similarity(np.asarray(landmarks, np.float64), target)
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return AlignedFace(crop=crop, matrix=matrix, inverse=cv2.invertAffineTransform(matrix), size=size)


def align_batch(
    image: np.ndarray, landmarks: np.ndarray, size: int = 128, margin: float = 0.0
) -> list[AlignedFace]:
    """Align every face of a frame: ``landmarks`` is (N, 5, 2)."""
    return [align_face(image, lm, size=size, margin=margin) for lm in np.asarray(landmarks)]


def face_mask(size: int, margin: float = 0.0, feather: float = 0.08) -> np.ndarray:
    """Soft elliptical face mask in crop coordinates.

    The ellipse covers forehead to chin and cheek to cheek for the ArcFace framing at ``margin``.

    Args:
        size: crop side in pixels.
        margin: the margin the crop was made with.
        feather: width of the soft edge as a fraction of ``size``.

    Returns:
        (size, size) float32 in [0, 1], 1 inside the face.
    """
    tpl = template_for(size, margin)
    eye_mid = tpl[:2].mean(0)
    mouth_mid = tpl[3:].mean(0)
    center = (eye_mid + mouth_mid) / 2 + np.array([0.0, -0.02 * size / (1 + margin)])
    face_h = np.linalg.norm(mouth_mid - eye_mid)
    axes = (face_h * 1.45, face_h * 1.95)  # half-width, half-height
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    r = np.sqrt(((xx - center[0]) / axes[0]) ** 2 + ((yy - center[1]) / axes[1]) ** 2)
    soft = max(feather * size / max(axes), 1e-3)
    return np.clip((1.0 - r) / soft + 0.5, 0.0, 1.0).astype(np.float32)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine to (..., 2) points."""
    pts = np.asarray(points, np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]
