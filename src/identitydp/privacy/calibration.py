"""Noise calibration and parameter checks shared by the mechanisms (pure maths, no sampling).

Sources:
    * Balle & Wang, "Improving the Gaussian Mechanism for Differential Privacy: Analytical
      Calibration and Optimal Denoising", ICML 2018, Theorem 8 (the exact (ε, δ) condition of the
      Gaussian mechanism) and Algorithm 1 (calibrate σ by solving it numerically).
    * Dwork & Roth, "The Algorithmic Foundations of Differential Privacy", 2014, §3.3 (Laplace
      mechanism) and §3.5.1 (basic composition).
    * Kasiviswanathan & Smith, "On the 'Semantics' of Differential Privacy: A Bayesian
      Formulation", J. Privacy and Confidentiality 2014 (posterior odds ≤ e^ε × prior odds).
"""

from __future__ import annotations

import math
import numbers

from ..errors import PrivacyError

__all__ = [
    "analytic_gaussian_delta",
    "analytic_gaussian_sigma",
    "check_delta",
    "check_epsilon",
    "chi_quantile",
    "classical_gaussian_sigma",
    "posterior_bound",
]

_SQRT2 = math.sqrt(2.0)


def check_epsilon(epsilon: object, *, name: str = "epsilon") -> float:
    """Return ``epsilon`` as a float after checking it is a real number > 0 (``math.inf`` allowed).

    ``math.inf`` means "no noise": the mechanism releases its input and gives no privacy.

    Raises:
        PrivacyError: for booleans, non-numbers, NaN, zero or negative values.
    """
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real):
        raise PrivacyError(f"{name} must be a real number > 0 (or math.inf for no noise), got {epsilon!r}")
    value = float(epsilon)
    if math.isnan(value) or value <= 0.0:
        raise PrivacyError(f"{name} must be > 0 (or math.inf for no noise), got {epsilon!r}")
    return value


def check_delta(delta: object) -> float:
    """Return ``delta`` as a float after checking 0 < δ < 1.

    Raises:
        PrivacyError: for non-numbers, NaN or values outside the open interval (0, 1).
    """
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real):
        raise PrivacyError(f"delta must be a real number in (0, 1), got {delta!r}")
    value = float(delta)
    if not 0.0 < value < 1.0:  # also rejects NaN
        raise PrivacyError(f"delta must be in the open interval (0, 1), got {delta!r}")
    return value


def _log_ndtr(x: float) -> float:
    """log Φ(x) for the standard normal CDF Φ, accurate also far in the lower tail."""
    if x > 0.0:
        return math.log1p(-0.5 * math.erfc(x / _SQRT2))
    if x > -30.0:
        return math.log(0.5 * math.erfc(-x / _SQRT2))
    # Asymptotic series (Abramowitz & Stegun 26.2.12); relative error < 1e-11 for x <= -30.
    x2 = x * x
    series = 1.0 - 1.0 / x2 + 3.0 / x2**2 - 15.0 / x2**3 + 105.0 / x2**4
    return -0.5 * x2 - math.log(-x) - 0.5 * math.log(2.0 * math.pi) + math.log(series)


def analytic_gaussian_delta(epsilon: float, sigma: float, sensitivity: float) -> float:
    """Smallest δ for which adding N(0, σ² I) to an L2-sensitivity-Δ query is (ε, δ)-DP.

    Balle & Wang 2018, Theorem 8 (exact, not a tail bound)::

        δ(ε, σ) = Φ(Δ/(2σ) − εσ/Δ) − e^ε · Φ(−Δ/(2σ) − εσ/Δ)

    evaluated with log Φ so that large ε does not overflow.

    Args:
        epsilon: ε > 0 (finite).
        sigma: noise standard deviation σ > 0, in the units of the query.
        sensitivity: L2 sensitivity Δ > 0, same units.
    """
    a = sensitivity / (2.0 * sigma) - epsilon * sigma / sensitivity
    b = -sensitivity / (2.0 * sigma) - epsilon * sigma / sensitivity
    first = math.exp(_log_ndtr(a))
    second = math.exp(min(epsilon + _log_ndtr(b), 0.0))
    return max(first - second, 0.0)


