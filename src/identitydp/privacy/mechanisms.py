"""ε-IdentityDP mechanisms: perturb batches of identity embeddings with a stated guarantee.

A *release* is one noisy identity vector for one face (or one video track). Every mechanism

1. validates the (N, d) batch (finite numbers, declared dimension),
2. moves it into its :class:`~identitydp.privacy.domains.Domain` (renormalise onto the unit
   sphere, or project + clip to the whitened ball): the sensitivity below holds only inside the
   domain, so nothing outside it is ever noised as is,
3. adds noise calibrated to the domain's *diameter* (neighbouring inputs are any two faces; the
   sensitivity never depends on the data),
4. post-processes the noisy vector back into the domain and to a unit embedding (free under DP).

Usage (the generator / pipeline)::

    from identitydp.privacy import LaplaceMechanism, UnitSphere, Projection, PrivacyLedger
    mech = LaplaceMechanism(epsilon=4.0, domain=Projection.load("projection.safetensors"))
    ledger = PrivacyLedger(budget=8.0)
    release = mech.perturb(z, ledger=ledger, keys=[f"{path}#face{i}" for i in range(len(z))])
    z_noisy = release.embeddings          # (N, 128) float64, unit rows

Noise comes from :class:`~identitydp.privacy.sampling.SecureSampler` (OpenDP, OS randomness)
unless ``rng=ReproducibleRNG(seed)`` is passed (tests and experiments only, not for production).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..errors import PrivacyError
from .calibration import check_delta, check_epsilon
from .cost import PrivacyCost
from .domains import Domain, as_batch
from .sampling import GRID_EXPONENT, NoiseSource, SecureSampler

if TYPE_CHECKING:
    from .explain import Explanation
    from .ledger import PrivacyLedger

__all__ = ["MECHANISMS", "GaussianMechanism", "LaplaceMechanism", "Mechanism", "MetricMechanism", "Release", "make_mechanism"]

#: Mechanism names accepted by :func:`make_mechanism` and the CLI.
MECHANISMS = ("laplace", "gaussian", "metric")


@dataclass(frozen=True)
class Release:
    """The result of perturbing a batch.

    Attributes:
        embeddings: (N, d) float64 released embeddings, unit L2 rows (post-processed). For a
            single (d,) input this is (d,).
        noisy: (N, m) float64 noisy vectors in noise coordinates BEFORE post-processing (the raw
            mechanism output; for tests and analysis).
        encoded: (N, m) float64 noise-free inputs in noise coordinates, after clipping into the
            domain (what the noise was added to; never release this).
        clipped: (N,) bool, True where an input lay outside the domain and was moved into it.
        cost: the :class:`PrivacyCost` of each row (every row is one release).
    """

    embeddings: np.ndarray
    noisy: np.ndarray
    encoded: np.ndarray
    clipped: np.ndarray
    cost: PrivacyCost

    def __len__(self) -> int:
        return int(self.noisy.shape[0])


def _check_source(rng: object) -> NoiseSource:
    if rng is None:
        return SecureSampler()
    if isinstance(rng, np.random.Generator):
        raise PrivacyError(
            "pass rng=ReproducibleRNG(seed) for seeded, not-for-production noise; "
            "a numpy Generator is not accepted as a privacy noise source"
        )
    if not isinstance(rng, NoiseSource):
        raise PrivacyError(f"rng must be None (secure default), ReproducibleRNG or SecureSampler, got {type(rng).__name__}")
    return rng


class Mechanism(ABC):
    """Base class: keyword-only ``epsilon``, ``domain`` and ``rng``; see the module docstring.

    Args:
        epsilon: ε > 0, or ``math.inf`` for the explicit noise-free release (no privacy).
        domain: the declared input domain (:class:`UnitSphere`, :class:`L2Ball`, :class:`Projection`).
        rng: None (default) for the secure OpenDP sampler; ``ReproducibleRNG(seed)`` for tests and
            reproducible experiments only.
    """

    name: ClassVar[str]

    def __init__(self, *, epsilon: float, domain: Domain, rng: NoiseSource | None = None) -> None:
        self.epsilon = check_epsilon(epsilon)
        if not isinstance(domain, Domain):
            raise PrivacyError(f"domain must be a Domain (UnitSphere, L2Ball, Projection), got {type(domain).__name__}")
        self.domain = domain
        self.rng = _check_source(rng)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(epsilon={self.epsilon:g}, domain={self.domain!r}, rng={self.rng!r})"

    @property
    def secure(self) -> bool:
        """True when noise comes from the vetted sampler (the default)."""
        return bool(self.rng.secure)

    @property
    @abstractmethod
    def sensitivity(self) -> float:
        """The sensitivity the noise is calibrated to: a property of the domain, never of data."""

    @property
    @abstractmethod
    def scale(self) -> float:
        """The noise scale parameter (0 when ε = ∞)."""

    @property
    @abstractmethod
    def noise_rms(self) -> float:
        """Root-mean-square L2 norm of the noise vector, √E‖n‖², in noise coordinates."""

    @abstractmethod
    def privacy_cost(self) -> PrivacyCost:
        """The (ε, δ) of one release and the neighbouring relation it holds for."""

    @abstractmethod
    def _add_noise(self, y: np.ndarray) -> np.ndarray:
        """(N, m) encoded inputs -> (N, m) noisy vectors."""

    def _relation(self) -> str:
        return f"any two faces (replace one identity by any other) in the {self.domain.describe()}"

    def _cost(self, **fields: object) -> PrivacyCost:
        return PrivacyCost(
            mechanism=self.name,
            relation=self._relation(),
            domain=self.domain.describe(),
            k=self.domain.k,
            radius=self.domain.radius if self.domain.k is not None else None,
            **fields,  # type: ignore[arg-type]
        )

    def perturb(self, z: object, *, ledger: PrivacyLedger | None = None, keys: Sequence[str] | None = None) -> Release:
        """Release noisy versions of a batch of embeddings; one release per row.

        Args:
            z: (N, d) (or (d,)) embeddings, d = ``domain.dim``; finite. Rows off the domain are
                clipped / projected into it first (counted in ``Release.clipped``).
            ledger: if given, every row is charged to it *before* any noise is drawn; a row that
                would exceed the ledger's budget raises :class:`BudgetExceededError` and nothing is
                released (nor charged).
            keys: with ``ledger``: one key per row (image path + face index, or a video track id).

        Returns:
            :class:`Release` with the post-processed embeddings and the raw noisy vectors.

        Raises:
            PrivacyError: invalid input, or keys missing / of the wrong length.
            BudgetExceededError: from the ledger, before anything is released.
        """
        batch, single = as_batch(z, self.domain.dim)
        if ledger is not None:
            if keys is None or isinstance(keys, str) or len(keys) != batch.shape[0]:
                raise PrivacyError(f"with a ledger, pass keys: one key per embedding ({batch.shape[0]})")
        elif keys is not None:
            raise PrivacyError("keys were given without a ledger")
        encoded = self.domain.encode(batch)
        cost = self.privacy_cost()
        if ledger is not None:
            ledger.charge_batch(list(keys), cost)  # type: ignore[arg-type]
        if math.isinf(self.epsilon):
            noisy = encoded.values.copy()
        else:
            noisy = self._add_noise(encoded.values)
        out = self.domain.decode(noisy)
        return Release(
            embeddings=out[0] if single else out,
            noisy=noisy,
            encoded=encoded.values,
            clipped=encoded.clipped,
            cost=cost,
        )

    def explain(self) -> Explanation:
        """Plain-words explanation of this mechanism's guarantee (see :mod:`identitydp.privacy.explain`)."""
        from .explain import explain_mechanism

        return explain_mechanism(self)


