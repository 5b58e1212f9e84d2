"""Noise sources: the secure default (OpenDP) and a seeded one for tests and experiments only.

Why this matters: adding textbook floating-point Laplace or Gaussian samples to a value leaks the
value through the low-order bits of the result (Mironov, "On Significance of the Least
Significant Bits for Differential Privacy", CCS 2012). :class:`SecureSampler`, the default of
every mechanism, passes the *input itself* through OpenDP's vetted measurements
(``make_laplace`` / ``make_gaussian`` on ``vector_domain(atom_domain(T=float, nan=False))`` with
``l1_distance`` / ``l2_distance``): OpenDP rounds the input to a grid of spacing 2^k, adds
discrete Laplace / discrete Gaussian noise on that grid with a cryptographically secure OS-seeded
generator, and accounts for the rounding in its privacy map (Canonne, Kamath & Steinke, "The
Discrete Gaussian for Differential Privacy", NeurIPS 2020; OpenDP proofs for v0.16). We choose
the noise scale from our sensitivity and then check it against OpenDP's own privacy map for one
embedding, so the ε we report is one OpenDP certifies.

:class:`ReproducibleRNG` draws from a seeded NumPy generator. It is **not for production**: it
is predictable from its seed and has the floating-point weakness above. Use it for unit tests,
statistical checks and reproducible research runs (e.g. noisy identities for training the
generator, which releases nothing about users).
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import PrivacyError
from .calibration import analytic_gaussian_sigma

__all__ = ["GRID_EXPONENT", "NoiseSource", "ReproducibleRNG", "SecureSampler"]

#: OpenDP works on the grid 2^GRID_EXPONENT (≈ 9.1e-13). Far finer than any meaningful change of an
#: embedding, coarse enough for OpenDP's exact samplers to run ~4x faster than at float resolution.
GRID_EXPONENT = -40


@runtime_checkable
class NoiseSource(Protocol):
    """What a mechanism needs from a source of randomness.

    Arrays are float64. ``x`` has shape (N, m): N embeddings in the m noise coordinates of a
    domain. Scales are in the same units as ``x``.
    """

    secure: bool

    def laplace_scale(self, *, sensitivity: float, epsilon: float, dim: int) -> float:
        """Laplace scale b that makes one m-vector release ε-DP for L1 sensitivity Δ1."""

    def gaussian_scale(self, *, sensitivity: float, epsilon: float, delta: float, dim: int) -> float:
        """Gaussian σ that makes one m-vector release (ε, δ)-DP for L2 sensitivity Δ2."""

    def add_laplace(self, x: np.ndarray, scale: float) -> np.ndarray:
        """x + i.i.d. Laplace(0, scale) noise, shape of x."""

    def add_gaussian(self, x: np.ndarray, scale: float) -> np.ndarray:
        """x + i.i.d. N(0, scale²) noise, shape of x."""

    def unit_directions(self, n: int, dim: int) -> np.ndarray:
        """(n, dim) directions uniform on the unit sphere S^(dim-1)."""

    def gamma(self, n: int, shape: int, scale: float) -> np.ndarray:
        """(n,) samples of Gamma(shape, scale) for an integer shape."""


class ReproducibleRNG:
    """Seeded NumPy noise. NOT FOR PRODUCTION: predictable, and open to floating-point attacks.

    For tests, statistical checks of the mechanisms and reproducible experiments only. The same
    seed gives the same noise. Mechanisms use :class:`SecureSampler` unless given one of these.

    Args:
        seed: any seed ``numpy.random.default_rng`` accepts.
    """

    secure = False

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def __repr__(self) -> str:
        return f"ReproducibleRNG(seed={self.seed!r})  # not for production"

    def laplace_scale(self, *, sensitivity: float, epsilon: float, dim: int) -> float:
        return sensitivity / epsilon

    def gaussian_scale(self, *, sensitivity: float, epsilon: float, delta: float, dim: int) -> float:
        # The same σ as the secure path, so a seeded experiment adds the noise a user's run would.
        return certified_gaussian_scale(sensitivity=sensitivity, epsilon=epsilon, delta=delta, dim=dim)

    def add_laplace(self, x: np.ndarray, scale: float) -> np.ndarray:
        return x + self._rng.laplace(0.0, scale, size=x.shape)

    def add_gaussian(self, x: np.ndarray, scale: float) -> np.ndarray:
        return x + self._rng.normal(0.0, scale, size=x.shape)

    def unit_directions(self, n: int, dim: int) -> np.ndarray:
        g = self._rng.standard_normal((n, dim))
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    def gamma(self, n: int, shape: int, scale: float) -> np.ndarray:
        return self._rng.gamma(shape, scale, size=n)


class SecureSampler:
    """Default noise source: OpenDP's floating-point-safe samplers with OS randomness.

    The input passes through OpenDP (it is rounded to the 2^k grid and noised there), so no
    float sample is ever added to private data in Python. One call noises a whole flattened
    batch; each embedding in it is a separate release with its own guarantee. Speed on this
    project's 2-core CPU: about 5 µs per Laplace and 9 µs per Gaussian coordinate (a 1000 × 128
    batch: ~0.6 s Laplace, ~1.1 s Gaussian; 1000 × 16 after projection: ~0.1 s).

    Args:
        grid_exponent: k of OpenDP's 2^k output grid (default :data:`GRID_EXPONENT`).
    """

    secure = True

    def __init__(self, *, grid_exponent: int = GRID_EXPONENT) -> None:
        try:
            import opendp.prelude as dp
        except ImportError as exc:  # pragma: no cover - opendp is a hard dependency
            raise PrivacyError("the secure sampler needs the `opendp` package (pip install opendp)") from exc
        dp.enable_features("contrib")
        self._dp = dp
        self.grid_exponent = int(grid_exponent)

    def __repr__(self) -> str:
        return f"SecureSampler(grid_exponent={self.grid_exponent})"

    # -- OpenDP measurements --------------------------------------------------------------
    def _domain(self, size: int):
        dp = self._dp
        return dp.vector_domain(dp.atom_domain(T=float, nan=False), size=int(size))

    def _laplace(self, size: int, scale: float):
        dp = self._dp
        return dp.m.make_laplace(self._domain(size), dp.l1_distance(T=float), scale=float(scale), k=self.grid_exponent)

    def _gaussian(self, size: int, scale: float):
        dp = self._dp
        return dp.m.make_gaussian(self._domain(size), dp.l2_distance(T=float), scale=float(scale), k=self.grid_exponent)

    # -- calibration, checked against OpenDP's privacy maps -------------------------------
    def laplace_scale(self, *, sensitivity: float, epsilon: float, dim: int) -> float:
        """b = Δ1/ε, enlarged by OpenDP's rounding allowance until OpenDP's map certifies ε."""
        scale = sensitivity / epsilon
        for _ in range(50):
            certified = float(self._laplace(dim, scale).map(float(sensitivity)))
            if certified <= epsilon:
                return scale
            scale = max(scale * certified / epsilon, math.nextafter(scale, math.inf))
        raise PrivacyError(f"OpenDP did not certify epsilon={epsilon} for L1 sensitivity {sensitivity}")  # pragma: no cover

    def gaussian_scale(self, *, sensitivity: float, epsilon: float, delta: float, dim: int) -> float:
        """σ whose (ε, δ) is certified by OpenDP itself: see :func:`certified_gaussian_scale`."""
        return certified_gaussian_scale(sensitivity=sensitivity, epsilon=epsilon, delta=delta, dim=dim,
                                        grid_exponent=self.grid_exponent)

    def gaussian_epsilon(self, *, sensitivity: float, scale: float, delta: float, dim: int) -> float:
        """The ε at ``delta`` that OpenDP's own zCDP → (ε, δ) conversion gives for σ = ``scale``."""
        return opendp_gaussian_epsilon(sensitivity=sensitivity, scale=scale, delta=delta, dim=dim,
                                       grid_exponent=self.grid_exponent)

    def gaussian_rho(self, *, sensitivity: float, scale: float, dim: int) -> float:
        """ρ-zCDP that OpenDP's map certifies for one dim-vector at L2 sensitivity Δ2 and σ = scale."""
        return float(self._gaussian(dim, scale).map(float(sensitivity)))

    # -- sampling -------------------------------------------------------------------------
    def _run(self, measurement, x: np.ndarray) -> np.ndarray:
        flat = np.ascontiguousarray(x, dtype=np.float64).ravel()
        out = measurement(flat.tolist())
        return np.asarray(out, dtype=np.float64).reshape(x.shape)

    def add_laplace(self, x: np.ndarray, scale: float) -> np.ndarray:
        if x.size == 0:
            return x.astype(np.float64, copy=True)
        return self._run(self._laplace(x.size, scale), x)

    def add_gaussian(self, x: np.ndarray, scale: float) -> np.ndarray:
        if x.size == 0:
            return x.astype(np.float64, copy=True)
        return self._run(self._gaussian(x.size, scale), x)

    def unit_directions(self, n: int, dim: int) -> np.ndarray:
        """Normalised OpenDP Gaussian vectors (rotation invariance gives a uniform direction)."""
        while True:
            g = self.add_gaussian(np.zeros((n, dim)), 1.0)
            norms = np.linalg.norm(g, axis=1, keepdims=True)
            if n == 0 or np.all(norms > 0):
                return g / norms

    def gamma(self, n: int, shape: int, scale: float) -> np.ndarray:
        """Sum of ``shape`` |Laplace(scale)| samples: |Lap(b)| ~ Exp(b), a sum of s ~ Gamma(s, b)."""
        e = np.abs(self.add_laplace(np.zeros((n, shape)), scale))
        return e.sum(axis=1)



