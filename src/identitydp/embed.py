"""Embed stage: identity vectors for detected faces.

``IdentityEmbedder("dlib")`` is the pipeline's encoder (the differentiable port of dlib's ResNet,
:mod:`identitydp.models.dlib_resnet`); ``"mobileface"`` and ``"faceres"`` are the independent
judges (:mod:`identitydp.models.judges`), exposed through the same interface so that evaluation
and ``identitydp verify`` treat every recognizer alike.

Vectors are L2-normalised. dlib's raw descriptors are squashed (two random people score cosine
about 0.83, docs/design.md#the-renderer): pass ``mean`` (the training-set mean descriptor, e.g. the one a
generator checkpoint was trained with) to centre them before normalising, so that random pairs
score about 0.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from .detect import Detections

MODELS = ("dlib", "mobileface", "faceres")
DIMS = {"dlib": 128, "mobileface": 256, "faceres": 1024}


@dataclass(frozen=True)
class Embeddings:
    """Identity vectors of the faces of one frame ("no faces" is an empty instance).

    Attributes:
        vectors: (N, D) float32, unit L2 norm (D = 128 for dlib, 256 mobileface, 1024 faceres).
        model: the recognizer's name, one of :data:`MODELS`.
    """

    vectors: np.ndarray
    model: str

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2:
            raise ValueError(f"vectors must be (N, D), got {self.vectors.shape}")

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    # Scoped, so that a library call never changes the caller's global thread setting.
    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class IdentityEmbedder:
    """Identity embeddings with one recognizer.

    Args:
        model: ``"dlib"`` (default, the pipeline's encoder), ``"mobileface"`` or ``"faceres"``.
        mean: optional (D,) vector subtracted from the raw features before normalising.
        device: torch device.
        threads: torch CPU threads to use inside calls (restored afterwards); None keeps the
            current setting.
        batch_size: faces per forward pass.
        flip: average the raw features of each crop and its mirror image (test-time
            augmentation: twice the cost, more accurate — dlib on LFW View 2 98.98 % -> about
            99.2 %). ``identitydp verify`` uses it; the thresholds are calibrated with it.

    Raises:
        ValueError: unknown model or a mean of the wrong shape.
        WeightsError: the model's weights are missing or corrupt.
    """

    def __init__(
        self,
        model: str = "dlib",
        mean: np.ndarray | None = None,
        device: str | torch.device = "cpu",
        threads: int | None = None,
        batch_size: int = 32,
        flip: bool = False,
    ) -> None:
        if model not in MODELS:
            raise ValueError(f"unknown recognizer {model!r}; choose from {', '.join(MODELS)}")
        self.model = model
        self.dim = DIMS[model]
        if mean is not None:
            mean = np.asarray(mean, np.float32).reshape(-1)
            if mean.shape != (self.dim,):
                raise ValueError(f"mean must have shape ({self.dim},) for {model}, got {mean.shape}")
        self.mean = mean
        self.threads = threads
        self.flip = bool(flip)
        self.batch_size = max(1, int(batch_size))
        self.device = torch.device(device)
        from .models.registry import registry

        if model == "dlib":
            from .models.dlib_resnet import DLIB_CHIP_150, DLIB_CHIP_WEIGHTS, INPUT_SIZE, WEIGHTS_NAME, DlibEncoder

            self.net = DlibEncoder.load(device=self.device)
            self.chip_size = INPUT_SIZE
            alignment = DLIB_CHIP_150.tobytes() + DLIB_CHIP_WEIGHTS.tobytes()
            weights = WEIGHTS_NAME
        else:
            from .models.judges import FaceRes, MobileFace

            cls = MobileFace if model == "mobileface" else FaceRes
            self.net = cls.load(device=self.device)
            self.chip_size = cls.size
            alignment = np.asarray(cls.template, np.float64).tobytes()
            weights = cls.graph_name
        digest = hashlib.sha256(alignment).hexdigest()[:8]
        # What the vectors depend on (weights, alignment, flip), e.g. for cache keys.
        self.config_id = (
            f"{model}:{registry()[weights].sha256[:12]}:align-{digest}:{'flip' if self.flip else 'single'}"
        )

    def chips(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """Aligned crops this recognizer expects.

        Args:
            image: (H, W, 3) uint8 RGB frame.
            landmarks: (N, 5, 2) CenterFace landmarks in frame pixels.

        Returns:
            (N, S, S, 3) uint8 crops (S = 150 dlib, 112 mobileface, 224 faceres).
        """
        landmarks = np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
        if len(landmarks) == 0:
            return np.zeros((0, self.chip_size, self.chip_size, 3), np.uint8)
        if self.model == "dlib":
            from .models.dlib_resnet import dlib_chip

            return np.stack([dlib_chip(image, lm) for lm in landmarks])
        return self.net.align(image, landmarks)

    def embed_chips(self, chips: np.ndarray) -> Embeddings:
        """Embed aligned crops, (N, S, S, 3) uint8 RGB as returned by :meth:`chips`."""
        chips = np.asarray(chips)
        if chips.ndim != 4 or chips.shape[1:] != (self.chip_size, self.chip_size, 3):
            raise ValueError(f"expected (N, {self.chip_size}, {self.chip_size}, 3) chips for {self.model}, got {chips.shape}")
        if len(chips) == 0:
            return Embeddings(np.zeros((0, self.dim), np.float32), self.model)
        out = []
        with _torch_threads(self.threads), torch.inference_mode():
            for start in range(0, len(chips), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(chips[start : start + self.batch_size]))
                x = batch.to(self.device).permute(0, 3, 1, 2).float()
                y = self._features(x)
                if self.flip:
                    y = (y + self._features(x.flip(3))) / 2
                out.append(y.float().cpu().numpy())
        raw = np.concatenate(out)
        if self.mean is not None:
            raw = raw - self.mean
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        return Embeddings((raw / np.maximum(norms, 1e-12)).astype(np.float32), self.model)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return y.features if self.model == "faceres" else y

    def embed(self, image: np.ndarray, detections: Detections) -> Embeddings:
        """Embed every detected face of a frame.

        Args:
            image: (H, W, 3) uint8 RGB frame.
            detections: :class:`identitydp.detect.Detections` for that frame.

        Returns:
            :class:`Embeddings` with one row per detection, in the same order.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
        return self.embed_chips(self.chips(image, detections.landmarks))


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cosine similarity of matching rows of (N, D) unit vectors (or two (D,) vectors)."""
    return 1.0 - np.sum(np.asarray(a) * np.asarray(b), axis=-1)
