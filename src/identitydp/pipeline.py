"""The pipeline: decode → detect → (align) → anonymize → blend → encode.

``Anonymizer`` is the public entry point::

    from identitydp import Anonymizer
    anon = Anonymizer(method="blur")
    out, report = anon.anonymize(rgb_uint8)

Every method goes through the same detector and the same fail-closed rule: a face that was
detected but could not be anonymized is masked solid, never left as it was.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .anonymizers import FaceAnonymizer, FaceOutcome, make_anonymizer, solid_mask
from .detect import CenterFaceDetector, Detections
from .io import read_image, write_image

log = logging.getLogger(__name__)


@dataclass
class ImageReport:
    """What the pipeline did to one image.

    Attributes:
        detections: the faces found (frame pixel coordinates).
        faces: one outcome per detected face (``anonymized`` or ``masked``).
        method: the anonymizer's parameters.
        seconds: wall time per stage (detect, anonymize).
        source, output: file paths when the image came from / went to a file.
        uncertain: possible faces the detector scored below its threshold (see
            :attr:`Detections.uncertain`), or None.
        uncertain_masked: True when those were masked solid (``paranoid``); else they were left
            as they are.
    """

    detections: Detections
    faces: list[FaceOutcome]
    method: dict
    seconds: dict = field(default_factory=dict)
    source: Path | None = None
    output: Path | None = None
    uncertain: Detections | None = None
    uncertain_masked: bool = False

    @property
    def num_uncertain(self) -> int:
        return 0 if self.uncertain is None else len(self.uncertain)

    @property
    def num_faces(self) -> int:
        return len(self.detections)

    @property
    def num_masked(self) -> int:
        return sum(1 for f in self.faces if f.status == "masked")

    @property
    def num_exempt(self) -> int:
        return sum(1 for f in self.faces if f.status == "exempt")

    @property
    def privacy_releases(self) -> list[dict]:
        return [f.privacy for f in self.faces if f.privacy]

    def to_json(self) -> dict:
        return {
            "source": str(self.source) if self.source else None,
            "output": str(self.output) if self.output else None,
            "method": self.method,
            "faces": [
                {**det, "status": outcome.status, **({"error": outcome.error} if outcome.error else {}),
                 **({"exempt": outcome.exempt} if outcome.exempt else {}),
                 # --keep: the values this face released without DP (also in the ledger);
                 # --gender-from-context: the value read from the context (a function of the published pixels)
                 **{key: outcome.privacy[key] for key in ("released_without_dp", "set_from_context")
                    if outcome.privacy and key in outcome.privacy}}
                for det, outcome in zip(self.detections.to_json(), self.faces)
            ],
            "uncertain": [{**det, "status": "masked" if self.uncertain_masked else "left as is"}
                          for det in (self.uncertain.to_json() if self.uncertain is not None else [])],
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
        }


def _rebuild_anonymizer(config_json: str) -> "Anonymizer":
    from .jobs.config import AnonymizerConfig

    return AnonymizerConfig.from_json(config_json).build()


class Anonymizer:
    """Detect and anonymize every face of an image with one method.

    Args:
        method: ``blur``, ``pixelate``, ``mask``, ``dp-pix`` or ``identitydp``, or an instance of
            :class:`~identitydp.anonymizers.FaceAnonymizer`.
        threshold: detector score threshold (lower finds more faces; a miss is a leak).
        seed: seed for reproducible runs (tests, experiments). ``None`` uses OS randomness.
        detector: an object with ``detect(rgb) -> Detections``; CenterFace by default.
        exempt: an :class:`~identitydp.exempt.Exemptions` (consenting people's faces are left as
            they are), or a folder of reference photos; None: every face is anonymized.
        paranoid: also mask solid every *uncertain* detection (a possible face the detector
            scored between :data:`~identitydp.detect.UNCERTAIN_THRESHOLD` and ``threshold``);
            without it they are left as they are and only reported. Photos only.
        **method_params: keyword arguments of the method (e.g. ``sigma=0.1``, ``epsilon=1``).
    """

    def __init__(
        self,
        method: str | FaceAnonymizer = "blur",
        *,
        threshold: float = 0.5,
        seed: int | None = None,
        detector=None,
        exempt=None,
        paranoid: bool = False,
        **method_params,
    ) -> None:
        if isinstance(method, FaceAnonymizer):
            if method_params:
                raise ValueError("pass method parameters to the anonymizer instance, not to Anonymizer")
            self.method = method
        else:
            if method == "identitydp" and seed is not None:
                method_params.setdefault("seed", seed)
            self.method = make_anonymizer(method, **method_params)
        self.detector = detector if detector is not None else CenterFaceDetector(threshold=threshold)
        self.seed = seed
        self.paranoid = bool(paranoid)
        self._rng = np.random.default_rng(seed)
        exempt_folder = None
        if exempt is not None and not hasattr(exempt, "match"):
            from .exempt import Exemptions

            exempt_folder = str(Path(exempt).resolve())
            exempt = Exemptions.from_folder(exempt, detector=self.detector)
        self.exemptions = exempt
        #: The :class:`~identitydp.jobs.AnonymizerConfig` this pipeline was built from, when it
        #: was built from a method name with the stock detector (what pickling sends to workers).
        self.config = None
        if not isinstance(method, FaceAnonymizer) and type(self.detector) is CenterFaceDetector:
            from .jobs.config import AnonymizerConfig

            if exempt is None or exempt_folder is not None:
                self.config = AnonymizerConfig.create(
                    method, threshold=self.detector.threshold, seed=seed, pad_tight=self.detector.pad_tight,
                    min_face=self.detector.min_face,
                    exempt=exempt_folder, paranoid=self.paranoid, **{k: v for k, v in method_params.items() if k != "seed"},
                )

    def __reduce__(self):
        # Models, ONNX nets and locks do not pickle; the configuration does, and rebuilds them.
        if self.config is None:
            raise TypeError(
                "this Anonymizer was built from an anonymizer instance or a custom detector and cannot be pickled; "
                "build it from a method name (or an AnonymizerConfig) to send it to workers"
            )
        return (_rebuild_anonymizer, (self.config.to_json(),))

    def detect(self, image: np.ndarray) -> Detections:
        return self.detector.detect(image)

    def anonymize(self, image: np.ndarray, detections: Detections | None = None, *,
                  exempt_matches: list | None = None) -> tuple[np.ndarray, ImageReport]:
        """Anonymize every face of an (H, W, 3) uint8 RGB image (but the exempt ones).

        Args:
            image: the frame; not modified.
            detections: faces to anonymize; detected with the pipeline's detector when None.
            exempt_matches: per face, the :class:`~identitydp.exempt.ExemptMatch` that keeps it or
                None; computed with :attr:`exemptions` when not given (the job layer passes them,
                having charged only the faces that are not kept).

        Returns:
            The anonymized (H, W, 3) uint8 image and an :class:`ImageReport`.
        """
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"expected an (H, W, 3) uint8 RGB array, got {getattr(image, 'shape', None)} {getattr(image, 'dtype', type(image))}"
            )
        seconds = {}
        t0 = time.perf_counter()
        if detections is None:
            detections = self.detector.detect(image)
        seconds["detect"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if exempt_matches is None:
            exempt_matches = self.exemptions.match(image, detections) if self.exemptions is not None else [None] * len(detections)
        if len(exempt_matches) != len(detections):
            raise ValueError(f"{len(exempt_matches)} exemption results for {len(detections)} faces")
        todo = [i for i, m in enumerate(exempt_matches) if m is None]
        if not todo:
            out, outcomes = image.copy(), []
        else:
            out, sub = self._anonymize_fail_closed(image, detections.subset(todo) if len(todo) < len(detections) else detections)
            outcomes = []
            for index, outcome in zip(todo, sub):
                outcome.index = index
                outcomes.append(outcome)
        for i, m in enumerate(exempt_matches):
            if m is not None:
                outcomes.append(FaceOutcome(index=i, status="exempt", exempt=m.to_json()))
        outcomes.sort(key=lambda o: o.index)
        uncertain = detections.uncertain
        if self.paranoid and uncertain is not None and len(uncertain):
            out = out.copy() if out is image else out
            for box in uncertain.boxes:
                out = solid_mask(out, box)
        seconds["anonymize"] = time.perf_counter() - t0
        method = self.method.describe()
        if self.exemptions is not None:
            method = {**method, "exempt": self.exemptions.describe()}
        if self.paranoid:
            method = {**method, "paranoid": True}
        return out, ImageReport(detections=detections, faces=outcomes, method=method, seconds=seconds,
                                uncertain=uncertain, uncertain_masked=self.paranoid)

    def _anonymize_fail_closed(
        self, image: np.ndarray, detections: Detections, track_ids: list[int] | None = None
    ) -> tuple[np.ndarray, list[FaceOutcome]]:
        self.method.ready()  # outside the guard: a model that cannot load is an error, not masked faces
        try:
            if track_ids is not None:
                # A TrackAware method (see identitydp.stream) keeps per-track state, e.g. one identity.
                result = self.method.anonymize_tracked(image, detections, track_ids, self._rng)
            else:
                result = self.method.anonymize_frame(image, detections, self._rng)
            out, outcomes = result.image, list(result.faces)
            if out.shape != image.shape or out.dtype != image.dtype:
                raise ValueError(f"anonymizer returned {out.shape} {out.dtype} for a {image.shape} frame")
        except Exception as exc:  # noqa: BLE001 - any method failure must still hide the faces
            log.warning("anonymizer %s failed on the frame (%s); masking all %d faces", self.method.name, exc, len(detections))
            out = image
            for box in detections.boxes:
                out = solid_mask(out, box)
            return out, [FaceOutcome(index=i, status="masked", error=str(exc)) for i in range(len(detections))]
        covered = {o.index for o in outcomes}
        for i in range(len(detections)):
            if i not in covered:
                # A method that silently skipped a face must not leave it visible.
                out = solid_mask(out, detections.boxes[i])
                outcomes.append(FaceOutcome(index=i, status="masked", error="anonymizer returned no outcome"))
        outcomes.sort(key=lambda o: o.index)
        return out, outcomes

    def stream(
        self,
        frames,
        *,
        detect_every: int = 1,
        max_missing: int = 12,
        lookback: int | None = None,
        tracker=None,
        before_anonymize=None,
        detect_ahead: int = 1,
    ):
        """Anonymize an iterable of (H, W, 3) uint8 RGB frames with face tracking.

        Faces are tracked across frames, a face the detector drops is still anonymized for
        ``max_missing`` frames at its predicted position, and a track-aware method (IdentityDP)
        keeps one identity per track. Frames come out in order, ``lookback`` frames late; memory
        stays constant. See :class:`identitydp.stream.AnonymizedStream` for the parameters.

        Returns:
            An :class:`~identitydp.stream.AnonymizedStream`: iterate it for
            ``(anonymized frame, FrameReport)``; its ``tracks`` are complete once it is exhausted.
        """
        from .stream import AnonymizedStream

        return AnonymizedStream(
            self, frames, detect_every=detect_every, max_missing=max_missing, lookback=lookback, tracker=tracker,
            before_anonymize=before_anonymize, detect_ahead=detect_ahead,
        )

    def anonymize_file(
        self,
        source: str | Path,
        output: str | Path,
        *,
        overwrite: bool = False,
        protected: set[Path] | None = None,
        before_write=None,
    ) -> ImageReport:
        """Read ``source``, anonymize it and write ``output`` with all metadata stripped.

        The source itself is always protected: it is never overwritten.

        Args:
            before_write: optional ``callable(report)`` run after anonymizing and before writing;
                if it raises (e.g. a privacy budget refusal), nothing is written.
        """
        source = Path(source)
        loaded = read_image(source)
        out, report = self.anonymize(loaded.pixels)
        report.source = source
        if before_write is not None:
            before_write(report)
        guard = {source.resolve()} | (protected or set())
        write_image(output, out, loaded.alpha, protected=guard, overwrite=overwrite)
        report.source, report.output = source, Path(output)
        return report
