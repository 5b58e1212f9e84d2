"""Face verification: are the largest faces of two images the same person?

Thresholds are LFW-calibrated (``benchmarks/lfw_verification.py`` writes
``weights/lfw_thresholds.json``: the cosine distance that maximises accuracy on all 6,000 View 2
pairs, and the one that accepts at most 0.1 % of its 3,000 impostor pairs), for
``IdentityEmbedder(model, flip=True)``; a threshold calibrated for another configuration
(weights, alignment, flip) is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import IdentityDPError, WeightsError
from .registry import WEIGHTS_DIR

THRESHOLDS_FILE = WEIGHTS_DIR / "lfw_thresholds.json"


class NoFaceError(IdentityDPError):
    """An image given for verification has no detectable face."""


@dataclass(frozen=True)
class Threshold:
    """LFW calibration of one recognizer (cosine distance between unit embeddings).

    Attributes:
        model: recognizer name.
        same_below: distance below which two faces are called the same person (best accuracy).
        strict_below: distance accepting at most 0.1 % of LFW impostor pairs (FAR 0.1 %).
        lfw_accuracy: 10-fold LFW View 2 accuracy of the recognizer, in [0, 1].
    """

    model: str
    same_below: float
    strict_below: float
    lfw_accuracy: float


def load_threshold(model: str, config_id: str | None = None, path: Path = THRESHOLDS_FILE) -> Threshold:
    """Read the calibrated threshold of ``model``.

    Args:
        model: recognizer name.
        config_id: the embedder's :attr:`IdentityEmbedder.config_id`; when given, it must be the
            configuration the threshold was calibrated with (weights, alignment, flip).

    Raises:
        WeightsError: file missing, model absent, or calibrated for another configuration.
    """
    if not path.is_file():
        raise WeightsError(f"verification thresholds {path} are missing; run benchmarks/lfw_verification.py")
    entries = json.loads(path.read_text())["models"]
    if model not in entries:
        raise WeightsError(f"no LFW threshold for {model!r} in {path}; known: {', '.join(sorted(entries))}")
    entry = entries[model]
    if config_id is not None and entry.get("config") != config_id:
        raise WeightsError(
            f"the {model} threshold in {path} was calibrated for {entry.get('config')}, not {config_id}; "
            "rerun benchmarks/lfw_verification.py"
        )
    return Threshold(model, float(entry["same_below"]), float(entry["far_0.1pct_below"]), float(entry["lfw_accuracy_10fold"]))


@dataclass(frozen=True)
class Verification:
    """Result of comparing the largest face of two images.

    Attributes:
        model: recognizer used.
        distance: cosine distance between the two unit embeddings (0 identical, 2 opposite).
        threshold: the calibration used.
        same: ``distance < threshold.same_below``.
        boxes: (2, 4) float32 boxes (x1, y1, x2, y2) of the compared faces.
    """

    model: str
    distance: float
    threshold: Threshold
    same: bool
    boxes: np.ndarray


def largest_face(detections):
    """Index of the largest box of a :class:`identitydp.detect.Detections` (None when empty)."""
    if len(detections) == 0:
        return None
    areas = (detections.boxes[:, 2] - detections.boxes[:, 0]) * (detections.boxes[:, 3] - detections.boxes[:, 1])
    return int(np.argmax(areas))


def verify(image_a: np.ndarray, image_b: np.ndarray, model: str = "dlib", detector=None, embedder=None,
           names: tuple[str, str] = ("first image", "second image")) -> Verification:
    """Compare the largest face of two (H, W, 3) uint8 RGB images.

    Raises:
        NoFaceError: an image has no face.
        WeightsError: weights or thresholds missing.
    """
    from ..detect import CenterFaceDetector
    from ..embed import IdentityEmbedder

    embedder = embedder or IdentityEmbedder(model, flip=True)
    threshold = load_threshold(model, embedder.config_id)
    detector = detector or CenterFaceDetector()
    vectors, boxes = [], []
    for image, name in zip((image_a, image_b), names):
        det = detector.detect(image)
        k = largest_face(det)
        if k is None:
            raise NoFaceError(f"no face found in {name}")
        vectors.append(embedder.embed(image, det.subset([k])).vectors[0])
        boxes.append(det.boxes[k])
    distance = float(1.0 - vectors[0] @ vectors[1])
    return Verification(model, distance, threshold, distance < threshold.same_below, np.stack(boxes))
