"""Face anonymizers behind one interface, and a factory by method name."""

from __future__ import annotations

from .base import FaceAnonymizer, FaceOutcome, FrameResult
from .classical import BlurAnonymizer, DPPixAnonymizer, MaskAnonymizer, PixelateAnonymizer, solid_mask

CLASSICAL_METHODS = {
    "blur": BlurAnonymizer,
    "pixelate": PixelateAnonymizer,
    "mask": MaskAnonymizer,
    "dp-pix": DPPixAnonymizer,
}
METHODS = [*CLASSICAL_METHODS, "identitydp"]


def make_anonymizer(method: str, **params) -> FaceAnonymizer:
    """Build an anonymizer by name (``blur``, ``pixelate``, ``mask``, ``dp-pix``, ``identitydp``).

    ``params`` are the method's keyword arguments; ``None`` values are dropped so that CLI
    defaults fall through to the method's own defaults.
    """
    params = {k: v for k, v in params.items() if v is not None}
    if method in CLASSICAL_METHODS:
        return CLASSICAL_METHODS[method](**params)
    if method == "identitydp":
        from ..generate.anonymizer import IdentityDPAnonymizer

        return IdentityDPAnonymizer(**params)
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


__all__ = [
    "BlurAnonymizer",
    "DPPixAnonymizer",
    "FaceAnonymizer",
    "FaceOutcome",
    "FrameResult",
    "MaskAnonymizer",
    "METHODS",
    "PixelateAnonymizer",
    "make_anonymizer",
    "solid_mask",
]
