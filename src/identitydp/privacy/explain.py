"""Plain-words explanation of a mechanism's guarantee (the text behind ``identitydp privacy explain``).

The odds bound: under pure ε-DP, for any two candidate identities A and B and any output, the
likelihood ratio is at most e^ε, so an attacker's posterior odds "A rather than B" are at most
e^ε times the prior odds (Kasiviswanathan & Smith 2014; Dwork & Roth 2014, §2.3.2).
"""

from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass

from ..errors import PrivacyError
from .calibration import posterior_bound
from .domains import Domain
from .mechanisms import MECHANISMS, GaussianMechanism, LaplaceMechanism, Mechanism, MetricMechanism, make_mechanism
from .sampling import NoiseSource

__all__ = ["Explanation", "curve_path", "explain", "explain_mechanism", "load_curve", "MECHANISMS", "rank1_by_epsilon"]

#: Priors shown in the odds table.
PRIORS = (0.01, 0.1, 0.5)


@dataclass(frozen=True)
class Explanation:
    """Numbers behind a mechanism's guarantee, and their plain-words rendering (``str(x)``).

    Attributes:
        mechanism: name.
        epsilon: the ε parameter given (per unit distance for ``metric``).
        delta: δ (0 for pure DP).
        pure_epsilon: ε over any two faces (= epsilon, or epsilon × diameter for ``metric``).
        domain: one-line description of the domain.
        dim: embedding dimension d.
        noise_dim: number of noised coordinates m.
        sensitivity: the sensitivity the noise is calibrated to.
        sensitivity_text: what that sensitivity is, in words.
        noise_scale: the noise scale parameter (b, σ or 1/ε).
        noise_scale_text: what that scale is, in words.
        noise_rms: root-mean-square noise vector length √E‖n‖² in noise coordinates.
        signal_norm: the largest signal length in noise coordinates (1 on the sphere, R on a ball).
        typical_signal_norm: a typical signal length (1 on the sphere, ≈ √k for whitened training faces).
        approx_cosine: ≈ typical_signal / √(typical_signal² + noise_rms²): cosine between the true and
            the noisy vector before post-processing, for isotropic noise.
        odds_factor: e^pure_epsilon, the largest factor on the attacker's odds.
        odds: (prior, largest posterior) pairs.
        secure: whether the default secure sampler was used for the numbers.
        notes: extra caveats (placeholder radius, …).
        protects: who is protected from whom, when narrower than "any two faces" (e.g. with kept
            attributes); None: any two faces.
    """

    mechanism: str
    epsilon: float
    delta: float
    pure_epsilon: float
    domain: str
    dim: int
    noise_dim: int
    sensitivity: float
    sensitivity_text: str
    noise_scale: float
    noise_scale_text: str
    noise_rms: float
    signal_norm: float
    typical_signal_norm: float
    approx_cosine: float
    odds_factor: float
    odds: tuple[tuple[float, float], ...]
    secure: bool
    notes: tuple[str, ...] = ()
    protects: str | None = None

    def __str__(self) -> str:
        return self.text()

    def text(self) -> str:
        """Multi-line plain-words explanation."""
        title = {
            "laplace": "Laplace mechanism, pure ε-differential privacy",
            "gaussian": "Gaussian mechanism (analytic calibration), (ε, δ)-differential privacy",
            "metric": "metric (d_χ) privacy, noise density ∝ exp(−ε‖n‖)",
        }[self.mechanism]
        no_noise = math.isinf(self.epsilon)
        eps_text = "∞ (no noise: the true identity is released, NO privacy)" if no_noise else f"{self.epsilon:g}"
        lines = [f"{title}; ε = {eps_text}" + (f", δ = {self.delta:g}" if self.mechanism == "gaussian" else "")]
        lines.append(f"Domain: {self.domain}; noise goes into {self.noise_dim} coordinates.")
        if no_noise:
            lines.append("Protects: nothing. Use ε = ∞ only as the reference point of an evaluation.")
        elif self.protects:
            lines.append(f"Protects: {self.protects}")
        else:
            lines.append(
                "Protects: the identity vector of each face, between ANY two faces "
                "(the probability of any output changes by at most the factor below if this person's identity is replaced by "
                "anyone else's)."
            )
        lines.append(f"Sensitivity: {self.sensitivity_text} = {self.sensitivity:.4g}; it comes from the domain, never from data.")
        if no_noise:
            lines.append("Noise: none.")
        else:
            lines.append(f"Noise: {self.noise_scale_text}.")
            signal = (
                "1 (unit vector)"
                if self.typical_signal_norm == self.signal_norm
                else f"at most R = {self.signal_norm:.4g} (a typical training face: ≈ {self.typical_signal_norm:.3g})"
            )
            lines.append(
                f"Noise vs signal: typical noise length {self.noise_rms:.4g} (root-mean-square) against a signal of length {signal}, "
                f"i.e. noise ≈ {self.noise_rms / self.typical_signal_norm:.3g} × signal; before post-processing the noisy vector "
                f"keeps a cosine of about {self.approx_cosine:.3g} with the true one."
            )
        if math.isinf(self.pure_epsilon):
            lines.append("Attacker's odds: unbounded (no guarantee).")
        else:
            if self.mechanism == "metric":
                lines.append(
                    f"Attacker's odds: for two identities at distance t (in noise coordinates) the odds 'A rather than B' grow by at "
                    f"most e^(ε·t); for the farthest pair (t = {self.pure_epsilon / self.epsilon:.4g}) that is "
                    f"e^{self.pure_epsilon:.4g} = {self.odds_factor:.4g} (pure {self.pure_epsilon:.4g}-DP). "
                    "Close identities are protected more than that, far ones exactly that."
                )
            else:
                lines.append(
                    "Attacker's odds: whatever they knew before, seeing the output multiplies their odds "
                    f"'this is person A rather than B' by at most e^ε = {self.odds_factor:.4g}"
                    + (f", up to an additive δ = {self.delta:g} on the probability of any conclusion." if self.delta > 0 else ".")
                )
            for prior, post in self.odds:
                lines.append(f"  a prior guess of {_pct(prior)} becomes at most {_pct(post)}")
        if not no_noise:
            delta_text = " and n × δ" if self.delta > 0 else ""
            lines.append(
                f"Composition: the same person in n images costs ε = n × {self.pure_epsilon:g}{delta_text} (basic composition); "
                "one video track is one release. The ledger adds these up per input."
            )
        lines.append(
            "Not protected: everything outside the identity vector. Hair, skin tone, face shape, age, clothing and background "
            "are kept by design and can still identify someone; the evaluation measures that leakage."
        )
        if not self.secure:
            lines.append("Sampler: seeded NumPy (ReproducibleRNG): for experiments only, NOT for production.")
        lines.extend(self.notes)
        return "\n".join(lines)


