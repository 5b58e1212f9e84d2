"""Evaluation configuration: the method grammar, the protocol sizes, the quick and full presets.

Method grammar (CLI and config)::

    NAME[:KEY=V1,V2,...[;KEY2=W1,W2,...]]

One *setting* per combination of values (cartesian product), e.g. ``blur:sigma=0.05,0.1,0.2``
gives three settings and ``identitydp:epsilon=1,16;mechanism=laplace,gaussian`` four. Values are
parsed as int, float (``inf`` allowed) or left as strings. ``noop`` (the identity, a sanity
anchor) and ``deface`` (the external ``deface`` CLI in its blur mode) take no parameters.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ..errors import IdentityDPError

#: Methods that do not go through :class:`identitydp.Anonymizer`.
SPECIAL_METHODS = ("noop", "deface")

#: Judges (identity recognizers) that can score privacy. ``dlib`` is the pipeline's own encoder
#: (white box), ``mobileface`` and ``faceres`` are independent (black box).
IDENTITY_JUDGES = ("dlib", "mobileface", "faceres")

FULL_METHODS = [
    "noop",
    "blur:sigma=0.05,0.1,0.2",
    "pixelate:blocks=16,8,4",
    "mask",
    "dp-pix:epsilon=0.1,1,10",
    "deface",
    "identitydp:epsilon=1,16,64,inf",
]
QUICK_METHODS = [
    "noop",
    "blur:sigma=0.05,0.1,0.2",
    "pixelate:blocks=8",
    "mask",
    "dp-pix:epsilon=1",
    "deface",
]


class EvalConfigError(IdentityDPError, ValueError):
    """A malformed method spec or an evaluation config that contradicts an existing run."""


def _parse_value(text: str):
    text = text.strip()
    if not text:
        raise EvalConfigError("empty parameter value")
    low = text.lower()
    if low in ("inf", "+inf", "infinity"):
        return math.inf
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _format_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class Setting:
    """One method with one set of parameter values: a point on a privacy–utility curve.

    Attributes:
        method: method name (``blur``, ``dp-pix``, ``identitydp``, ``noop``, ``deface``, …).
        params: keyword arguments of the method, in spec order.
    """

    method: str
    params: tuple[tuple[str, object], ...] = ()

    @property
    def key(self) -> str:
        """Canonical text of the setting, e.g. ``blur:sigma=0.05``; unique within a run."""
        if not self.params:
            return self.method
        return self.method + ":" + ";".join(f"{k}={_format_value(v)}" for k, v in self.params)

    @property
    def label(self) -> str:
        """Short human label (parameter values only), e.g. ``σ=0.05`` style ``sigma=0.05``."""
        return ", ".join(f"{k}={_format_value(v)}" for k, v in self.params) or self.method

    @property
    def slug(self) -> str:
        """File-name-safe form of :attr:`key`."""
        out = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.key.replace(":", "__"))
        return out

    def kwargs(self) -> dict:
        return dict(self.params)

    def to_json(self) -> dict:
        return {"method": self.method, "params": {k: _json_value(v) for k, v in self.params}}


def _json_value(value):
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return value


def parse_method_spec(spec: str) -> list[Setting]:
    """Expand one method spec into its settings.

    >>> [s.key for s in parse_method_spec("blur:sigma=0.05,0.1")]
    ['blur:sigma=0.05', 'blur:sigma=0.1']

    Raises:
        EvalConfigError: empty name, a parameter without ``=``, or parameters for ``noop``/``deface``.
    """
    spec = spec.strip()
    name, _, rest = spec.partition(":")
    name = name.strip()
    if not name:
        raise EvalConfigError(f"method spec {spec!r} has no method name")
    if not rest.strip():
        return [Setting(name)]
    if name in SPECIAL_METHODS:
        raise EvalConfigError(f"method {name!r} takes no parameters (got {spec!r})")
    keys: list[str] = []
    values: list[list] = []
    for part in rest.split(";"):
        if not part.strip():
            continue
        key, eq, vals = part.partition("=")
        if not eq or not key.strip():
            raise EvalConfigError(f"parameter {part!r} of {spec!r} is not KEY=V1,V2,...")
        if key.strip() in keys:
            raise EvalConfigError(f"parameter {key.strip()!r} repeated in {spec!r}")
        keys.append(key.strip())
        values.append([_parse_value(v) for v in vals.split(",")])
    return [Setting(name, tuple(zip(keys, combo))) for combo in itertools.product(*values)]


def expand_methods(specs: list[str]) -> list[Setting]:
    """Expand several specs, keeping the first occurrence of each setting."""
    out: list[Setting] = []
    seen: set[str] = set()
    for spec in specs:
        for setting in parse_method_spec(spec):
            if setting.key not in seen:
                seen.add(setting.key)
                out.append(setting)
    return out


@dataclass
class EvalConfig:
    """Everything that defines an evaluation run.

    Protocol fields (``people`` … ``judges``) must be identical for every method of one run folder
    so that the numbers are comparable; methods can be added to a run later.

    Attributes:
        lfw_dir: LFW root (holds ``lfw-deepfunneled/``, ``pairs.txt``).
        methods: method specs (see the module docstring).
        people: number of LFW people with ≥ 2 images used as probes (``None``: all 1,680),
            chosen evenly spaced in name order.
        impostor_pairs: number of View-2 mismatched pairs for the FAR threshold (``None``: all 3,000).
        far: false-accept rate that fixes the verification threshold (0.001 = 0.1 %).
        fd_size: size of each real set for the Fréchet distance (``None``: as many as probes).
        diversity_images: images on which randomized methods are run ``diversity_runs`` times.
        diversity_runs: anonymizations per image for the diversity metric.
        speed_images: images timed end to end (detect + anonymize) per setting.
        sample_faces: faces shown per setting in ``samples.png``.
        judges: identity judges for privacy (subset of ``dlib``, ``mobileface``, ``faceres``).
        utility: compute the utility metrics (BlazeFace, FaceMesh, attributes, emotion).
        realism: compute the Fréchet distance.
        threshold: CenterFace score threshold of the pipeline (and of the original detections).
        seed: base seed of the anonymizers (experiments are reproducible).
        batch: images per batch through the judges.
        attacks: run the attacks of :mod:`identitydp.eval.attacks` on every setting (linkage,
            parrot, gallery size; the trained attacker when ``attacker_train`` > 0).
        attacker_train: training faces (UTKFace, never LFW) anonymized per setting to fit the
            trained attacker; 0 disables it.
        train_dir: the training-data root (holds ``utkface/``); ``None``: ``$IDENTITYDP_TRAIN`` or
            ``../shared/data/train``.
    """

    lfw_dir: str
    methods: list[str] = field(default_factory=lambda: list(FULL_METHODS))
    people: int | None = None
    impostor_pairs: int | None = None
    far: float = 0.001
    fd_size: int | None = None
    diversity_images: int = 100
    diversity_runs: int = 5
    speed_images: int = 50
    sample_faces: int = 6
    judges: list[str] = field(default_factory=lambda: list(IDENTITY_JUDGES))
    utility: bool = True
    realism: bool = True
    threshold: float = 0.5
    seed: int = 0
    batch: int = 32
    attacks: bool = True
    attacker_train: int = 300
    train_dir: str | None = None

    #: fields that must match when methods are added to an existing run
    PROTOCOL_FIELDS = (
        "people",
        "impostor_pairs",
        "far",
        "fd_size",
        "diversity_images",
        "diversity_runs",
        "judges",
        "utility",
        "realism",
        "threshold",
        "seed",
    )

    def __post_init__(self) -> None:
        unknown = [j for j in self.judges if j not in IDENTITY_JUDGES]
        if unknown:
            raise EvalConfigError(f"unknown judge(s) {unknown}; choose from {', '.join(IDENTITY_JUDGES)}")
        if not self.judges:
            raise EvalConfigError("at least one identity judge is needed")
        if not 0 < self.far < 1:
            raise EvalConfigError(f"far must be in (0, 1), got {self.far}")
        for name in ("people", "impostor_pairs", "fd_size"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise EvalConfigError(f"{name} must be >= 2 (or None for all), got {value}")
        if self.attacker_train < 0 or (self.attacker_train and self.attacker_train < 20):
            raise EvalConfigError(f"attacker_train must be 0 (off) or >= 20 faces, got {self.attacker_train}")
        if self.diversity_runs < 2 and self.diversity_images:
            raise EvalConfigError("diversity_runs must be >= 2")
        self.settings()  # validate the method specs early

    def settings(self) -> list[Setting]:
        return expand_methods(self.methods)

    @classmethod
    def quick(cls, lfw_dir: str | Path, **overrides) -> "EvalConfig":
        """A small run for CI: 100 people, 100 impostor pairs, few settings (a few minutes on 2 cores).

        With 100 impostor pairs the FAR threshold is the smallest impostor distance (resolution
        1 %), and the Fréchet distances of 100-sample sets are strongly biased upward; compare
        them only with the real-vs-real figure of the same run.
        """
        base = dict(
            lfw_dir=str(lfw_dir),
            methods=list(QUICK_METHODS),
            people=100,
            impostor_pairs=100,
            fd_size=100,
            diversity_images=8,
            speed_images=8,
            attacker_train=100,
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def full(cls, lfw_dir: str | Path, **overrides) -> "EvalConfig":
        """The full LFW protocol of docs/evaluation.md#protocol (1,680 probes, 3,000 impostor pairs)."""
        base = dict(lfw_dir=str(lfw_dir))
        base.update(overrides)
        return cls(**base)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "EvalConfig":
        known = {f.name for f in fields(cls)}
        extra = set(data) - known
        if extra:
            raise EvalConfigError(f"unknown config field(s) {sorted(extra)}")
        return cls(**data)

    def protocol(self) -> dict:
        return {name: getattr(self, name) for name in self.PROTOCOL_FIELDS}

    def merged_with(self, existing: "EvalConfig") -> "EvalConfig":
        """This config's methods added to ``existing`` (a run folder's config).

        Raises:
            EvalConfigError: the protocols differ (numbers would not be comparable).
        """
        mine, theirs = self.protocol(), existing.protocol()
        diff = {k: (theirs[k], mine[k]) for k in mine if mine[k] != theirs[k]}
        if diff:
            detail = ", ".join(f"{k}: run has {a!r}, asked {b!r}" for k, (a, b) in diff.items())
            raise EvalConfigError(f"the run folder was made with another protocol ({detail}); use a new --out folder")
        methods = list(existing.methods)
        keys = {s.key for s in existing.settings()}
        for spec in self.methods:
            if any(s.key not in keys for s in parse_method_spec(spec)):
                methods.append(spec)
        return replace(existing, methods=methods, lfw_dir=self.lfw_dir, batch=self.batch, speed_images=self.speed_images,
                       attacks=self.attacks, attacker_train=self.attacker_train, train_dir=self.train_dir)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "EvalConfig":
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise EvalConfigError(f"cannot read eval config {path}: {exc}") from exc
