"""The one interface every anonymizer implements.

An anonymizer replaces the faces of a frame. The pipeline detects faces and hands them over with
the frame; the anonymizer returns a new frame and a per-face report. The classical methods share
:class:`identitydp.anonymizers.classical.RegionAnonymizer` (a window around each box); IdentityDP
(:class:`identitydp.generate.anonymizer.IdentityDPAnonymizer`) aligns crops itself and uses the
shared alignment and blending functions of :mod:`identitydp.align` and :mod:`identitydp.blend`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from ..detect import Detections


@dataclass
class FaceOutcome:
    """What happened to one detected face.

    Attributes:
        index: index into the frame's :class:`Detections`.
        status: ``"anonymized"``; ``"masked"`` when processing failed and the face was masked
            solid instead (fail closed); ``"exempt"`` when it matched a consenting person's
            reference photo and was left as it was (see :mod:`identitydp.exempt`).
        error: the reason for ``"masked"``.
        privacy: the privacy release of this face (mechanism, ε, δ, …), if the method is DP.
        exempt: for ``"exempt"``: the matched person, reference file and distance.
    """

    index: int
    status: str = "anonymized"
    error: str | None = None
    privacy: dict | None = None
    exempt: dict | None = None


@dataclass
class FrameResult:
    """An anonymized frame and one :class:`FaceOutcome` per detected face."""

    image: np.ndarray
    faces: list[FaceOutcome] = field(default_factory=list)


class FaceAnonymizer(ABC):
    """Base class of all face anonymizers.

    Subclasses set ``name`` and implement :meth:`anonymize_frame`. ``rng`` is a NumPy generator
    for non-privacy randomness; DP methods draw privacy noise from their own mechanism.
    """

    name: str = "base"

    @abstractmethod
    def anonymize_frame(self, image: np.ndarray, faces: Detections, rng: np.random.Generator) -> FrameResult:
        """Replace every face in ``faces``.

        Args:
            image: (H, W, 3) uint8 RGB frame; not modified.
            faces: detections in ``image`` coordinates.
            rng: generator for non-privacy randomness (e.g. which face goes first).

        Returns:
            A :class:`FrameResult` whose image has the same shape and dtype.
        """

    def describe(self) -> dict:
        """Parameters of this anonymizer, for reports and ledgers."""
        return {"method": self.name}

    def ready(self) -> None:
        """Finish loading whatever the method loads in the background (the pipeline calls it
        before the first frame, outside its fail-closed guard, so that a broken model is a loud
        error rather than a masked face).

        Raises:
            WeightsError: a model the method needs cannot be loaded.
        """

    def release_cost(self):
        """The :class:`~identitydp.privacy.PrivacyCost` of one face's release, known before any
        noise is drawn (the job layer charges it first), or None for a method without DP."""
        return None


# Older name, kept so that stage code written against it keeps working.
Anonymizer = FaceAnonymizer