class LaplaceMechanism(Mechanism):
    """Pure ε-DP Laplace mechanism over any two faces (the paper's ε-IdentityDP).

    Adds i.i.d. Laplace(0, b) noise to each of the m noise coordinates with b = Δ1/ε, where the
    L1 sensitivity Δ1 is the L1 diameter of the domain: 2√d on the unit sphere (d = 128: 22.63),
    2R√k on the projected ball. The noisy vector is then renormalised / clipped (post-processing).
    For any two inputs z, z' and any output set S: P[M(z) ∈ S] ≤ e^ε P[M(z') ∈ S].

    Sources: Dwork, McSherry, Nissim & Smith, "Calibrating Noise to Sensitivity in Private Data
    Analysis", TCC 2006; Dwork & Roth 2014, Def. 3.3 and Thm 3.6; IdentityDP (Wen et al. 2021,
    arXiv:2103.01745) for applying it to identity embeddings. Secure sampling: OpenDP
    ``make_laplace`` (discrete Laplace on a 2^-40 grid; its privacy map certifies ε per vector).

    Args: see :class:`Mechanism`.
    """

    name = "laplace"

    def __init__(self, *, epsilon: float, domain: Domain, rng: NoiseSource | None = None) -> None:
        super().__init__(epsilon=epsilon, domain=domain, rng=rng)
        self._scale = 0.0 if math.isinf(self.epsilon) else self.rng.laplace_scale(
            sensitivity=self.sensitivity, epsilon=self.epsilon, dim=self.domain.noise_dim
        )

    @property
    def sensitivity(self) -> float:
        """L1 sensitivity Δ1 = 2r√m of the domain."""
        return self.domain.l1_sensitivity

    @property
    def scale(self) -> float:
        """Laplace scale b = Δ1/ε per coordinate (standard deviation b√2)."""
        return self._scale

    @property
    def noise_rms(self) -> float:
        return self._scale * math.sqrt(2.0 * self.domain.noise_dim)

    def privacy_cost(self) -> PrivacyCost:
        return self._cost(epsilon=self.epsilon, delta=0.0)

    def _add_noise(self, y: np.ndarray) -> np.ndarray:
        return self.rng.add_laplace(y, self._scale)