def _pct(p: float) -> str:
    """Percentage with enough digits to show how close to 100 % it is."""
    if p >= 1.0:
        return "100%"
    if p < 0.99:
        return f"{100 * p:.3g}%"
    decimals = min(int(math.ceil(-math.log10(1.0 - p))), 10)
    return f"{100 * p:.{decimals}f}%"


def explain_mechanism(mech: Mechanism, *, notes: tuple[str, ...] = ()) -> Explanation:
    """Build the :class:`Explanation` of a configured mechanism."""
    dom = mech.domain
    m = dom.noise_dim
    signal = dom.radius
    typical = 1.0 if dom.k is None else min(math.sqrt(m), signal)
    cost = mech.privacy_cost()
    if isinstance(mech, LaplaceMechanism):
        sens_text = f"L1 diameter of the domain, 2·{signal:.4g}·√{m}"
        scale_text = f"Laplace, scale b = Δ1/ε = {mech.scale:.4g} per coordinate (standard deviation {mech.scale * math.sqrt(2):.4g})"
    elif isinstance(mech, GaussianMechanism):
        sens_text = f"L2 diameter of the domain, 2·{signal:.4g}"
        scale_text = f"Gaussian, standard deviation σ = {mech.scale:.4g} per coordinate (exact calibration of Balle & Wang 2018)"
    elif isinstance(mech, MetricMechanism):
        sens_text = f"L2 diameter of the domain, 2·{signal:.4g} (the distance at which the bound is weakest)"
        scale_text = f"uniform direction, length ~ Gamma({m}, 1/ε) with mean {m * mech.scale:.4g}"
    else:  # pragma: no cover - only the three mechanisms exist
        raise PrivacyError(f"cannot explain {type(mech).__name__}")
    rms = mech.noise_rms
    approx_cos = typical / math.sqrt(typical**2 + rms**2)
    pure = cost.epsilon
    return Explanation(
        mechanism=mech.name,
        epsilon=mech.epsilon,
        delta=cost.delta,
        pure_epsilon=pure,
        domain=dom.describe(),
        dim=dom.dim,
        noise_dim=m,
        sensitivity=mech.sensitivity,
        sensitivity_text=sens_text,
        noise_scale=mech.scale,
        noise_scale_text=scale_text,
        noise_rms=rms,
        signal_norm=signal,
        typical_signal_norm=typical,
        approx_cosine=approx_cos,
        odds_factor=math.exp(pure) if pure < 700 else math.inf,
        odds=tuple((p, posterior_bound(p, pure)) for p in PRIORS),
        secure=mech.secure,
        notes=notes,
    )


