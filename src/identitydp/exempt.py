"""Exemptions: faces of people who consent stay as they are; everyone else is anonymized.

``--exempt DIR`` gives reference photos (one face each; a sub-folder per person, or one file per
person). A detected face is kept only when the pipeline's recognizer (the dlib ResNet, with mirror
averaging) puts it closer than :data:`threshold` to one of the references; the threshold is
calibrated on LFW for a false-accept rate of at most 0.01 % (``benchmarks/exemption.py``, which
writes ``weights/exemption_threshold.json`` and measures it on LFW people it did not calibrate
on). Anything uncertain — no landmarks, an embedding that fails, a distance at or above the
threshold — is anonymized (fail closed). A kept face is not a privacy release: it costs no ε,
and the report says which reference it matched and at what distance.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import IdentityDPError, WeightsError
from .models.registry import WEIGHTS_DIR

log = logging.getLogger(__name__)

__all__ = ["ExemptionError", "Exemptions", "ExemptMatch", "THRESHOLD_FILE", "load_exemption_threshold"]

THRESHOLD_FILE = WEIGHTS_DIR / "exemption_threshold.json"


class ExemptionError(IdentityDPError):
    """The reference photos cannot be used (missing, unreadable, no face, several faces)."""


def load_exemption_threshold(config_id: str, path: Path = THRESHOLD_FILE) -> dict:
    """The calibrated exemption threshold for the recognizer configuration ``config_id``.

    Raises:
        WeightsError: missing, or calibrated for another recognizer configuration.
    """
    if not path.is_file():
        raise WeightsError(f"{path} is missing; run benchmarks/exemption.py --calibrate")
    data = json.loads(path.read_text())
    if data.get("config") != config_id:
        raise WeightsError(f"{path} was calibrated for {data.get('config')}, not {config_id}; rerun benchmarks/exemption.py --calibrate")
    return data


@dataclass(frozen=True)
class ExemptMatch:
    """Why a face was kept: the reference it matched and the cosine distance to it."""

    person: str
    reference: str
    distance: float

    def to_json(self) -> dict:
        return {"person": self.person, "reference": self.reference, "distance": round(self.distance, 4)}


class Exemptions:
    """Reference faces of people who consent, and the strict matcher.

    Args:
        references: (M, 128) unit dlib embeddings.
        people: M person names (a sub-folder name, or the file's stem).
        files: M reference file names (for reports).
        threshold: cosine distance below which a face matches a reference (default: the calibrated one).
        embedder: the :class:`~identitydp.embed.IdentityEmbedder` that made the references.
    """

    def __init__(self, references: np.ndarray, people: list[str], files: list[str], *, threshold: float | None = None,
                 embedder=None) -> None:
        from .embed import IdentityEmbedder

        self.embedder = embedder or IdentityEmbedder("dlib", flip=True)
        self.calibration = load_exemption_threshold(self.embedder.config_id)
        self.threshold = float(self.calibration["threshold"] if threshold is None else threshold)
        self.references = np.asarray(references, np.float32).reshape(-1, self.embedder.dim)
        self.people = list(people)
        self.files = list(files)
        if not (len(self.references) == len(self.people) == len(self.files)) or len(self.references) == 0:
            raise ExemptionError("need at least one reference face, with one name and file each")

    @classmethod
    def from_folder(cls, folder: str | Path, *, detector=None, embedder=None) -> "Exemptions":
        """Read every image under ``folder``: ``DIR/person/*.jpg`` or ``DIR/person.jpg``.

        Raises:
            ExemptionError: no images, an unreadable image, or an image without exactly one clear face.
        """
        from .detect import CenterFaceDetector
        from .embed import IdentityEmbedder
        from .io import IMAGE_SUFFIXES, read_image

        folder = Path(folder)
        if not folder.is_dir():
            raise ExemptionError(f"--exempt {folder}: not a folder of reference photos")
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        if not files:
            raise ExemptionError(f"--exempt {folder}: no reference photos (JPEG/PNG/...) found")
        detector = detector or CenterFaceDetector()
        embedder = embedder or IdentityEmbedder("dlib", flip=True)
        vectors, people, names = [], [], []
        for path in files:
            image = read_image(path).pixels
            det = detector.detect(image)
            if len(det) == 0:
                raise ExemptionError(f"--exempt: {path} has no detectable face (give one clear face per photo)")
            if len(det) > 1:
                areas = (det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])
                order = np.argsort(areas)[::-1]
                if areas[order[1]] > 0.25 * areas[order[0]]:
                    raise ExemptionError(f"--exempt: {path} shows {len(det)} faces; a reference photo must show only the person who consents")
                det = det.subset([int(order[0])])
            vectors.append(embedder.embed(image, det).vectors[0])
            rel = path.relative_to(folder)
            people.append(rel.parts[0] if len(rel.parts) > 1 else path.stem)
            names.append(str(rel))
        return cls(np.stack(vectors), people, names, embedder=embedder)

    @property
    def digest(self) -> str:
        """Short SHA-256 of the reference embeddings (recorded in configurations and reports)."""
        return hashlib.sha256(self.references.tobytes()).hexdigest()[:16]

    def match(self, image: np.ndarray, detections) -> list[ExemptMatch | None]:
        """For each detected face, the reference it matches, or None (anonymize it).

        Fail closed: a face whose embedding cannot be computed is never kept.
        """
        if len(detections) == 0:
            return []
        try:
            vectors = self.embedder.embed(image, detections).vectors
        except Exception as exc:  # noqa: BLE001 - an unknown face is anonymized, whatever went wrong
            log.warning("exemption check failed (%s); anonymizing every face", exc)
            return [None] * len(detections)
        out: list[ExemptMatch | None] = []
        for v in vectors:
            if not np.all(np.isfinite(v)):
                out.append(None)
                continue
            distances = 1.0 - self.references @ v
            k = int(np.argmin(distances))
            d = float(distances[k])
            out.append(ExemptMatch(self.people[k], self.files[k], d) if d < self.threshold else None)
        return out

    def describe(self) -> dict:
        return {"people": sorted(set(self.people)), "references": len(self.files), "threshold": self.threshold,
                "far_target": self.calibration.get("far_target"), "digest": self.digest}
