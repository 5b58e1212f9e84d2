"""Attacks on anonymized faces, beyond "a fixed recognizer against the originals".

Every attack works on judge embeddings (no models here):

* **linkage** — rank-1 between two anonymized photos of the same person: probe = image 1
  anonymized, gallery = image 2 anonymized (an independent draw). Can a reader of the released
  data tell which released faces belong together?
* **parrot** — the attacker owns the *original* gallery, runs the same tool with the same setting
  on it, and matches the released face against that anonymized gallery. We give the parrot two
  draws per gallery face and average their embeddings (a randomized method's noise partly cancels,
  what the draws share — whatever leaks through — adds up); for a deterministic method one draw is
  all there is and parrot equals linkage.
* **trained attacker** — an adapter from the anonymized face's judge embedding back to the
  original's, fitted on public (original, anonymized) pairs made from the *training* faces (never
  LFW) with the method under test, then applied to LFW: rank-1 of the adapted probe against the
  original gallery. The adapter is ridge regression shrunk towards the identity map (closed form),
  the ridge chosen by held-out retrieval on the training pairs.
* **gallery size** — rank-1 as a function of how many people the attacker must tell apart,
  computed *exactly* (no sampling) from the full distance matrix: the chance that none of the
  wrong gallery entries closer than the true one is among ``G - 1`` distractors drawn uniformly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .metrics import pairwise_distance

#: Gallery sizes reported by :func:`rank1_vs_gallery_size` (those ≤ the run's people, plus the run's own).
GALLERY_SIZES = (2, 5, 10, 30, 100, 300, 1000)
#: Ridge strengths tried by :class:`RidgeAdapter` (relative to the mean feature energy); the
#: largest is, in effect, "no adapter", so the attacker is never weaker than matching as is.
RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 1e6)


def rank1_vs_gallery_size(probe: np.ndarray, gallery: np.ndarray, metric: str, sizes=GALLERY_SIZES) -> dict[int, float]:
    """Expected rank-1 when the true match competes with ``G - 1`` random other gallery people.

    Args:
        probe: (P, D) embeddings; probe i belongs to identity i.
        gallery: (P, D) embeddings, gallery i of identity i.
        metric: ``"cosine"`` or ``"euclidean"``.
        sizes: gallery sizes G to report (those above P are dropped; P itself is always included).

    Returns:
        G -> expected rank-1 hit rate over probes and over uniformly drawn distractor sets (at
        G = P it equals :func:`identitydp.eval.metrics.rank1`'s mean; chance is 1/G).
    """
    from math import comb

    dist = pairwise_distance(probe, gallery, metric)
    P = len(dist)
    own = np.diag(dist)
    # closer[i]: wrong gallery entries at least as close as the true one (ties count against).
    closer = (dist <= own[:, None]).sum(axis=1) - 1
    out: dict[int, float] = {}
    for G in sorted({int(g) for g in sizes if 2 <= g <= P} | {P}):
        total = comb(P - 1, G - 1)
        # P(no closer entry among G-1 distractors from P-1) = C(P-1-k, G-1) / C(P-1, G-1)
        p = [comb(P - 1 - int(k), G - 1) / total if P - 1 - k >= G - 1 else 0.0 for k in closer]
        out[G] = float(np.mean(p))
    return out


def average_draws(draws: list[np.ndarray], metric: str) -> np.ndarray:
    """Mean of several (N, D) embeddings of the same faces (unit-normalised first for cosine)."""
    stack = np.stack([np.asarray(d, np.float64) for d in draws])
    if metric == "cosine":
        stack = stack / np.maximum(np.linalg.norm(stack, axis=2, keepdims=True), 1e-12)
    return stack.mean(axis=0)


@dataclass
class RidgeAdapter:
    """Linear map from anonymized-face embeddings to original-face embeddings (an attacker).

    Attributes:
        weight: (D + 1, D) map applied to ``[x, 1]``.
        ridge: the chosen ridge strength (relative to the mean feature energy).
        heldout_rank1: retrieval rank-1 on the held-out training pairs at that ridge.
        identity_heldout_rank1: the same without the adapter (anonymized vs original as they are).
    """

    weight: np.ndarray
    ridge: float
    heldout_rank1: float
    identity_heldout_rank1: float

    @staticmethod
    def _prepare(x: np.ndarray, metric: str) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if metric == "cosine":
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return np.concatenate([x, np.ones((len(x), 1))], axis=1)

    @staticmethod
    def _solve(x: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
        """argmin_W |x W - y|^2 + ridge' |W - I|^2 (bias row free): a strong ridge is "match as is"."""
        scale = ridge * float((x[:, :-1] ** 2).sum(axis=1).mean())
        d = x.shape[1] - 1
        reg = np.eye(d + 1) * scale
        reg[-1, -1] = 0.0  # never shrink the bias
        prior = np.zeros((d + 1, y.shape[1]))
        prior[:d, :d] = np.eye(d)
        return np.linalg.solve(x.T @ x + reg, x.T @ y + reg @ prior)

    @classmethod
    def fit(cls, anonymized: np.ndarray, original: np.ndarray, metric: str, seed: int = 0) -> "RidgeAdapter":
        """Fit on (N, D) pairs (row i: the same training face anonymized / original).

        The ridge is chosen on a held-out fifth by rank-1 retrieval of the originals (what the
        attacker wants), then the map is refitted on all pairs.

        Raises:
            ValueError: fewer than 10 pairs, or shapes that disagree.
        """
        anonymized = np.asarray(anonymized, np.float64)
        original = np.asarray(original, np.float64)
        if anonymized.shape != original.shape or len(anonymized) < 10:
            raise ValueError(f"need >= 10 aligned pairs, got {anonymized.shape} and {original.shape}")
        x, y = cls._prepare(anonymized, metric), np.asarray(original, np.float64)
        if metric == "cosine":
            y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        order = np.random.default_rng(seed).permutation(len(x))
        held, train = order[: len(x) // 5], order[len(x) // 5 :]

        def retrieval(pred: np.ndarray) -> float:
            d = pairwise_distance(pred, y[held], metric)
            return float((d.argmin(axis=1) == np.arange(len(held))).mean())

        scores = {r: retrieval(x[held] @ cls._solve(x[train], y[train], r)) for r in RIDGE_GRID}
        best = max(RIDGE_GRID, key=lambda r: (scores[r], r))  # ties: the stronger ridge
        return cls(cls._solve(x, y, best), best, scores[best], retrieval(anonymized[held]))

    def apply(self, anonymized: np.ndarray, metric: str) -> np.ndarray:
        """(N, D) anonymized embeddings -> (N, D) estimates of the originals' embeddings."""
        return self._prepare(anonymized, metric) @ self.weight
