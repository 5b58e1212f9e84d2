"""68-point facial landmarks (iBUG 300-W markup): a NumPy port of dlib's shape predictor.

Used by IdentityDP to draw the face's geometry for the v2 renderer (and, for v1, to warp the
rendering onto the original). It is deliberately a *different* landmark model from the
evaluation's FaceMesh judge, so the landmark error the evaluation reports stays an independent
measurement.

The model is dlib's ``shape_predictor_68_face_landmarks.dat`` (PyPI ``face-recognition-models``;
an ensemble of regression trees, Kazemi & Sullivan, CVPR 2014), converted by
``scripts/convert_shape_predictor.py`` to ``weights/landmarks68_ert.safetensors`` (splits and
geometry exact, leaf vectors int8 with a scale per leaf: 18 MB instead of 100 MB) and evaluated
here in NumPy, so inference needs neither dlib nor the 100 MB model package.
``tests/test_landmarks68.py`` checks it against dlib itself.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..align import template_for

#: Registry name of the converted predictor.
WEIGHTS_NAME = "landmarks68_ert"

#: Index ranges of the 68-point markup.
JAW = slice(0, 17)
BROWS = slice(17, 27)


def crop_face_box(size: int, margin: float) -> np.ndarray:
    """The face box dlib's shape predictor expects, in the coordinates of an aligned crop.

    The predictor was trained on dlib HOG detector boxes; on our ArcFace-template crops that
    detector returns, on average, a square box 2.16 mouth-to-eye heights wide, from 0.65 of that
    height above the eyes (measured on LFW crops at 128 px, margin 0.25: [24, 36, 104, 116]).

    Returns:
        (4,) float64 x1, y1, x2, y2 in crop pixels.
    """
    tpl = template_for(size, margin)
    eye_y = tpl[:2, 1].mean()
    face_h = tpl[3:, 1].mean() - eye_y
    cx = tpl[:, 0].mean()
    half = 1.08 * face_h
    top = eye_y - 0.65 * face_h
    return np.array([cx - half, top, cx + half, top + 2 * half])


class ShapePredictor:
    """An ensemble-of-regression-trees shape predictor (dlib's algorithm), in NumPy.

    Arrays (from :func:`load_predictor`): initial_shape (2P,) float32 in box-normalised
    coordinates (x0, y0, x1, …); for each of C cascades, T trees of depth D with S = 2^D − 1
    splits: split_idx (C, T, S, 2) feature-pixel pairs, thresholds (C, T, S) intensity
    differences, leaves (C, T, 2^D, 2P) shape increments; feature pixels anchor_idx (C, F) and
    deltas (C, F, 2) (offsets from the anchor landmark in the mean shape's frame). Leaves come as
    leaves_int8 (C, T, 2^D, 2P) int8 and leaf_scales (C, T, 2^D) float32.
    """

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.initial = np.asarray(arrays["initial_shape"], np.float64).reshape(-1, 2)
        split_idx = np.asarray(arrays["split_idx"], np.intp)
        cascades, trees, splits, _ = split_idx.shape
        leaves = np.asarray(arrays["leaves_int8"])
        # Flat per-cascade tables, indexed by tree * splits + node (or tree * leaves + leaf): one
        # gather per tree level instead of a 2-D fancy index.
        self.first = split_idx[..., 0].reshape(cascades, -1)
        self.second = split_idx[..., 1].reshape(cascades, -1)
        self.thresholds = np.asarray(arrays["thresholds"], np.float32).reshape(cascades, -1)
        # Kept int8 (16 MB) and scaled per gathered leaf: dequantised up front they would take 65 MB.
        self.leaves = leaves.reshape(cascades, trees * leaves.shape[2], -1)
        self.leaf_scales = np.asarray(arrays["leaf_scales"], np.float32).reshape(cascades, -1)
        self.anchor_idx = np.asarray(arrays["anchor_idx"], np.intp)
        self.deltas = np.asarray(arrays["deltas"], np.float64)
        self.depth = int(np.log2(splits + 1))
        self._split_base = np.arange(trees) * splits
        self._leaf_base = np.arange(trees) * leaves.shape[2]
        self._splits = splits
        self._initial_centred = self.initial - self.initial.mean(0)

    def __call__(self, gray: np.ndarray, box) -> np.ndarray:
        """(H, W) uint8 intensities and an (x1, y1, x2, y2) integer box → (P, 2) integer pixel
        positions (dlib rounds its output to whole pixels)."""
        left, top, right, bottom = (float(v) for v in box)
        size = np.array([right - left, bottom - top])
        origin = np.array([left, top])
        height, width = gray.shape
        flat_gray = gray.reshape(-1)
        shape = self.initial.copy()
        for c in range(self.first.shape[0]):
            linear = self._linear_part(shape)
            points = (self.deltas[c] @ linear.T + shape[self.anchor_idx[c]]) * size + origin
            pix = _round_half_up(points)
            inside = (pix[:, 0] >= 0) & (pix[:, 0] < width) & (pix[:, 1] >= 0) & (pix[:, 1] < height)
            features = np.where(inside, flat_gray[np.where(inside, pix[:, 1] * width + pix[:, 0], 0)], 0).astype(np.float32)
            node = np.zeros(len(self._split_base), np.intp)
            for _ in range(self.depth):
                at = self._split_base + node
                left_branch = features[self.first[c, at]] - features[self.second[c, at]] > self.thresholds[c, at]
                node = 2 * node + 2 - left_branch
            rows = self._leaf_base + node - self._splits
            step = self.leaf_scales[c, rows] @ self.leaves[c, rows].astype(np.float32)
            shape = shape + step.astype(np.float64).reshape(-1, 2)
        return _round_half_up(shape * size + origin)

    def _linear_part(self, target: np.ndarray) -> np.ndarray:
        """The 2×2 scale-rotation of the least-squares similarity initial shape → ``target``
        (dlib's find_similarity_transform, Umeyama 1991; in 2-D its closed form is the complex
        ratio a = Σ conj(s)·t / Σ |s|²), translation dropped."""
        s = self._initial_centred
        t = target - target.mean(0)
        norm = (s**2).sum()
        re = ((s * t).sum()) / norm
        im = ((s[:, 0] * t[:, 1] - s[:, 1] * t[:, 0]).sum()) / norm
        return np.array([[re, -im], [im, re]])


def _round_half_up(points: np.ndarray) -> np.ndarray:
    # dlib converts float vectors to integer points by rounding to nearest (floor(x + 0.5)).
    return np.floor(points + 0.5).astype(np.intp)


@lru_cache(maxsize=1)
def load_predictor() -> ShapePredictor:
    """The registered converted predictor (checksum verified).

    Raises:
        WeightsError: the file is missing or its checksum is wrong.
    """
    from safetensors.numpy import load_file

    from .registry import weight_path

    return ShapePredictor(load_file(str(weight_path(WEIGHTS_NAME))))


class Landmarks68:
    """68-point landmarks on aligned face crops (the NumPy port of dlib's predictor).

    Raises:
        WeightsError: the converted model is missing or corrupt.
    """

    def __init__(self) -> None:
        self._predictor = load_predictor()

    def predict(self, crop: np.ndarray, box: np.ndarray) -> np.ndarray:
        """68 landmarks of the face in ``box``.

        Args:
            crop: (H, W, 3) uint8 RGB image (usually an aligned face crop).
            box: (4,) x1, y1, x2, y2 in pixels, e.g. :func:`crop_face_box` (rounded to whole
                pixels, as dlib's rectangle does).

        Returns:
            (68, 2) float64 pixel coordinates (pixel centres at +0.5).
        """
        if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {crop.dtype} {crop.shape}")
        # dlib's intensity of an RGB pixel: the integer mean of the three channels.
        gray = (crop.astype(np.uint16).sum(axis=2) // 3).astype(np.uint8)
        box = [int(round(v)) for v in box]
        return self._predictor(gray, box).astype(np.float64) + 0.5