class GaussianMechanism(Mechanism):
    """(ε, δ)-DP Gaussian mechanism over any two faces, with the ε that OpenDP itself certifies.

    Adds i.i.d. N(0, σ²) noise to each noise coordinate. The L2 sensitivity is the domain's L2
    diameter (2 on the unit sphere, 2R on the projected ball). σ starts from the exact condition
    of Balle & Wang, "Improving the Gaussian Mechanism for Differential Privacy: Analytical
    Calibration and Optimal Denoising", ICML 2018, Thm 8 / Alg. 1, and is then enlarged until
    OpenDP's own privacy map — ρ-zCDP for its discrete Gaussian, composed with its
    ``make_zCDP_to_approxDP`` conversion — certifies the requested (ε, δ)
    (:func:`identitydp.privacy.sampling.certified_gaussian_scale`; about 8 % more noise than the
    analytic σ at δ = 1e-6, whose converted ε would be 1.078 / 4.279 / 16.96 for 1 / 4 / 16).
    Seeded runs use the same σ. Works for any ε > 0, including ε > 1.

    Secure sampling: OpenDP ``make_gaussian`` (discrete Gaussian on a 2^-40 grid, Canonne, Kamath
    & Steinke 2020); the certified ρ is reported as ``rho``.

    Args:
        epsilon: see :class:`Mechanism`.
        delta: δ in (0, 1); choose δ far below 1 / (number of people), e.g. 1e-6.
        domain, rng: see :class:`Mechanism`.
    """

    name = "gaussian"

    def __init__(self, *, epsilon: float, delta: float, domain: Domain, rng: NoiseSource | None = None) -> None:
        super().__init__(epsilon=epsilon, domain=domain, rng=rng)
        self.delta = check_delta(delta)
        self._scale = 0.0 if math.isinf(self.epsilon) else self.rng.gaussian_scale(
            sensitivity=self.sensitivity, epsilon=self.epsilon, delta=self.delta, dim=self.domain.noise_dim
        )
        self._rho: float | None = None
        if isinstance(self.rng, SecureSampler) and math.isfinite(self.epsilon):
            # OpenDP's rounding-aware zCDP map for one vector, for the record.
            self._rho = self.rng.gaussian_rho(sensitivity=self.sensitivity, scale=self._scale, dim=self.domain.noise_dim)

    def __repr__(self) -> str:
        return f"GaussianMechanism(epsilon={self.epsilon:g}, delta={self.delta:g}, domain={self.domain!r}, rng={self.rng!r})"

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity Δ2 = 2r of the domain."""
        return self.domain.l2_sensitivity

    @property
    def scale(self) -> float:
        """Standard deviation σ per coordinate."""
        return self._scale

    @property
    def noise_rms(self) -> float:
        return self._scale * math.sqrt(self.domain.noise_dim)

    def privacy_cost(self) -> PrivacyCost:
        rho = None
        if isinstance(self.rng, SecureSampler) and math.isfinite(self.epsilon):
            rho = self._rho
        return self._cost(epsilon=self.epsilon, delta=self.delta, rho=rho)

    def _add_noise(self, y: np.ndarray) -> np.ndarray:
        return self.rng.add_gaussian(y, self._scale)


class MetricMechanism(Mechanism):
    """d_χ-privacy (metric DP) with noise density ∝ exp(−ε‖n‖₂) in the noise coordinates.

    For any inputs x, x' and outputs S: P[M(x) ∈ S] ≤ exp(ε‖x − x'‖₂) P[M(x') ∈ S]
    (Chatzikokolakis, Andrés, Bordenabe & Palamidessi, "Broadening the Scope of Differential
    Privacy Using Metrics", PETS 2013; the multivariate Laplace construction of Fernandes,
    Dras & McIver, "Generalised Differential Privacy for Text Document Processing", POST 2019).
    Sampling: a uniform direction times a radius ~ Gamma(m, 1/ε) (mean m/ε).

    ``epsilon`` here is ε per unit of L2 distance. Over *any* two faces it is pure (ε·D)-DP with
    D the domain's diameter: **2ε-DP on the unit sphere, 2Rε-DP on the projected ball**, and
    that ε·D is what :meth:`privacy_cost` reports as ``epsilon`` and a ledger adds up. Close
    identities stay confusable; far ones are protected less per unit ε.

    Secure path: the direction is a normalised vector of OpenDP Gaussian samples and the radius a
    sum of m |OpenDP Laplace| samples (|Lap(b)| ~ Exp(b)). Caveat: unlike the Laplace and Gaussian
    mechanisms, the noise is then added to the input in floating point; we round the result to
    the 2^-40 grid (in the spirit of Mironov's snapping), which removes low-order-bit patterns but
    is not a machine-checked proof like OpenDP's.

    Args: see :class:`Mechanism`.
    """

    name = "metric"

    def __init__(self, *, epsilon: float, domain: Domain, rng: NoiseSource | None = None) -> None:
        super().__init__(epsilon=epsilon, domain=domain, rng=rng)

    @property
    def sensitivity(self) -> float:
        """L2 diameter D of the domain (2, or 2R): the distance at which the bound is weakest."""
        return self.domain.diameter

    @property
    def scale(self) -> float:
        """Scale 1/ε of the Gamma-distributed noise radius (mean radius m/ε)."""
        return 0.0 if math.isinf(self.epsilon) else 1.0 / self.epsilon

    @property
    def noise_rms(self) -> float:
        m = self.domain.noise_dim
        return self.scale * math.sqrt(m * (m + 1.0))

    @property
    def pure_epsilon(self) -> float:
        """ε·D: the pure-DP ε over any two faces."""
        return self.epsilon * self.domain.diameter

    def privacy_cost(self) -> PrivacyCost:
        return self._cost(epsilon=self.pure_epsilon, delta=0.0, metric_epsilon=self.epsilon)

    def _add_noise(self, y: np.ndarray) -> np.ndarray:
        n, m = y.shape
        if n == 0:
            return y.copy()
        directions = self.rng.unit_directions(n, m)
        radii = self.rng.gamma(n, m, self.scale)
        noisy = y + directions * radii[:, None]
        if self.rng.secure:
            grid = 2.0**GRID_EXPONENT
            noisy = np.round(noisy / grid) * grid
        return noisy


def make_mechanism(
    name: str,
    *,
    epsilon: float,
    domain: Domain,
    delta: float | None = None,
    rng: NoiseSource | None = None,
) -> Mechanism:
    """Build a mechanism by name (``"laplace"``, ``"gaussian"`` (needs ``delta``), ``"metric"``).

    Convenience for configuration files and the CLI; the classes are the primary API.

    Raises:
        PrivacyError: unknown name, missing ``delta`` for Gaussian, ``delta`` for another mechanism.
    """
    if name not in MECHANISMS:
        raise PrivacyError(f"unknown mechanism {name!r}; choose one of {', '.join(MECHANISMS)}")
    if name == "gaussian":
        if delta is None:
            raise PrivacyError("the Gaussian mechanism needs delta (e.g. 1e-6)")
        return GaussianMechanism(epsilon=epsilon, delta=delta, domain=domain, rng=rng)
    if delta is not None:
        raise PrivacyError(f"delta applies to the Gaussian mechanism only, not {name!r}")
    if name == "laplace":
        return LaplaceMechanism(epsilon=epsilon, domain=domain, rng=rng)
    return MetricMechanism(epsilon=epsilon, domain=domain, rng=rng)
