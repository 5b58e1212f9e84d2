"""Domains: where identity embeddings live, where noise is added, and what bounds sensitivity.

Differential privacy for *any two faces* needs a bounded set that every possible input lies in;
its diameter is the sensitivity. A domain therefore

* ``encode``: maps (N, d) embeddings into m noise coordinates and clips / projects anything
  outside the declared set *into* it (sensitivity is only valid inside the set, so out-of-domain
  inputs are never noised as they are);
* states its L2 radius r in noise coordinates: L2 sensitivity = diameter = 2r, L1 sensitivity =
  2r√m (for vectors in an L2 ball of radius r, ``‖a − b‖1 ≤ √m ‖a − b‖2 ≤ 2r√m``; both bounds are
  attained, e.g. at ±(1, …, 1)·r/√m, so they are tight and never data-dependent);
* ``decode``: post-processes a noisy vector back into the set and to an embedding
  (post-processing cannot weaken DP; Dwork & Roth 2014, Prop. 2.1).

Domains:
    :class:`UnitSphere` — unit-norm d-dim embeddings (m = d, r = 1; Δ1 = 2√d, Δ2 = 2).
    :class:`L2Ball` — points of R^k with norm ≤ R (m = k, r = R; Δ1 = 2R√k, Δ2 = 2R).
    :class:`Projection` — unit d-dim embeddings → public mean, top-k principal directions,
    whitening, clipped to an :class:`L2Ball` of radius R; decoded by un-whitening, adding the
    mean back and renormalising. Fitted on *public training* embeddings only (never user data),
    stored as a small versioned safetensors file with a checksum.
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PrivacyError, WeightsError
from .calibration import chi_quantile

__all__ = [
    "DEFAULT_K",
    "DEFAULT_RADIUS_QUANTILE",
    "Domain",
    "Encoded",
    "L2Ball",
    "PROJECTION_FORMAT",
    "PROJECTION_VERSION",
    "Projection",
    "UnitSphere",
    "as_batch",
    "centre",
    "placeholder_radius",
]

#: Default number of principal directions (to be tuned by the evaluation suite).
DEFAULT_K = 16
#: Default ball radius: this quantile of the whitened training norms (~95 % of training points
#: are not clipped).
DEFAULT_RADIUS_QUANTILE = 0.95
PROJECTION_FORMAT = "identitydp.projection"
PROJECTION_VERSION = 1
#: Inputs whose norm differs from 1 by more than this are counted as "clipped" by the sphere.
UNIT_TOLERANCE = 1e-6


def as_batch(z: object, dim: int) -> tuple[np.ndarray, bool]:
    """Validate embeddings and return them as a float64 (N, dim) array.

    Args:
        z: array-like of shape (N, dim) or (dim,) (a single embedding); torch CPU tensors work.
        dim: the expected embedding dimension.

    Returns:
        (batch, was_single): the (N, dim) float64 copy and whether the input was 1-D.

    Raises:
        PrivacyError: wrong rank or dimension, non-numeric or non-finite values.
    """
    try:
        arr = np.array(z, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:
        raise PrivacyError(f"embeddings must be a numeric array of shape (N, {dim}): {exc}") from exc
    single = arr.ndim == 1
    if single:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise PrivacyError(f"embeddings must have shape (N, {dim}) or ({dim},), got {np.shape(z)}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.all(np.isfinite(arr), axis=1)))
        raise PrivacyError(f"embeddings contain NaN or infinite values ({bad} row(s))")
    return arr, single


def _normalise_rows(x: np.ndarray, *, what: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0.0):
        raise PrivacyError(f"cannot project a zero {what} onto the unit sphere")
    return x / norms


def _clip_rows(y: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    norms = np.linalg.norm(y, axis=1)
    over = norms > radius
    out = y.copy()
    out[over] *= (radius / norms[over])[:, None]
    return out, over


def _renormalise_output(x: np.ndarray) -> np.ndarray:
    """Post-processing onto the unit sphere; a (measure-zero) zero vector maps to e_1."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = norms[:, 0] == 0.0
    if np.any(zero):
        x = x.copy()
        x[zero] = 0.0
        x[zero, 0] = 1.0
        norms[zero] = 1.0
    return x / norms


