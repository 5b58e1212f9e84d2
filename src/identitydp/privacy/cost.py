"""The typed privacy cost of one release."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["PrivacyCost"]


@dataclass(frozen=True)
class PrivacyCost:
    """What one release (one noisy identity vector for one face or one video track) costs.

    Attributes:
        mechanism: ``"laplace"``, ``"gaussian"`` or ``"metric"``.
        epsilon: ε of the (ε, δ)-DP guarantee between *any* two faces of the domain; what a ledger
            adds up. ``math.inf`` means no privacy (the noise-free release). For the metric
            mechanism this is its d_χ parameter times the domain's diameter.
        delta: δ (0 for pure ε-DP).
        relation: the neighbouring relation, in words.
        domain: the domain's one-line description.
        k: projected dimension, or None without projection.
        radius: ball radius R in whitened units, or None without projection.
        metric_epsilon: for the metric mechanism, ε per unit of L2 distance in noise coordinates
            (output ratio ≤ exp(metric_epsilon · ‖x − x'‖₂)); None otherwise.
        rho: for the Gaussian mechanism, the ρ-zCDP that OpenDP certifies for its discretised
            sampler (secure path only); None otherwise.
    """

    mechanism: str
    epsilon: float
    delta: float
    relation: str
    domain: str
    k: int | None = None
    radius: float | None = None
    metric_epsilon: float | None = None
    rho: float | None = None

    @property
    def is_private(self) -> bool:
        """False for the noise-free ε = ∞ release."""
        return math.isfinite(self.epsilon)

    def to_dict(self) -> dict:
        """JSON-ready dict; infinite values become the string ``"inf"``."""
        return {key: ("inf" if isinstance(v, float) and math.isinf(v) else v) for key, v in asdict(self).items()}
