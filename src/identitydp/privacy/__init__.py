"""ε-IdentityDP: differentially private perturbation of identity embeddings, with accounting.

Perturb a batch of (N, 128) unit identity embeddings and record it::

    from identitydp.privacy import LaplaceMechanism, PrivacyLedger, Projection, UnitSphere

    mech = LaplaceMechanism(epsilon=4.0, domain=UnitSphere(128))        # or domain=Projection.load(path)
    ledger = PrivacyLedger(budget=8.0)                                   # ε budget per input
    release = mech.perturb(z, ledger=ledger, keys=["img.jpg#face0", "img.jpg#face1"])
    release.embeddings  # (N, 128) unit rows; release.cost: PrivacyCost of each row
    ledger.write("out/img.privacy.json")

Mechanisms: :class:`LaplaceMechanism` (pure ε-DP), :class:`GaussianMechanism` ((ε, δ)-DP,
analytic calibration), :class:`MetricMechanism` (d_χ-privacy). Domains: :class:`UnitSphere`,
:class:`L2Ball`, :class:`Projection` (public PCA + whitening + ball). Default noise: OpenDP's
floating-point-safe samplers; ``rng=ReproducibleRNG(seed)`` is for tests and experiments only.
See docs/privacy.md for what is and is not protected.
"""

from .calibration import analytic_gaussian_delta, analytic_gaussian_sigma, posterior_bound
from .cost import PrivacyCost
from .mechanisms import MECHANISMS
from .domains import DEFAULT_K, DEFAULT_RADIUS_QUANTILE, Domain, L2Ball, Projection, UnitSphere, centre, placeholder_radius
from .explain import Explanation, explain, explain_mechanism
from .ledger import LedgerEntry, PrivacyLedger, Spent
from .mechanisms import GaussianMechanism, LaplaceMechanism, Mechanism, MetricMechanism, Release, make_mechanism
from .sampling import NoiseSource, ReproducibleRNG, SecureSampler

__all__ = [
    "DEFAULT_K",
    "DEFAULT_RADIUS_QUANTILE",
    "MECHANISMS",
    "Domain",
    "Explanation",
    "GaussianMechanism",
    "L2Ball",
    "LaplaceMechanism",
    "LedgerEntry",
    "Mechanism",
    "MetricMechanism",
    "NoiseSource",
    "PrivacyCost",
    "PrivacyLedger",
    "Projection",
    "Release",
    "ReproducibleRNG",
    "SecureSampler",
    "Spent",
    "UnitSphere",
    "analytic_gaussian_delta",
    "analytic_gaussian_sigma",
    "centre",
    "explain",
    "explain_mechanism",
    "make_mechanism",
    "placeholder_radius",
    "posterior_bound",
]