def centre(z: object, mean: object) -> np.ndarray:
    """Subtract a public mean embedding and renormalise: ``(z − μ) / ‖z − μ‖``.

    dlib embeddings are squashed into a narrow cone (two random people: cosine ≈ 0.83); after
    centring on the *training* mean, random pairs score ≈ 0 (docs/design.md#the-renderer). Use the mean of a
    fitted :class:`Projection` (``projection.mean``), never one computed on user images.

    Args:
        z: (N, d) or (d,) embeddings.
        mean: (d,) public mean.

    Returns:
        float64 array of the shape of ``z``, rows of unit L2 norm.
    """
    mu = np.asarray(mean, dtype=np.float64)
    if mu.ndim != 1:
        raise PrivacyError(f"mean must have shape (d,), got {mu.shape}")
    batch, single = as_batch(z, mu.shape[0])
    out = _normalise_rows(batch - mu, what="centred embedding (input equal to the mean)")
    return out[0] if single else out


def placeholder_radius(k: int, quantile: float = DEFAULT_RADIUS_QUANTILE) -> float:
    """A stand-in ball radius for k whitened coordinates when no projection is fitted.

    If whitened training embeddings were standard normal, their norms would follow a chi
    distribution with k degrees of freedom; this returns its ``quantile`` (k = 16: R ≈ 5.13).
    A fitted :class:`Projection` measures the real quantile; prefer it.
    """
    return chi_quantile(int(k), float(quantile))


@dataclass(frozen=True)
class Encoded:
    """Embeddings mapped into a domain's noise coordinates.

    Attributes:
        values: (N, m) float64 points inside the domain (after clipping).
        clipped: (N,) bool, True where the input lay outside the domain and was moved into it.
    """

    values: np.ndarray
    clipped: np.ndarray


class Domain(ABC):
    """A bounded set of embeddings and the coordinates noise is added in.

    Attributes:
        dim: d, the dimension of the embeddings a mechanism accepts and returns.
        noise_dim: m, the number of coordinates noise is added to.
        radius: r, the L2 radius of the set in noise coordinates (1 on the unit sphere, R in a ball).
    """

    dim: int
    noise_dim: int
    radius: float

    @property
    def diameter(self) -> float:
        """L2 diameter 2r: the L2 sensitivity over *any* two inputs."""
        return 2.0 * self.radius

    @property
    def l1_sensitivity(self) -> float:
        """L1 diameter 2r√m: the L1 sensitivity over any two inputs (tight)."""
        return 2.0 * self.radius * math.sqrt(self.noise_dim)

    @property
    def l2_sensitivity(self) -> float:
        """L2 diameter 2r."""
        return self.diameter

    @property
    def k(self) -> int | None:
        """Number of projected coordinates (None when there is no projection)."""
        return None

    @abstractmethod
    def encode(self, z: np.ndarray) -> Encoded:
        """(N, d) validated embeddings -> points of the set in noise coordinates, clipped into it."""

    @abstractmethod
    def clip(self, y: np.ndarray) -> np.ndarray:
        """Post-process (N, m) noisy coordinates back into the set."""

    @abstractmethod
    def to_embeddings(self, y: np.ndarray) -> np.ndarray:
        """(N, m) points of the set -> (N, d) embeddings."""

    def decode(self, y: np.ndarray) -> np.ndarray:
        """Post-processing: clip noisy (N, m) coordinates into the set, then map to (N, d)."""
        return self.to_embeddings(self.clip(y))

    @abstractmethod
    def describe(self) -> str:
        """One line naming the set, for privacy costs and ledgers."""


class UnitSphere(Domain):
    """Unit-norm embeddings in R^d; noise is added in the embedding coordinates themselves.

    L2 sensitivity 2, L1 sensitivity 2√d (d = 128: 22.63). Inputs of other norms are projected
    onto the sphere (z/‖z‖) before noise; a zero input raises. The noisy vector is renormalised.

    Args:
        dim: d, e.g. 128 for the dlib encoder.
    """

    radius = 1.0

    def __init__(self, dim: int) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise PrivacyError(f"dim must be a positive integer, got {dim!r}")
        self.dim = dim
        self.noise_dim = dim

    def __repr__(self) -> str:
        return f"UnitSphere({self.dim})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnitSphere) and other.dim == self.dim

    def __hash__(self) -> int:
        return hash(("UnitSphere", self.dim))

    def encode(self, z: np.ndarray) -> Encoded:
        norms = np.linalg.norm(z, axis=1)
        clipped = np.abs(norms - 1.0) > UNIT_TOLERANCE
        return Encoded(_normalise_rows(z, what="embedding"), clipped)

    def clip(self, y: np.ndarray) -> np.ndarray:
        return _renormalise_output(y)

    def to_embeddings(self, y: np.ndarray) -> np.ndarray:
        return y

    def describe(self) -> str:
        return f"unit sphere in R^{self.dim}"