def explain(
    mechanism: str,
    *,
    epsilon: float,
    domain: Domain,
    delta: float | None = None,
    rng: NoiseSource | None = None,
    notes: tuple[str, ...] = (),
) -> Explanation:
    """Explain a mechanism by name: ``"laplace"``, ``"gaussian"`` (needs ``delta``) or ``"metric"``."""
    return explain_mechanism(make_mechanism(mechanism, epsilon=epsilon, domain=domain, delta=delta, rng=rng), notes=notes)


#: The measured curve of each shipped renderer, a file in the weights folder (written by
#: ``identitydp eval``; see :mod:`identitydp.eval.curve`, which builds it, and docs/evaluation.md).
#: Re-identification depends on the renderer as much as on ε, so each has its own.
CURVE_FILES = {"v1": "privacy_curve.json", "v2": "privacy_curve_v2.json"}
#: The product's default renderer (``identitydp.generate.anonymizer.DEFAULT_RENDERER``, which a test
#: keeps equal; not imported here: the privacy code does not depend on the renderers).
DEFAULT_CURVE = "v2"
CURVE_JUDGE = "mobileface"


def curve_path(renderer: str = DEFAULT_CURVE):
    """Path of the committed measured curve of ``renderer`` (``"v1"`` or ``"v2"``).

    Raises:
        PrivacyError: for an unknown renderer name.
    """
    from ..models.registry import WEIGHTS_DIR

    if renderer not in CURVE_FILES:
        raise PrivacyError(f"unknown renderer {renderer!r}; choose one of {', '.join(CURVE_FILES)}")
    return WEIGHTS_DIR / CURVE_FILES[renderer]


def load_curve(renderer: str = DEFAULT_CURVE) -> dict | None:
    """The measured curve of ``renderer`` as a dict, or None when no file is shipped for it."""
    import json

    path = curve_path(renderer)
    return json.loads(path.read_text()) if path.is_file() else None


def default_points(curve: dict) -> list[dict]:
    """The curve's points of the product's default setting (its ``default_params``), by ε."""
    default = curve.get("default_params", {})
    return [p for p in curve.get("points", []) if p.get("params", {}) == default]


def rank1_by_epsilon(curve: dict, judge: str = CURVE_JUDGE, params: dict | None = None) -> dict[str, float]:
    """``{"1": 0.0167, …, "inf": 0.33}``: the judge's rank-1 rate at each measured ε of the default
    setting (or of the points with exactly these ``params``, e.g. ``{"gender_from_context": True}``)."""
    out: dict[str, float] = {}
    points = default_points(curve) if params is None else [p for p in curve.get("points", []) if p.get("params") == params]
    for p in points:
        rank1 = p["judges"].get(judge, {}).get("rank1")
        if rank1 is not None:
            out["inf" if p["epsilon"] == "inf" else f"{float(p['epsilon']):g}"] = rank1["value"]
    return out


def _fmt_rate(entry: dict | None) -> str:
    if not entry:
        return "–"
    value, ci = entry["value"], entry.get("ci95")
    text = f"{100 * value:.2f} %" if value < 0.1 else f"{100 * value:.1f} %"
    return f"{text} [{100 * ci[0]:.2f}–{100 * ci[1]:.2f}]" if ci else text


#: Measured cost of ``--keep`` with the v2 renderer (docs/results/lfw300-keep-v2-conditional).
KEEP_CURVE_FILE = "privacy_curve_keep_v2.json"