def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """σ of the analytic Gaussian mechanism (Balle & Wang 2018, Algorithm 1).

    Solves ``δ(ε, σ) = delta`` (Theorem 8, see :func:`analytic_gaussian_delta`) for σ by
    bisection in log σ; δ(ε, σ) is strictly decreasing in σ. The returned σ always satisfies
    ``δ(ε, σ) <= delta`` (the upper end of the final bracket, relative width < 1e-12), so it is
    never optimistic. Example: ε = 1, δ = 1e-5, Δ = 1 gives σ ≈ 3.73 (the classical
    ``√(2 ln(1.25/δ)) Δ/ε`` would give 4.84).

    Args:
        epsilon: ε > 0, finite.
        delta: δ in (0, 1).
        sensitivity: L2 sensitivity Δ > 0 (σ scales linearly with Δ).

    Returns:
        σ in the units of the query.
    """
    epsilon = check_epsilon(epsilon)
    delta = check_delta(delta)
    if math.isinf(epsilon):
        return 0.0
    if not (math.isfinite(sensitivity) and sensitivity > 0):
        raise PrivacyError(f"sensitivity must be finite and > 0, got {sensitivity!r}")
    # Solve for Δ = 1 and scale (σ is exactly proportional to Δ: δ depends on σ/Δ only).
    lo, hi = 1.0, 1.0
    while analytic_gaussian_delta(epsilon, hi, 1.0) > delta:
        hi *= 2.0
    while analytic_gaussian_delta(epsilon, lo, 1.0) <= delta:
        lo /= 2.0
        if lo < 1e-300:  # pragma: no cover - would need astronomically large ε
            raise PrivacyError(f"cannot calibrate σ for epsilon={epsilon}, delta={delta}")
    for _ in range(200):
        if hi / lo - 1.0 < 1e-12:
            break
        mid = math.sqrt(lo * hi)
        if analytic_gaussian_delta(epsilon, mid, 1.0) > delta:
            lo = mid
        else:
            hi = mid
    return hi * sensitivity


def classical_gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """The classical ``σ = √(2 ln(1.25/δ)) Δ/ε`` (Dwork & Roth 2014, Thm A.1; valid for ε < 1).

    Only for comparison in explanations; mechanisms use :func:`analytic_gaussian_sigma`.
    """
    return math.sqrt(2.0 * math.log(1.25 / delta)) * sensitivity / epsilon


def posterior_bound(prior: float, epsilon: float) -> float:
    """Largest posterior probability an attacker can reach after seeing one ε-DP release.

    Pure ε-DP bounds the likelihood ratio of any output under two candidate inputs by e^ε, hence
    posterior odds ≤ e^ε × prior odds (Kasiviswanathan & Smith 2014). With prior p the posterior
    is at most ``p e^ε / (1 − p + p e^ε)``.

    Args:
        prior: the attacker's prior probability in [0, 1] (e.g. 0.01 for a 1-in-100 guess).
        epsilon: ε > 0 (``math.inf`` gives 1 for any p > 0).
    """
    if not 0.0 <= prior <= 1.0:
        raise PrivacyError(f"prior must be a probability in [0, 1], got {prior!r}")
    if prior in (0.0, 1.0):
        return prior
    if math.isinf(epsilon):
        return 1.0
    log_odds = math.log(prior) - math.log1p(-prior) + epsilon
    return 1.0 / (1.0 + math.exp(-log_odds))


def chi_quantile(dof: int, q: float) -> float:
    """Approximate q-quantile of the chi distribution (norm of a standard normal in ``dof`` dims).

    Wilson & Hilferty (1931) cube-root approximation of the chi-square quantile, then √; relative
    error < 0.5 % for dof >= 4 and q in [0.5, 0.99]. Used only for a *placeholder* ball radius
    when no projection has been fitted (whitened training embeddings are roughly standard normal).
    """
    if dof < 1 or not 0.0 < q < 1.0:
        raise PrivacyError(f"need dof >= 1 and 0 < q < 1, got dof={dof}, q={q}")
    # Standard normal quantile by bisection on Φ (no SciPy dependency in library code).
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if math.exp(_log_ndtr(mid)) < q:
            lo = mid
        else:
            hi = mid
    z = 0.5 * (lo + hi)
    h = 2.0 / (9.0 * dof)
    return math.sqrt(dof * max(1.0 - h + z * math.sqrt(h), 0.0) ** 3)