class L2Ball(Domain):
    """Points of R^k with L2 norm ≤ R; noise is added in these coordinates.

    L2 sensitivity 2R, L1 sensitivity 2R√k. Inputs outside are scaled back onto the sphere of
    radius R before noise, and the noisy result is clipped the same way. On its own it is the
    whitened space of a :class:`Projection` (useful to reason about k and R without one).

    Args:
        dim: k.
        radius: R > 0, in whitened units (standard deviations of the training embeddings).
    """

    def __init__(self, dim: int, radius: float) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise PrivacyError(f"dim must be a positive integer, got {dim!r}")
        radius = float(radius)
        if not (math.isfinite(radius) and radius > 0):
            raise PrivacyError(f"radius must be finite and > 0, got {radius!r}")
        self.dim = dim
        self.noise_dim = dim
        self.radius = radius

    def __repr__(self) -> str:
        return f"L2Ball({self.dim}, radius={self.radius:g})"

    @property
    def k(self) -> int:
        return self.dim

    def encode(self, z: np.ndarray) -> Encoded:
        values, over = _clip_rows(z, self.radius)
        return Encoded(values, over)

    def clip(self, y: np.ndarray) -> np.ndarray:
        return _clip_rows(y, self.radius)[0]

    def to_embeddings(self, y: np.ndarray) -> np.ndarray:
        return y

    def describe(self) -> str:
        return f"L2 ball of radius {self.radius:g} in R^{self.dim}"


