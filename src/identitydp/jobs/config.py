"""A serialisable description of an anonymizer: what workers rebuild and what outputs record."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import IdentityDPError

__all__ = ["AnonymizerConfig", "ConfigError", "DP_METHODS", "GENDER_FROM_CONTEXT_MAX_EPSILON", "PRODUCT_SHARPEN",
           "gender_from_context_by_default", "with_product_defaults"]

#: Methods whose outputs are DP releases, charged to the privacy ledger.
DP_METHODS = ("dp-pix", "identitydp")
CONFIG_FORMAT = "identitydp.anonymizer-config/1"


#: Largest ε at which the front ends (CLI, web, batch) set the new face's gender from the context
#: unless told otherwise. Measured on 300 LFW people with the v2 renderer (docs/results/lfw300-context-knob):
#: FaceRes gender agreement 78 / 79 / 81 % with it vs 57 / 60 / 70 % without at ε = 1 / 4 / 16, the
#: MobileFace re-identification and acceptance within one person of each other; from ε = 64 on the
#: identity keeps gender better (87 / 98 % vs 85 / 83 %), so it is off there.
GENDER_FROM_CONTEXT_MAX_EPSILON = 16.0


#: Unsharp-mask amount the front ends give the v2 renderer's face where it is magnified into the
#: frame (:func:`identitydp.blend.paste_face`). Measured on 300 LFW people, ε = 1 with the gender
#: from the context (docs/results/lfw300-sharpen): sharpness ratio 0.83 → 0.96 (ε = ∞: 0.78 →
#: 0.91), MobileFace Fréchet distance 0.402 → 0.403, seam 1.03 → 1.00, re-identification and
#: acceptance within one person. It boosts the band the 128-px rendering has; it adds no detail
#: above it.
PRODUCT_SHARPEN = 0.35


def gender_from_context_by_default(params: Mapping[str, Any]) -> bool:
    """Whether the product's default turns ``gender_from_context`` on for these identitydp parameters.

    On exactly where it was measured to help: the v2 renderer, nothing kept, the default Laplace
    mechanism in the default domain (the public projection), and ε ≤ :data:`GENDER_FROM_CONTEXT_MAX_EPSILON`.
    """
    from ..generate.anonymizer import RENDERERS

    epsilon = params.get("epsilon")
    return (params.get("weights") in (None, RENDERERS["v2"]) and not params.get("keep")
            and params.get("mechanism") in (None, "laplace") and params.get("projection") is None
            and epsilon is not None and math.isfinite(float(epsilon)) and float(epsilon) <= GENDER_FROM_CONTEXT_MAX_EPSILON)


def with_product_defaults(method: str, params: Mapping[str, Any]) -> dict:
    """A front end's method parameters with the choices it leaves to the product made explicit.

    For identitydp: ``gender_from_context`` absent or None becomes True where
    :func:`gender_from_context_by_default` says so (and stays unset elsewhere); an explicit True or
    False is kept. With the v2 renderer, ``sharpen`` absent or None becomes
    :data:`PRODUCT_SHARPEN`; an explicit value (0 turns it off) is kept. The library's own defaults (:class:`~identitydp.pipeline.Anonymizer`, the
    evaluation's method specs) do not change: every front end records the resolved value in its
    configuration, so a ledger entry says what was done.
    """
    out = dict(params)
    if method == "identitydp" and out.get("gender_from_context") is None and gender_from_context_by_default(out):
        out["gender_from_context"] = True
    if method == "identitydp" and out.get("sharpen") is None:
        from ..generate.anonymizer import RENDERERS

        if out.get("weights") in (None, RENDERERS["v2"]):
            out["sharpen"] = PRODUCT_SHARPEN
    return out


class ConfigError(IdentityDPError):
    """An anonymizer configuration is malformed, or its weights differ from the installed ones."""


def _weights_for(method: str, params: Mapping[str, Any]) -> dict[str, str]:
    """Registry name → SHA-256 of every weight file this configuration loads."""
    from ..models.registry import registry

    names = ["centerface"]
    files: dict[str, str] = {}
    if method == "identitydp":
        from ..generate.anonymizer import DEFAULT_WEIGHTS_NAME, PROJECTION_NAME, WEIGHTS_NAME
        from ..models.registry import weights_sha256

        names += ["dlib_resnet"]
        weights = params.get("weights")
        if weights is None or (isinstance(weights, str) and weights in registry()):
            generator = weights or DEFAULT_WEIGHTS_NAME
            names.append(generator)
        else:  # a renderer file outside the registry (an experiment): fingerprint that file
            generator = None
            path = Path(weights)
            if path.is_file():
                files[f"file:{path.name}"] = weights_sha256(path)
        if generator == WEIGHTS_NAME and params.get("precision", "auto") != "fp32":
            from ..generate.onnx_backend import INT8_WEIGHTS_NAME

            names.append(INT8_WEIGHTS_NAME)  # the int8 renderer quantized from it
        conditional = params.get("keep") or params.get("gender_from_context")
        if params.get("projection") is True or (params.get("projection") is None and not conditional):
            names.append(PROJECTION_NAME)  # the default domain
        if conditional:
            names.append("attribute_directions")
        if params.get("gender_from_context"):
            from ..models.context_gender import CONTEXT_GENDER_NAME

            names.append(CONTEXT_GENDER_NAME)
    entries = registry()
    return {**{name: entries[name].sha256 for name in names if name in entries}, **files}


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return value


def _unjson(key: str, value: Any) -> Any:
    if key == "epsilon" and value == "inf":
        return math.inf
    return value


@dataclass(frozen=True)
class AnonymizerConfig:
    """Everything needed to build the same :class:`~identitydp.pipeline.Anonymizer` anywhere.

    Attributes:
        method: ``blur``, ``pixelate``, ``mask``, ``dp-pix`` or ``identitydp``.
        params: the method's keyword arguments (``None`` values dropped), e.g. ``{"epsilon": 1.0}``.
        threshold: detector score threshold, in (0, 1).
        seed: seed of a reproducible run (experiments only), or None for OS randomness.
        pad_tight: run the detector's padded pass for tight face crops (off for video frames).
        weights: registry name → SHA-256 of the weight files it loads; filled by :meth:`create`.
        exempt: folder of reference photos of people who consent (their faces are kept), or None.
            Workers read it again: it must be at the same path on every machine.
        paranoid: also mask uncertain detections solid (see :class:`~identitydp.pipeline.Anonymizer`).
        min_face: the detector's smallest face in pixels (a cheaper, coarser detection pass; see
            :class:`~identitydp.detect.CenterFaceDetector`), or None for the full-resolution pass.
    """

    method: str
    params: Mapping[str, Any] = field(default_factory=dict)
    threshold: float = 0.5
    seed: int | None = None
    pad_tight: bool = True
    weights: Mapping[str, str] = field(default_factory=dict)
    exempt: str | None = None
    paranoid: bool = False
    min_face: int | None = None

    @classmethod
    def create(cls, method: str, *, threshold: float = 0.5, seed: int | None = None, pad_tight: bool = True,
               exempt: str | None = None, paranoid: bool = False, min_face: int | None = None,
               **params: Any) -> "AnonymizerConfig":
        """A configuration with the installed weights' checksums recorded.

        Raises:
            ConfigError: unknown method or a parameter that is not JSON-serialisable.
        """
        from ..anonymizers import METHODS

        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        clean = {k: v for k, v in params.items() if v is not None}
        try:
            json.dumps({k: _jsonable(v) for k, v in clean.items()}, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"method parameters must be JSON values: {exc}") from exc
        return cls(method=method, params=clean, threshold=float(threshold), seed=seed, pad_tight=bool(pad_tight),
                   weights=_weights_for(method, clean), exempt=None if exempt is None else str(exempt),
                   paranoid=bool(paranoid), min_face=None if min_face is None else int(min_face))

    @property
    def is_dp(self) -> bool:
        return self.method in DP_METHODS

    def to_dict(self) -> dict:
        # ``paranoid`` and ``min_face`` only when set, so that configurations (and ledger
        # fingerprints) made before they existed read and compare the same.
        extra = {"paranoid": True} if self.paranoid else {}
        if self.min_face is not None:
            extra["min_face"] = self.min_face
        return {
            **extra,
            "format": CONFIG_FORMAT,
            "method": self.method,
            "params": {k: _jsonable(v) for k, v in sorted(self.params.items())},
            "threshold": self.threshold,
            "seed": self.seed,
            "pad_tight": self.pad_tight,
            "weights": dict(sorted(self.weights.items())),
            "exempt": self.exempt,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AnonymizerConfig":
        """Read :meth:`to_dict` back.

        Raises:
            ConfigError: not a configuration of this format.
        """
        if not isinstance(data, Mapping) or data.get("format") != CONFIG_FORMAT:
            raise ConfigError(f"not an identitydp anonymizer configuration ({CONFIG_FORMAT})")
        try:
            return cls(
                method=str(data["method"]),
                params={k: _unjson(k, v) for k, v in dict(data.get("params") or {}).items()},
                threshold=float(data.get("threshold", 0.5)),
                seed=data.get("seed"),
                pad_tight=bool(data.get("pad_tight", True)),
                weights=dict(data.get("weights") or {}),
                exempt=data.get("exempt"),
                paranoid=bool(data.get("paranoid", False)),
                min_face=None if data.get("min_face") is None else int(data["min_face"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed anonymizer configuration: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> "AnonymizerConfig":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"malformed anonymizer configuration: {exc}") from exc

    @property
    def fingerprint(self) -> str:
        """Short SHA-256 of the canonical JSON: equal configurations, equal fingerprints."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def check_weights(self) -> None:
        """Raise :class:`ConfigError` if the installed weights are not the ones recorded."""
        installed = _weights_for(self.method, self.params)
        for name, sha in self.weights.items():
            if installed.get(name) != sha:
                raise ConfigError(
                    f"weights {name!r} here have SHA-256 {str(installed.get(name))[:12]}…, the configuration was made with "
                    f"{sha[:12]}…: install the same identitydp version on every worker"
                )

    def build_detector(self, threads: int | None = None):
        """The face detector this describes, alone (a job starts detecting with it while the
        method's models load).

        Args:
            threads: ONNX Runtime threads; default: half the cores for IdentityDP, whose renderer
                runs beside the detector, every core for the other methods.

        Raises:
            ConfigError: the installed weights differ from the recorded ones.
            WeightsError: the detector's files are missing or corrupt.
        """
        from ..detect import CenterFaceDetector
        from ..models.onnx_graph import default_threads

        self.check_weights()
        # Jobs detect on a read-ahead thread (video: a worker thread) while the method runs. Beside
        # the renderer the detector gets half the cores: on 2 cores a 2-thread detector there cost
        # ~0.3-0.8 more CPU-s on the ten-photo benchmark folder for no shorter wall time. The
        # classical methods cost next to nothing, so there detection takes every core (video
        # blur is detector-bound: a 1-thread detector made it ~10 % slower).
        if threads is None:
            threads = default_threads()
            if self.method == "identitydp":
                threads = max(1, threads // 2)
        return CenterFaceDetector(threshold=self.threshold, pad_tight=self.pad_tight, min_face=self.min_face,
                                  threads=threads)

    def build(self, detector=None):
        """The :class:`~identitydp.pipeline.Anonymizer` this describes (models loaded now).

        Args:
            detector: one :meth:`build_detector` made from this configuration (default: a new one).

        Raises:
            ConfigError: the installed weights differ from the recorded ones.
        """
        from ..pipeline import Anonymizer

        if detector is None:
            detector = self.build_detector()  # checks the weights
        else:
            self.check_weights()
        anonymizer = Anonymizer(self.method, threshold=self.threshold, seed=self.seed, detector=detector,
                                exempt=self.exempt, paranoid=self.paranoid, **dict(self.params))
        anonymizer.config = self
        return anonymizer