def _split_curve_table(curve: dict, rows: list[tuple[str, dict | None]], *, width: int, footer: str,
                       marked: str = "") -> str:
    """The measured rows of an attribute-split setting (``--keep`` / ``--gender-from-context``) as
    text: header, one ``(label, curve point or None)`` row per line (a label starting with ``*``
    is the ε asked for), the solid mask's row, ``footer``."""
    judge = CURVE_JUDGE
    lines = [f"Measured for the shipped model, renderer v2 (not a guarantee: one model, one data set; {curve['source']}).",
             f"Judge: {judge}; rank-1 among the run's probe people (chance {100 * (curve.get('chance_rank1') or 0):.2f} %), "
             f"accepted at the judge's FAR 0.1 % threshold{marked}.",
             f"  {'setting':<{width}} {'rank-1 re-identification':<28} {'accepted as the same person':<28}"]
    floor = (curve.get("floor_mask") or {}).get(judge, {})
    for label, point in [*rows, ("solid mask (the floor)", {"judges": {judge: floor}})]:
        mark, label = ("*", label[1:]) if label.startswith("*") else (" ", label)
        j = point["judges"].get(judge, {}) if point else {}
        lines.append(f"{mark} {label:<{width}} {_fmt_rate(j.get('rank1')):<28} {_fmt_rate(j.get('verify_accept')):<28}")
    lines.append(f"  {footer}")
    return "\n".join(lines)


def _keep_curve(path) -> tuple[dict | None, Path]:
    """The committed kept-attribute curve (or ``path``), None when the file is missing."""
    import json

    from ..models.registry import WEIGHTS_DIR

    path = Path(path) if path is not None else WEIGHTS_DIR / KEEP_CURVE_FILE
    return (json.loads(path.read_text()) if path.is_file() else None), path


def load_keep_curve() -> dict | None:
    """The committed curve of the attribute-split settings (``--keep``, ``--gender-from-context``:
    :data:`KEEP_CURVE_FILE`), or None when it is not shipped."""
    return _keep_curve(None)[0]


def kept_curve_text(keep: tuple[str, ...], *, mechanism: str, epsilon: float, conditional: bool,
                    renderer: str = DEFAULT_CURVE, path=None) -> str:
    """What ``identitydp eval`` measured for ``--keep`` with the shipped model: the kept setting next
    to nothing kept at the same ε, and the solid mask (lines of text, or why nothing)."""
    curve, path = _keep_curve(path)
    how = (f"identitydp eval --methods 'identitydp:epsilon={epsilon:g};keep={'+'.join(keep)}' 'identitydp:epsilon={epsilon:g}' "
           "measures it")
    if renderer != "v2" or mechanism != "laplace" or not conditional or curve is None:
        return f"Measured: not for this renderer, mechanism and domain (docs/privacy.md has v1's and the sphere's); {how}."
    wanted = "+".join(keep)
    kept = [p for p in curve["points"] if p["params"] == {"keep": wanted} and float(p["epsilon"]) == epsilon]
    plain = [p for p in default_points(curve) if float(p["epsilon"]) == epsilon]
    if not kept:
        return f"Measured: not at ε = {epsilon:g} with --keep {','.join(keep)}; {how}."
    rows = [(f"keep {','.join(keep)}, ε = {epsilon:g}", p) for p in kept] + [(f"nothing kept, ε = {epsilon:g}", p) for p in plain]
    return _split_curve_table(curve, rows, width=28,
                              footer="What keeping buys (gender agreement, age error) is in docs/privacy.md, \"Kept attributes\".")


def context_curve_text(*, mechanism: str, epsilon: float, conditional: bool, renderer: str = DEFAULT_CURVE,
                       path=None) -> str:
    """What ``identitydp eval`` measured for ``--gender-from-context`` with the shipped model: at every
    measured ε, the setting next to the gender drawn with the rest at the same ε, and the solid mask
    (lines of text, or why nothing). The curve file is the kept-attribute one (:data:`KEEP_CURVE_FILE`)."""
    curve, path = _keep_curve(path)
    how = (f"identitydp eval --methods 'identitydp:epsilon={epsilon:g};gender_from_context=true' "
           f"'identitydp:epsilon={epsilon:g}' measures it")
    if renderer != "v2" or mechanism != "laplace" or not conditional or curve is None:
        return f"Measured: not for this renderer, mechanism and domain; {how}."
    context = {float(p["epsilon"]): p for p in curve["points"] if p["params"] == {"gender_from_context": True}}
    plain = {float(p["epsilon"]): p for p in default_points(curve)}
    if not context:
        return f"Measured: nothing with --gender-from-context in {path.name}; {how}."
    rows = []
    for eps in sorted(context):
        mark = "*" if eps == epsilon else ""
        name = "inf" if eps == float("inf") else f"{eps:g}"
        rows += [(f"{mark}gender from context, ε = {name}", context[eps]), (f"{mark}gender drawn, ε = {name}", plain.get(eps))]
    return _split_curve_table(curve, rows, width=34, marked="; * = the ε asked for",
                              footer="What it buys (gender agreement per ε) and costs is in docs/privacy.md, "
                                     "\"Gender from the context\".")