class Projection(Domain):
    """Public PCA subspace of identity embeddings, whitened and clipped to a ball of radius R.

    ``encode``: z (unit, d) -> y = Vᵀ(z − μ) / s ∈ R^k, clipped to ‖y‖ ≤ R.
    ``decode``: clip y to the ball -> z~ = μ + V (s ⊙ y), renormalised to unit length.

    μ (d,) is the training mean, V (d, k) the top-k principal directions (stored as ``components``
    (k, d)), s (k,) the standard deviations along them (whitening). Every point of the ball maps to
    a realistic identity, so the generator never sees an out-of-distribution vector, and noise
    lives in k ≪ d dimensions (noise norm grows like √k, not √d). Sensitivity: L2 2R, L1 2R√k.

    The fit must use *public training* embeddings (docs/privacy.md), never a user's images; fitting on
    user data would make the domain itself a function of private data.

    Args:
        mean: (d,) μ.
        components: (k, d) orthonormal rows.
        scales: (k,) positive standard deviations.
        radius: R > 0 in whitened units.
        source: free text naming the training data and encoder the fit used.
        radius_quantile: the training-norm quantile R was chosen at, if any (metadata only).
        n_train: number of training embeddings (metadata only).
        explained_variance: fraction of the training variance the k directions keep (metadata).
    """

    def __init__(
        self,
        *,
        mean: np.ndarray,
        components: np.ndarray,
        scales: np.ndarray,
        radius: float,
        source: str = "",
        radius_quantile: float | None = None,
        n_train: int | None = None,
        explained_variance: float | None = None,
    ) -> None:
        mean = np.asarray(mean, dtype=np.float64)
        components = np.asarray(components, dtype=np.float64)
        scales = np.asarray(scales, dtype=np.float64)
        if mean.ndim != 1 or components.ndim != 2 or scales.ndim != 1:
            raise PrivacyError("projection needs mean (d,), components (k, d) and scales (k,)")
        k, d = components.shape
        if mean.shape[0] != d or scales.shape[0] != k or k > d:
            raise PrivacyError(f"inconsistent projection shapes: mean {mean.shape}, components {components.shape}, scales {scales.shape}")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(components)) and np.all(np.isfinite(scales))):
            raise PrivacyError("projection parameters contain NaN or infinite values")
        if np.any(scales <= 0):
            raise PrivacyError("projection scales must be > 0")
        if not np.allclose(components @ components.T, np.eye(k), atol=1e-6):
            raise PrivacyError("projection components must be orthonormal rows")
        self.mean = mean
        self.components = components
        self.scales = scales
        self.ball = L2Ball(k, radius)
        self.dim = d
        self.noise_dim = k
        self.radius = self.ball.radius
        self.source = str(source)
        self.radius_quantile = radius_quantile
        self.n_train = n_train
        self.explained_variance = explained_variance

    def __repr__(self) -> str:
        return f"Projection(d={self.dim}, k={self.noise_dim}, radius={self.radius:g}, source={self.source!r})"

    @property
    def k(self) -> int:
        return self.noise_dim

    # -- maps -----------------------------------------------------------------------------
    def whiten(self, z: object) -> np.ndarray:
        """Unclipped whitened coordinates of (N, d) embeddings (renormalised first): (N, k)."""
        batch, _ = as_batch(z, self.dim)
        u = _normalise_rows(batch, what="embedding")
        return ((u - self.mean) @ self.components.T) / self.scales

    def encode(self, z: np.ndarray) -> Encoded:
        norms = np.linalg.norm(z, axis=1)
        off_sphere = np.abs(norms - 1.0) > UNIT_TOLERANCE
        y = self.whiten(z)
        inside = self.ball.encode(y)
        return Encoded(inside.values, inside.clipped | off_sphere)

    def clip(self, y: np.ndarray) -> np.ndarray:
        return self.ball.clip(y)

    def to_embeddings(self, y: np.ndarray) -> np.ndarray:
        return _renormalise_output(self.mean + (y * self.scales) @ self.components)

    def centre(self, z: object) -> np.ndarray:
        """:func:`centre` with this projection's public training mean."""
        return centre(z, self.mean)

    def with_radius(self, radius: float) -> Projection:
        """The same subspace with another ball radius R."""
        return Projection(
            mean=self.mean,
            components=self.components,
            scales=self.scales,
            radius=radius,
            source=self.source,
            radius_quantile=None,
            n_train=self.n_train,
            explained_variance=self.explained_variance,
        )

    def describe(self) -> str:
        return f"public projection to k={self.k} whitened coordinates, L2 ball of radius {self.radius:g} (from R^{self.dim})"

    # -- fitting --------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        embeddings: object,
        *,
        k: int = DEFAULT_K,
        radius: float | None = None,
        radius_quantile: float = DEFAULT_RADIUS_QUANTILE,
        source: str,
    ) -> Projection:
        """Fit μ, the top-k principal directions and whitening on PUBLIC TRAINING embeddings.

        Rows are renormalised to unit length first. Principal directions come from the
        eigendecomposition of the sample covariance (each direction's sign fixed so that its
        largest-magnitude entry is positive, for reproducibility).

        Args:
            embeddings: (n, d) training embeddings, n > k. Never LFW or user images.
            k: number of directions, 1 ≤ k ≤ d.
            radius: ball radius R in whitened units; default: the ``radius_quantile`` quantile of
                the whitened training norms (≈ 95 % of training points are not clipped).
            radius_quantile: see ``radius``.
            source: what the embeddings are (data set, encoder), stored in the artifact.
        """
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2:
            raise PrivacyError(f"embeddings must have shape (n, d), got {x.shape}")
        n, d = x.shape
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d:
            raise PrivacyError(f"k must be an integer in [1, {d}], got {k!r}")
        if n <= k:
            raise PrivacyError(f"need more than k={k} training embeddings, got {n}")
        if not np.all(np.isfinite(x)):
            raise PrivacyError("training embeddings contain NaN or infinite values")
        if not 0.0 < radius_quantile <= 1.0:
            raise PrivacyError(f"radius_quantile must be in (0, 1], got {radius_quantile}")
        u = _normalise_rows(x, what="training embedding")
        mean = u.mean(axis=0)
        centred = u - mean
        cov = centred.T @ centred / (n - 1)
        eigvals, eigvecs = np.linalg.eigh(cov)
        order = np.argsort(eigvals)[::-1][:k]
        vals = eigvals[order]
        if np.any(vals <= 1e-15):
            raise PrivacyError(f"training embeddings span fewer than k={k} directions")
        comps = eigvecs[:, order].T.copy()
        signs = np.sign(comps[np.arange(k), np.argmax(np.abs(comps), axis=1)])
        comps *= signs[:, None]
        scales = np.sqrt(vals)
        explained = float(vals.sum() / max(np.trace(cov), 1e-300))
        whitened = (centred @ comps.T) / scales
        quantile_used: float | None = None
        if radius is None:
            radius = float(np.quantile(np.linalg.norm(whitened, axis=1), radius_quantile))
            quantile_used = float(radius_quantile)
        return cls(
            mean=mean,
            components=comps,
            scales=scales,
            radius=float(radius),
            source=source,
            radius_quantile=quantile_used,
            n_train=n,
            explained_variance=explained,
        )

    # -- artifact -------------------------------------------------------------------------
    def _tensors(self) -> dict[str, np.ndarray]:
        return {
            "mean": np.ascontiguousarray(self.mean, dtype=np.float64),
            "components": np.ascontiguousarray(self.components, dtype=np.float64),
            "scales": np.ascontiguousarray(self.scales, dtype=np.float64),
        }

    def _metadata(self) -> dict[str, str]:
        meta = {
            "format": PROJECTION_FORMAT,
            "version": str(PROJECTION_VERSION),
            "d": str(self.dim),
            "k": str(self.k),
            "radius": repr(self.radius),
            "source": self.source,
        }
        if self.radius_quantile is not None:
            meta["radius_quantile"] = repr(float(self.radius_quantile))
        if self.n_train is not None:
            meta["n_train"] = str(int(self.n_train))
        if self.explained_variance is not None:
            meta["explained_variance"] = repr(float(self.explained_variance))
        return meta

    @staticmethod
    def _checksum(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> str:
        digest = hashlib.sha256()
        digest.update(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
        for name in sorted(tensors):
            arr = np.ascontiguousarray(tensors[name], dtype="<f8")
            digest.update(name.encode())
            digest.update(str(arr.shape).encode())
            digest.update(arr.tobytes())
        return digest.hexdigest()

    @property
    def sha256(self) -> str:
        """Checksum over the tensors and metadata (what :meth:`save` stores and :meth:`load` checks)."""
        return self._checksum(self._tensors(), self._metadata())

    def save(self, path: str | Path) -> Path:
        """Write a safetensors file (float64 mean / components / scales + metadata incl. sha256)."""
        from safetensors.numpy import save_file

        path = Path(path)
        tensors = self._tensors()
        meta = self._metadata()
        meta["sha256"] = self._checksum(tensors, meta)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Projection:
        """Read and verify a file written by :meth:`save`.

        Raises:
            WeightsError: missing file, wrong format or version, or checksum mismatch.
        """
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"projection file {path} not found (fit one with scripts/fit_projection.py)")
        try:
            with safe_open(str(path), framework="np") as fh:
                meta = dict(fh.metadata() or {})
                tensors = {name: fh.get_tensor(name) for name in fh.keys()}
        except (OSError, SafetensorError) as exc:
            raise WeightsError(f"projection file {path} is not a readable safetensors file: {exc}") from exc
        if meta.get("format") != PROJECTION_FORMAT:
            raise WeightsError(f"{path} is not an identitydp projection (format={meta.get('format')!r})")
        if meta.get("version") != str(PROJECTION_VERSION):
            raise WeightsError(f"{path} has projection version {meta.get('version')!r}; this identitydp reads version {PROJECTION_VERSION}")
        if set(tensors) != {"mean", "components", "scales"}:
            raise WeightsError(f"{path} lacks mean/components/scales tensors (has {sorted(tensors)})")
        expected = meta.get("sha256")
        actual = cls._checksum(tensors, meta)
        if expected != actual:
            raise WeightsError(f"projection file {path} fails its checksum (stored {expected}, computed {actual}); refit it")
        try:
            return cls(
                mean=tensors["mean"],
                components=tensors["components"],
                scales=tensors["scales"],
                radius=float(meta["radius"]),
                source=meta.get("source", ""),
                radius_quantile=float(meta["radius_quantile"]) if "radius_quantile" in meta else None,
                n_train=int(meta["n_train"]) if "n_train" in meta else None,
                explained_variance=float(meta["explained_variance"]) if "explained_variance" in meta else None,
            )
        except (KeyError, ValueError, PrivacyError) as exc:
            raise WeightsError(f"projection file {path} has invalid contents: {exc}") from exc
