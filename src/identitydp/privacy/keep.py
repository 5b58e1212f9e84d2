"""Declared kept attributes: release a few public identity directions as they are, noise the rest.

A unit identity z ∈ R^d (centred dlib space) is split along K public, orthonormal *attribute
directions* U (K × d; fitted on public training data only, ``scripts/fit_attributes.py``) and
their orthogonal complement B ((d − K) × d):

    a = U z            (K numbers: released exactly, **not** differentially private)
    r = B z            (‖r‖ ≤ 1: the remainder, released through an ε-DP mechanism on the
                        L2 ball of radius 1 in R^(d−K): L1 sensitivity 2√(d−K), L2 sensitivity 2)
    z~ = Uᵀa + √(1 − ‖a‖²) · Bᵀr~ / ‖Bᵀr~‖     (post-processing of a and of the DP output)

So the output is ε-DP *given the kept values*: two faces with the same kept values are
ε-indistinguishable, two with different kept values are told apart by those values exactly. The
release record names every kept value, and the ledger stores them with the release.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PrivacyError
from .domains import L2Ball, as_batch
from .mechanisms import Mechanism, make_mechanism

__all__ = ["ATTRIBUTE_NAMES", "AttributeDirections", "KeptAttributesMechanism", "KeptRelease"]

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

    @classmethod
    def load(cls, path: str | Path | None = None) -> "AttributeDirections":
        """The registered ``attribute_directions`` (checksum verified) or a file."""
        from safetensors import safe_open

        if path is None:
            from ..models.registry import weight_path

            path = weight_path(DIRECTIONS_NAME)
        with safe_open(str(path), framework="numpy") as fh:
            info = json.loads(fh.metadata()["info"])
            directions = fh.get_tensor("directions").astype(np.float64)
        return cls(tuple(info["names"]), directions, info)

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
        return AttributeDirections(names, q, self.info)


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
    """An ε-DP mechanism on the remainder of identity space, plus K attributes kept exactly.

    Args:
        name: ``laplace``, ``gaussian`` or ``metric`` (as :func:`make_mechanism`).
        epsilon, delta, rng: of the mechanism on the remainder (keyword-only).
        keep: the attributes to keep, e.g. ``("gender",)``.
        directions: an :class:`AttributeDirections` (default: the registered file).
    """

    def __init__(self, name: str, *, epsilon: float, keep, delta: float | None = None, rng=None,
                 directions: AttributeDirections | None = None) -> None:
        base = directions if directions is not None else AttributeDirections.load()
        self.attributes = base.select(keep)
        u = self.attributes.directions
        dim = u.shape[1]
        # Orthonormal basis of the complement: the last d − K left singular vectors of [Uᵀ | 0].
        full, _, _ = np.linalg.svd(u.T, full_matrices=True)
        self.complement = full[:, len(u):].T  # (d − K, d)
        self.dim = dim
        self.inner: Mechanism = make_mechanism(name, epsilon=epsilon, domain=L2Ball(dim - len(u), 1.0), delta=delta, rng=rng)
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
        return replace(cost, relation=f"any two faces with the same kept {kept} (released without DP); {cost.relation}")

    def perturb(self, z: object) -> KeptRelease:
        """(N, d) or (d,) centred identities → a :class:`KeptRelease`.

        Rows are renormalised to unit length first (the domain); the kept coordinates of the
        unit row are released exactly, the remainder through the inner mechanism.
        """
        batch, _ = as_batch(z, self.dim)
        norms = np.linalg.norm(batch, axis=1, keepdims=True)
        if np.any(norms <= 0):
            raise PrivacyError("a zero identity vector cannot be split")
        unit = batch / norms
        kept = unit @ self.attributes.directions.T
        remainder = unit @ self.complement.T
        release = self.inner.perturb(remainder)
        noisy = np.asarray(release.embeddings, np.float64).reshape(len(unit), -1) @ self.complement
        # A zero remainder can only come with ‖a‖ = 1, where ``room`` is 0 anyway.
        noisy /= np.maximum(np.linalg.norm(noisy, axis=1, keepdims=True), 1e-12)
        room = np.sqrt(np.clip(1.0 - np.sum(kept**2, axis=1, keepdims=True), 0.0, 1.0))
        out = kept @ self.attributes.directions + room * noisy
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return KeptRelease(out, kept, self.attributes.names, self.privacy_cost())
