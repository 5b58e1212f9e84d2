"""Declared kept attributes: release a few public identity directions as they are, noise the rest.

A unit identity z ∈ R^d (centred dlib space) is split along K public, orthonormal *attribute
directions* U (K × d; fitted on public training data only, ``scripts/fit_attributes.py``) and
their orthogonal complement B ((d − K) × d):

    a = U z            (K numbers: released exactly, **not** differentially private)
    r = B z            (the rest of the identity: released through an ε-DP mechanism)

The rest goes through one of two noise domains:

* **conditional projection** (the default, :class:`ConditionalProjection`): the public Gaussian
  of training identities (mean and covariance, fitted with the directions) gives the expected
  rest of a face with kept values a, m(a) = μ_r + W (a − μ_a), and the top-k principal directions
  P (whitening s) of what varies around it. The mechanism sees y = Pᵀ(r − m(a)) / s, clipped to
  the L2 ball of radius R (L2 sensitivity 2R, L1 2R√k, whatever a is), and the release is
  z~ = normalise(Uᵀa + Bᵀ(m(a) + P (s ⊙ y~))) — post-processing of a and of the DP output. At
  small ε a face is drawn from the faces *with those kept values* (a typical woman of about 40,
  say), not from the whole sphere, so the renderer sees a realistic identity that agrees with
  what was kept.
* **sphere** (``projection=False``): r / ‖r‖ on the unit sphere of R^(d − K) (L2 sensitivity 2,
  L1 2√(d − K)); z~ = Uᵀa + √(1 − ‖a‖²) · Bᵀr~ / ‖Bᵀr~‖. ε = ∞ gives the identity back exactly.

Either way the output is ε-DP *given the kept values*: two faces with the same kept values are
ε-indistinguishable, two with different kept values are told apart by those values exactly. The
release record names every kept value, and the ledger stores them with the release.

**Values set from the context** (``kept_from="context"``, ``--gender-from-context``): the kept
coordinates are not read from the identity at all but given by the caller, from a function of
pixels the output publishes unchanged (:mod:`identitydp.models.context_gender`); the identity goes
through the mechanism with the expected rest given those values. Nothing of the identity is released
without noise, so the release is ε-DP between *any* two identities (for the same context).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PrivacyError
from .domains import DEFAULT_K, DEFAULT_RADIUS_QUANTILE, L2Ball, as_batch, placeholder_radius
from .mechanisms import Mechanism, make_mechanism

__all__ = ["ATTRIBUTE_NAMES", "AttributeDirections", "ConditionalProjection", "KeptAttributesMechanism", "KeptRelease"]

#: Attributes that can be kept (the rows of the shipped directions file).
ATTRIBUTE_NAMES = ("gender", "age")
DIRECTIONS_NAME = "attribute_directions"


@dataclass(frozen=True)
class AttributeDirections:
    """Public attribute directions of identity space.

    Attributes:
        names: the attribute of each row.
        directions: (K, d) float64, orthonormal rows.
        info: provenance and held-out figures (from the file's metadata).
    """

    names: tuple[str, ...]
    directions: np.ndarray
    info: dict
    mean: np.ndarray | None = None
    covariance: np.ndarray | None = None

    @classmethod
    def load(cls, path: str | Path | None = None) -> "AttributeDirections":
        """The registered ``attribute_directions`` (checksum verified) or a file.

        ``mean`` (d,) and ``covariance`` (d, d) are the public Gaussian of training identities
        (None in files written before it was added)."""
        from safetensors import safe_open

        if path is None:
            from ..models.registry import weight_path

            path = weight_path(DIRECTIONS_NAME)
        with safe_open(str(path), framework="numpy") as fh:
            info = json.loads(fh.metadata()["info"])
            directions = fh.get_tensor("directions").astype(np.float64)
            keys = set(fh.keys())
            mean = fh.get_tensor("mean").astype(np.float64) if "mean" in keys else None
            covariance = fh.get_tensor("covariance").astype(np.float64) if "covariance" in keys else None
        return cls(tuple(info["names"]), directions, info, mean, covariance)

    def select(self, names) -> "AttributeDirections":
        """The directions of ``names`` (in that order), made orthonormal.

        Raises:
            PrivacyError: an unknown attribute name, or a repeated one.
        """
        names = tuple(names)
        unknown = [n for n in names if n not in self.names]
        if unknown or len(set(names)) != len(names) or not names:
            raise PrivacyError(f"can keep {', '.join(self.names)} (each once); got {', '.join(names) or 'nothing'}")
        rows = np.stack([self.directions[self.names.index(n)] for n in names])
        q, _ = np.linalg.qr(rows.T)  # Gram-Schmidt in the given order
        q = q.T * np.sign(np.sum(q.T * rows, axis=1, keepdims=True))
        return AttributeDirections(names, q, self.info, self.mean, self.covariance)


class ConditionalProjection:
    """The rest of a unit identity given its kept coordinates, as k whitened coordinates.

    From the public Gaussian N(μ, Σ) of training identities (d-dim): with a = U z and r = B z,
    the expected rest given a is m(a) = μ_r + W (a − μ_a), W = Σ_ra Σ_aa⁻¹, and the rest varies
    around it with covariance Σ_r|a = Σ_rr − W Σ_ar, whose top-k eigenvectors P ((d − K) × k) and
    standard deviations s (k,) whiten it. Noise coordinates: y = Pᵀ(r − m(a)) / s, k-dim, in the
    L2 ball of radius R (default: the χ_k quantile, what a Gaussian's whitened norms would reach;
    a declared constant, not measured on anyone's data).

    Args:
        kept_directions: U, (K, d) orthonormal rows.
        mean: μ, (d,).
        covariance: Σ, (d, d) symmetric positive semi-definite.
        k: noise coordinates, 1 ≤ k ≤ d − K.
        radius: R (default from ``quantile``).
        quantile: χ_k quantile for R.
    """

    def __init__(self, kept_directions: np.ndarray, mean: np.ndarray, covariance: np.ndarray, *,
                 k: int = DEFAULT_K, radius: float | None = None, quantile: float = DEFAULT_RADIUS_QUANTILE) -> None:
        u = np.asarray(kept_directions, np.float64)
        mean = np.asarray(mean, np.float64)
        cov = np.asarray(covariance, np.float64)
        n_kept, dim = u.shape
        if mean.shape != (dim,) or cov.shape != (dim, dim):
            raise PrivacyError(f"the identity Gaussian needs mean ({dim},) and covariance ({dim}, {dim}); "
                               f"got {mean.shape} and {cov.shape}")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov)) and np.allclose(cov, cov.T, atol=1e-9)):
            raise PrivacyError("the identity covariance must be finite and symmetric")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= dim - n_kept:
            raise PrivacyError(f"k must be an integer in [1, {dim - n_kept}], got {k!r}")
        full, _, _ = np.linalg.svd(u.T, full_matrices=True)
        self.kept_directions = u
        self.complement = full[:, n_kept:].T  # (d − K, d)
        b = self.complement
        self.mean_kept = u @ mean
        self.mean_rest = b @ mean
        cov_kk = u @ cov @ u.T
        cov_rk = b @ cov @ u.T
        self.regression = np.linalg.solve(cov_kk, cov_rk.T).T  # W, (d − K, K); Σ_aa is symmetric
        cov_rest = b @ cov @ b.T - self.regression @ cov_rk.T
        values, vectors = np.linalg.eigh((cov_rest + cov_rest.T) / 2)
        order = np.argsort(values)[::-1][:k]
        if np.any(values[order] <= 1e-15):
            raise PrivacyError(f"the identity covariance spans fewer than k={k} directions beside the kept ones")
        comps = vectors[:, order]
        comps *= np.sign(comps[np.argmax(np.abs(comps), axis=0), np.arange(k)])  # reproducible signs
        self.components = comps  # P, (d − K, k)
        self.scales = np.sqrt(values[order])
        self.k = k
        self.radius = float(radius) if radius is not None else placeholder_radius(k, quantile)

    def expected_rest(self, kept: np.ndarray) -> np.ndarray:
        """(N, K) kept coordinates → (N, d − K) m(a)."""
        return self.mean_rest + (kept - self.mean_kept) @ self.regression.T

    def whiten(self, unit: np.ndarray, kept: np.ndarray | None = None) -> np.ndarray:
        """(N, d) unit identities → (N, k) unclipped noise coordinates y, around the expected rest
        given ``kept`` ((N, K); default: the identities' own kept coordinates)."""
        if kept is None:
            kept = unit @ self.kept_directions.T
        rest = unit @ self.complement.T
        return ((rest - self.expected_rest(kept)) @ self.components) / self.scales

    def rebuild(self, kept: np.ndarray, coords: np.ndarray) -> np.ndarray:
        """(N, K) kept values and (N, k) noise coordinates → (N, d) unit identities."""
        rest = self.expected_rest(kept) + (coords * self.scales) @ self.components.T
        out = kept @ self.kept_directions + rest @ self.complement
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


@dataclass
class KeptRelease:
    """A release with kept attributes.

    Attributes:
        embeddings: (N, d) float64 unit rows: what the renderer is conditioned on.
        kept: (N, K) float64 coordinates along the kept directions, released as they are (not DP).
        names: the kept attributes.
        cost: the :class:`~identitydp.privacy.cost.PrivacyCost` of the remainder, per row.
    """

    embeddings: np.ndarray
    kept: np.ndarray
    names: tuple[str, ...]
    cost: object

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def kept_dict(self, row: int) -> dict[str, float]:
        return {name: round(float(v), 6) for name, v in zip(self.names, self.kept[row])}


class KeptAttributesMechanism:
    """An ε-DP mechanism on the rest of identity space, plus K attributes kept exactly.

    Args:
        name: ``laplace``, ``gaussian`` or ``metric`` (as :func:`make_mechanism`).
        epsilon, delta, rng: of the mechanism on the rest (keyword-only).
        keep: the attributes to keep, e.g. ``("gender",)``.
        directions: an :class:`AttributeDirections` (default: the registered file).
        projection: True (default): the rest goes through the :class:`ConditionalProjection`
            (k-dim ball); False: through the unit sphere of R^(d − K).
        k: noise coordinates of the conditional projection.
        kept_from: ``"identity"`` (default): the kept values are the identity's own coordinates,
            released without DP; ``"context"``: the caller passes them to :meth:`perturb` (set from
            the context around the face, which the output shows anyway); nothing of the identity
            is released without noise.

    Raises:
        PrivacyError: an unknown or repeated attribute, or a directions file without the
            identity Gaussian that the projection needs.
    """

    def __init__(self, name: str, *, epsilon: float, keep, delta: float | None = None, rng=None,
                 directions: AttributeDirections | None = None, projection: bool = True, k: int = DEFAULT_K,
                 kept_from: str = "identity") -> None:
        if kept_from not in ("identity", "context"):
            raise PrivacyError(f"kept_from must be 'identity' or 'context', got {kept_from!r}")
        self.kept_from = kept_from
        base = directions if directions is not None else AttributeDirections.load()
        self.attributes = base.select(keep)
        u = self.attributes.directions
        dim = u.shape[1]
        self.dim = dim
        self.conditional: ConditionalProjection | None = None
        if projection:
            if base.mean is None or base.covariance is None:
                raise PrivacyError("these attribute directions carry no identity Gaussian (mean, covariance); "
                                   "refit them with scripts/fit_attributes.py or keep with projection=False")
            self.conditional = ConditionalProjection(u, base.mean, base.covariance, k=k)
            self.complement = self.conditional.complement
            domain = L2Ball(k, self.conditional.radius)
        else:
            # Orthonormal basis of the complement: the last d − K left singular vectors of [Uᵀ | 0].
            full, _, _ = np.linalg.svd(u.T, full_matrices=True)
            self.complement = full[:, len(u):].T  # (d − K, d)
            domain = L2Ball(dim - len(u), 1.0)
        self.inner: Mechanism = make_mechanism(name, epsilon=epsilon, domain=domain, delta=delta, rng=rng)
        self.epsilon = self.inner.epsilon

    @property
    def domain(self):
        return self.inner.domain

    def privacy_cost(self):
        """The inner mechanism's cost, with the relation it holds for: faces that share the kept
        values (the kept values themselves are released exactly)."""
        from dataclasses import replace

        cost = self.inner.privacy_cost()
        kept = ", ".join(self.attributes.names)
        where = (f"the rest of the identity given the kept values, {self.conditional.k} whitened coordinates"
                 if self.conditional is not None else "the rest of the identity on the unit sphere")
        if self.kept_from == "context":
            return replace(cost, relation=f"any two faces in the same context (the {kept} coordinate is set from the "
                                          f"context around the face, which the output shows unchanged; noise on {where}); "
                                          f"{cost.relation}")
        return replace(cost, relation=f"any two faces with the same kept {kept} (released without DP; noise on {where}); "
                                      f"{cost.relation}")

    def perturb(self, z: object, kept: np.ndarray | None = None) -> KeptRelease:
        """(N, d) or (d,) centred identities → a :class:`KeptRelease`.

        Rows are renormalised to unit length first (the domain); the kept coordinates of the
        unit row are released exactly, the rest through the inner mechanism. With
        ``kept_from="context"``, ``kept`` ((N, K), required) gives the kept coordinates instead,
        and the identity's own are never read.
        """
        batch, _ = as_batch(z, self.dim)
        norms = np.linalg.norm(batch, axis=1, keepdims=True)
        if np.any(norms <= 0):
            raise PrivacyError("a zero identity vector cannot be split")
        unit = batch / norms
        if self.kept_from == "context":
            if kept is None:
                raise PrivacyError("kept_from='context' needs the kept values from the context (kept=)")
            kept = np.asarray(kept, np.float64).reshape(len(unit), len(self.attributes.names))
            if not np.all(np.isfinite(kept)) or np.any(np.abs(kept) > 1):
                raise PrivacyError("kept values from the context must be finite coordinates in [-1, 1]")
        elif kept is not None:
            raise PrivacyError("kept values can only be given with kept_from='context'")
        else:
            kept = unit @ self.attributes.directions.T
        if self.conditional is not None:
            release = self.inner.perturb(self.conditional.whiten(unit, kept))
            coords = np.asarray(release.embeddings, np.float64).reshape(len(unit), -1)
            return KeptRelease(self.conditional.rebuild(kept, coords), kept, self.attributes.names, self.privacy_cost())
        release = self.inner.perturb(unit @ self.complement.T)
        noisy = np.asarray(release.embeddings, np.float64).reshape(len(unit), -1) @ self.complement
        # A zero remainder can only come with ‖a‖ = 1, where ``room`` is 0 anyway.
        noisy /= np.maximum(np.linalg.norm(noisy, axis=1, keepdims=True), 1e-12)
        room = np.sqrt(np.clip(1.0 - np.sum(kept**2, axis=1, keepdims=True), 0.0, 1.0))
        out = kept @ self.attributes.directions + room * noisy
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return KeptRelease(out, kept, self.attributes.names, self.privacy_cost())
