"""Metric functions of the evaluation (pure NumPy/SciPy, no models).

Distances: identity judges compare embeddings by cosine distance ``1 − cos`` after L2
normalisation, except ``dlib``, which uses its native Euclidean distance on raw descriptors
(dlib's own convention; rank-1 is the same under either for unit-norm vectors).
"""

from __future__ import annotations

import math

import numpy as np


def pairwise_distance(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """(N, D) × (M, D) -> (N, M) distances; ``metric`` is ``"cosine"`` or ``"euclidean"``."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if metric == "cosine":
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return 1.0 - a @ b.T
    if metric == "euclidean":
        sq = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
        return np.sqrt(np.maximum(sq, 0.0))
    raise ValueError(f"unknown metric {metric!r}")


def paired_distance(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Row-wise distances between (N, D) arrays -> (N,)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    if metric == "cosine":
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return 1.0 - (a * b).sum(1)
    if metric == "euclidean":
        return np.linalg.norm(a - b, axis=1)
    raise ValueError(f"unknown metric {metric!r}")


def rank1(probe: np.ndarray, gallery: np.ndarray, metric: str) -> np.ndarray:
    """Per-probe rank-1 hit: probe i's nearest gallery entry is gallery i.

    Args:
        probe: (P, D) embeddings; probe i belongs to identity i.
        gallery: (P, D) embeddings; gallery i belongs to identity i.

    Returns:
        (P,) bool. Ties count against the probe (a constant embedding is not a hit).
    """
    dist = pairwise_distance(probe, gallery, metric)
    own = np.diag(dist)
    others = dist + np.diag(np.full(len(dist), np.inf))
    return own < others.min(axis=1)


def far_threshold(impostor_distances: np.ndarray, far: float) -> tuple[float, float]:
    """Distance threshold whose false-accept rate on the impostor pairs is at most ``far``.

    A pair is accepted when its distance is strictly below the threshold. The threshold is the
    k-th smallest impostor distance, k = max(1, floor(far · n)), so that ``k − 1`` impostors
    are accepted (FAR = (k − 1)/n ≤ far).

    Returns:
        (threshold, achieved FAR on the impostor pairs).
    """
    d = np.sort(np.asarray(impostor_distances, np.float64))
    if d.size == 0:
        raise ValueError("no impostor distances")
    k = max(1, int(math.floor(far * d.size + 1e-9)))
    threshold = float(d[k - 1])
    return threshold, float((d < threshold).mean())


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of (N, D) features (float64)."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need (N>=2, D) features, got {x.shape}")
    return x.mean(0), np.cov(x, rowvar=False)


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(cov)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a, b, sqrt_cov_b: np.ndarray | None = None) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets.

    ``||μa − μb||² + Tr(Σa) + Tr(Σb) − 2 Tr((Σa Σb)^½)``, with the last trace computed as
    ``Σ √λ`` over the eigenvalues of the symmetric ``Σb^½ Σa Σb^½`` (same spectrum as Σa Σb; two
    symmetric eigendecompositions instead of a general matrix square root, ~20x faster at D = 1024).
    Biased upward for small N: compare only figures computed with the same set sizes.

    Args:
        a, b: (N, D) feature arrays, or ``(mean, cov)`` tuples from :func:`gaussian_stats`.
        sqrt_cov_b: optional precomputed ``Σb^½`` (reuse it when ``b`` is a fixed reference set).
    """
    mu_a, cov_a = a if isinstance(a, tuple) else gaussian_stats(a)
    mu_b, cov_b = b if isinstance(b, tuple) else gaussian_stats(b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature dimensions differ: {mu_a.shape} vs {mu_b.shape}")
    root_b = _psd_sqrt(cov_b) if sqrt_cov_b is None else sqrt_cov_b
    lam = np.linalg.eigvalsh(root_b @ cov_a @ root_b)
    tr_covmean = float(np.sqrt(np.clip(lam, 0.0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_covmean)


def landmark_nme(pred: np.ndarray, ref: np.ndarray, interocular: np.ndarray) -> np.ndarray:
    """Mean point error normalised by inter-ocular distance.

    Args:
        pred, ref: (N, K, 2) landmarks in pixels.
        interocular: (N,) distance between the eye centres in pixels.

    Returns:
        (N,) mean over the K points of ``||pred − ref|| / interocular``.
    """
    err = np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(ref, np.float64), axis=-1).mean(-1)
    return err / np.maximum(np.asarray(interocular, np.float64), 1e-6)


def mean_pairwise_distance(embeddings: np.ndarray, metric: str = "cosine") -> float:
    """Mean distance over the distinct pairs of (R, D) embeddings (R ≥ 2)."""
    d = pairwise_distance(embeddings, embeddings, metric)
    iu = np.triu_indices(len(d), 1)
    return float(d[iu].mean())