def measured_curve_text(mechanism: str, *, epsilon: float, domain: Domain | None, path=None,
                        renderer: str = DEFAULT_CURVE) -> str:
    """What ``identitydp eval`` measured for the shipped model, as lines of text (or why nothing).

    Only the setting the curve was measured for is shown (the default: Laplace in the registered
    public projection; pass ``domain=None`` for any domain that is not the registered one); for any
    other mechanism or domain the text says that it is not measured and how to measure it.
    ``renderer`` picks the shipped curve (``path`` overrides it).
    """
    import json

    from .domains import Projection

    path = Path(path) if path is not None else curve_path(renderer)
    how = ("identitydp eval --methods 'identitydp:epsilon=1,4,16,inf;mechanism=" + mechanism + "' (add projection=... for a "
           "projection) measures it; its run folder gets a privacy_curve.json")
    if not path.is_file():
        return f"Measured: no curve file ({path}); {how}."
    curve = json.loads(path.read_text())
    points = default_points(curve)
    if mechanism != "laplace" or not isinstance(domain, Projection) or not points:
        return (f"Measured: not for this mechanism and domain (the shipped curve is Laplace in the public projection, "
                f"the default; docs/privacy.md has the unit sphere's); {how}.")
    judge = CURVE_JUDGE
    lines = [f"Measured for the shipped model, renderer {renderer} (not a guarantee: one model, one data set; {curve['source']}).",
             f"Judge: {judge} (independent: not in the renderer's training loss). Rank-1: the anonymized photo is matched "
             f"against one other, original photo of every probe person (chance {100 * (curve.get('chance_rank1') or 0):.2f} %); "
             "accepted: the anonymized photo passes as the same person as the original at the judge's FAR 0.1 % threshold.",
             f"  {'ε':>6}  {'rank-1 re-identification':<28} {'accepted as the same person':<28}"]
    for p in points:
        eps = math.inf if p["epsilon"] == "inf" else float(p["epsilon"])
        mark = "  <- this ε" if (eps == epsilon or (math.isinf(eps) and math.isinf(epsilon))) else ""
        j = p["judges"].get(judge, {})
        label = "inf" if math.isinf(eps) else f"{eps:g}"
        lines.append(f"  {label:>6}  {_fmt_rate(j.get('rank1')):<28} {_fmt_rate(j.get('verify_accept')):<28}{mark}")
    finite = [p["judges"].get(judge, {}).get("rank1") for p in points if p["epsilon"] != "inf"]
    finite = [f for f in finite if f and f.get("ci95")]
    if len(finite) >= 2 and max(f["ci95"][0] for f in finite) <= min(f["ci95"][1] for f in finite):
        lines.append("  Reading: the finite ε measured give re-identification that cannot be told apart (their 95 % intervals "
                     "overlap): on this model ε does not yet trade privacy for utility between them; only ε = inf brings the "
                     "person back.")
    chain: list[tuple[str, dict]] = []  # ε values whose 95 % intervals are apart, in order
    for p in points:
        r = p["judges"].get(judge, {}).get("rank1")
        if r and r.get("ci95") and (not chain or r["ci95"][0] > chain[-1][1]["ci95"][1]):
            chain.append(("inf" if p["epsilon"] == "inf" else f"{float(p['epsilon']):g}", r))
    if len(chain) >= 3:
        lines.append(f"  Reading: ε = {', '.join(e for e, _ in chain)} give clearly different re-identification (95 % "
                     f"intervals apart): on this model ε is a knob, from {100 * chain[0][1]['value']:.3g} % at ε = {chain[0][0]} "
                     f"to {100 * chain[-1][1]['value']:.3g} % at ε = {chain[-1][0]} (the solid mask's floor is below).")
    for name, key in (("solid mask (the floor)", "floor_mask"), ("original photo", "originals")):
        j = (curve.get(key) or {}).get(judge, {})
        lines.append(f"  {name}: {_fmt_rate(j.get('rank1'))} rank-1, {_fmt_rate(j.get('verify_accept'))} accepted")
    return "\n".join(lines)