def _opendp_gaussian(dim: int, scale: float, grid_exponent: int):
    import opendp.prelude as dp

    dp.enable_features("contrib")
    domain = dp.vector_domain(dp.atom_domain(T=float, nan=False), size=int(dim))
    return dp.m.make_gaussian(domain, dp.l2_distance(T=float), scale=float(scale), k=grid_exponent)


def opendp_gaussian_epsilon(*, sensitivity: float, scale: float, delta: float, dim: int,
                            grid_exponent: int = GRID_EXPONENT) -> float:
    """ε at ``delta`` certified by OpenDP for its (discretised) Gaussian on a dim-vector:
    its ρ-zCDP map composed with its own ``make_zCDP_to_approxDP`` conversion."""
    import opendp.prelude as dp

    meas = dp.c.make_zCDP_to_approxDP(_opendp_gaussian(dim, scale, grid_exponent))
    return float(meas.map(float(sensitivity)).epsilon(float(delta)))


def certified_gaussian_scale(*, sensitivity: float, epsilon: float, delta: float, dim: int,
                             grid_exponent: int = GRID_EXPONENT) -> float:
    """The Gaussian σ for which OpenDP *itself* certifies (ε, δ)-DP at L2 sensitivity Δ2.

    OpenDP certifies its Gaussian as ρ-zCDP; the (ε, δ) a user asked for is only machine-checked
    after OpenDP's zCDP → (ε, δ) conversion, which is looser than Balle & Wang's exact analytic
    condition (at δ = 1e-6 the analytic σ for ε = 1 / 4 / 16 converts to 1.078 / 4.279 / 16.96).
    So start from the analytic σ and enlarge it until the converted ε is ≤ the requested one: the
    ε we state is then the one the machine-checked map gives (at the price of ≈ 8 % more noise).
    """
    sigma = analytic_gaussian_sigma(epsilon, delta, sensitivity)
    for _ in range(60):
        certified = opendp_gaussian_epsilon(sensitivity=sensitivity, scale=sigma, delta=delta, dim=dim,
                                            grid_exponent=grid_exponent)
        if certified <= epsilon:
            return sigma
        sigma = max(sigma * (1.0 + 0.999 * (certified - epsilon) / epsilon), math.nextafter(sigma, math.inf))
    raise PrivacyError(f"OpenDP did not certify (epsilon={epsilon}, delta={delta}) for L2 sensitivity {sensitivity}")  # pragma: no cover
