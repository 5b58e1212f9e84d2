"""``identitydp privacy``: explain what a privacy setting guarantees."""

from __future__ import annotations

import argparse
import sys

from .._cli_types import bounded_float, bounded_int, epsilon, positive_float

DEFAULT_DIM = 128


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("privacy", help="explain the ε-IdentityDP guarantee of a setting")
    sub = parser.add_subparsers(dest="privacy_command", metavar="ACTION")
    sub.required = True
    ex = sub.add_parser(
        "explain",
        help="say in plain words what a mechanism and ε mean",
        description="Print sensitivity, noise scale, noise vs signal and the bound on an attacker's odds.",
    )
    ex.add_argument("--mechanism", choices=("laplace", "gaussian", "metric"), default="laplace")
    ex.add_argument("--epsilon", type=epsilon, required=True, help="ε > 0, or 'inf' for no noise")
    ex.add_argument("--delta", type=bounded_float(0, 1, low_open=True, high_open=True), default=None, help="δ for --mechanism gaussian (e.g. 1e-6)")
    ex.add_argument("--dim", type=bounded_int(1, 65536), default=DEFAULT_DIM, help=f"embedding dimension d (default {DEFAULT_DIM})")
    ex.add_argument("--k", type=bounded_int(1, 65536), default=None, help="add noise in k projected, whitened coordinates")
    ex.add_argument("--radius", type=positive_float(), default=None, help="ball radius R in whitened units (with --k)")
    ex.add_argument("--projection", default=None, help="a fitted projection .safetensors (gives d, k and R; default: the "
                    "registered identity_projection_k16, the domain `identitydp anonymize` uses)")
    ex.add_argument("--sphere", action="store_true", help="explain the whole unit sphere in R^--dim instead (anonymize --sphere)")
    ex.add_argument("--keep", type=_kept_attributes, metavar="ATTRS",
                    help="explain anonymize --keep ATTRS (gender, age or gender,age): what is released without DP, the "
                         "domain of the rest, and the measured cost")
    ex.add_argument("--gender-from-context", action=argparse.BooleanOptionalAction, default=None,
                    help="explain anonymize --gender-from-context: the gender coordinate set from the context around the "
                         "face, nothing of the face released without DP. Default: as anonymize does, on up to ε 16 "
                         "with the default mechanism and domain and nothing kept; --no-gender-from-context explains the "
                         "gender drawn with the rest of the identity")
    ex.add_argument("--renderer", choices=("v1", "v2"), default="v2",
                    help="whose measured re-identification curve to show (as anonymize --renderer; default v2, the default renderer)")
    ex.set_defaults(func=_explain)


def _kept_attributes(text: str) -> list[str]:
    from .._cli_anonymize import kept_attributes

    return kept_attributes(text)


def _split_mechanism(args: argparse.Namespace, *, option: str, given: str, keep, kept_from: str):
    """The mechanism of ``anonymize --keep`` / ``--gender-from-context``: the identity split along
    attribute directions, the rest noised in its own domain (so the domain options do not apply)."""
    from ..errors import PrivacyError
    from .keep import KeptAttributesMechanism

    if args.projection or args.k is not None or args.radius is not None or args.dim != DEFAULT_DIM:
        raise PrivacyError(f"{option} has its own domain (the rest of the identity given {given}); drop "
                           "--projection / --k / --radius / --dim (--sphere picks the sphere of the rest)")
    return KeptAttributesMechanism(args.mechanism, epsilon=args.epsilon, delta=args.delta, keep=keep,
                                   projection=not args.sphere, kept_from=kept_from)


def _write_explanation(mech, notes: list[str], protects: str) -> None:
    from dataclasses import replace

    from .explain import explain_mechanism

    sys.stdout.write(replace(explain_mechanism(mech.inner, notes=tuple(notes)), protects=protects).text() + "\n")


def _explain_kept(args: argparse.Namespace) -> int:
    from .explain import kept_curve_text

    mech = _split_mechanism(args, option="--keep", given="the kept values", keep=args.keep, kept_from="identity")
    names = ", ".join(mech.attributes.names)
    notes = [f"Released WITHOUT DP: each face's coordinate along the public {names} direction(s) of identity space "
             "(fitted on training faces), stored in the ledger with the release."]
    if mech.conditional is not None:
        notes.append(f"The rest of the identity is noised given the kept values: {mech.conditional.k} whitened coordinates "
                     "of a public Gaussian of training identities, clipped to the ball of the Domain line "
                     "(identitydp.privacy.keep.ConditionalProjection).")
    else:
        notes.append("The rest of the identity is noised on its unit sphere (--sphere).")
    protects = (f"the rest of the identity vector, between any two faces with the same kept {names} (the probability of "
                "any output changes by at most the factor below if this person's identity is replaced by that of anyone "
                "with the same kept values; faces with different kept values are told apart by those values exactly).")
    _write_explanation(mech, notes, protects)
    sys.stdout.write(kept_curve_text(mech.attributes.names, mechanism=args.mechanism, epsilon=args.epsilon,
                                     conditional=mech.conditional is not None, renderer=args.renderer) + "\n")
    return 0


def _context_gender_by_default(args: argparse.Namespace) -> bool:
    """Whether ``anonymize`` with these options would set the gender from the context by default."""
    from ..jobs.config import gender_from_context_by_default

    own_domain = args.sphere or args.projection or args.k is not None or args.radius is not None or args.dim != DEFAULT_DIM
    return (args.renderer == "v2" and not own_domain
            and gender_from_context_by_default({"epsilon": args.epsilon, "mechanism": args.mechanism, "keep": args.keep}))


def _explain_context_gender(args: argparse.Namespace, *, by_default: bool = False) -> int:
    from ..errors import PrivacyError
    from ..jobs.config import GENDER_FROM_CONTEXT_MAX_EPSILON
    from .explain import context_curve_text

    if args.keep:
        raise PrivacyError("--gender-from-context sets the gender from the context; drop --keep (or it)")
    mech = _split_mechanism(args, option="--gender-from-context", given="the context's gender", keep=("gender",),
                            kept_from="context")
    notes = ["Released WITHOUT DP: nothing of the face. The gender coordinate of the released identity is set from the "
             "context around the face (hair, ears, neck, clothes; the crop with the inner face painted out, read by "
             "identitydp.models.context_gender), a function of pixels the output shows unchanged; each face's value is in "
             "its report (set_from_context)."]
    if mech.conditional is not None:
        notes.append(f"The identity is noised given that gender value: {mech.conditional.k} whitened coordinates of a "
                     "public Gaussian of training identities, clipped to the ball of the Domain line.")
    if by_default:
        notes.append(f"This is what `identitydp anonymize` does by default at ε ≤ {GENDER_FROM_CONTEXT_MAX_EPSILON:g} "
                     "(--no-gender-from-context draws the gender with the rest of the identity; privacy explain "
                     "--no-gender-from-context explains that).")
    protects = ("the identity vector, between any two faces in the same context (the probability of any output changes by "
                "at most the factor below if this person's identity is replaced by anyone's, the pixels around the face "
                "staying as they are).")
    _write_explanation(mech, notes, protects)
    sys.stdout.write(context_curve_text(mechanism=args.mechanism, epsilon=args.epsilon,
                                        conditional=mech.conditional is not None, renderer=args.renderer) + "\n")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from ..errors import PrivacyError
    from .domains import L2Ball, Projection, UnitSphere, placeholder_radius
    from .explain import explain, measured_curve_text

    if args.gender_from_context:
        return _explain_context_gender(args)
    if args.gender_from_context is None and _context_gender_by_default(args):
        return _explain_context_gender(args, by_default=True)
    if args.keep:
        return _explain_kept(args)
    notes: list[str] = []
    if args.sphere and (args.projection or args.k is not None):
        raise PrivacyError("--sphere is the unit sphere: drop --projection / --k")
    if args.projection is None and args.k is None and args.radius is None and not args.sphere and args.dim == DEFAULT_DIM:
        from ..generate.anonymizer import PROJECTION_NAME  # the domain the product uses by default
        from ..models.registry import weight_path

        args.projection = str(weight_path(PROJECTION_NAME))
    shipped = False
    if args.projection:
        from pathlib import Path

        from ..generate.anonymizer import PROJECTION_NAME
        from ..models.registry import weight_path

        shipped = Path(args.projection).resolve() == weight_path(PROJECTION_NAME).resolve()
        if args.k is not None or args.radius is not None:
            raise PrivacyError("--projection already fixes k and R; drop --k/--radius")
        domain = Projection.load(args.projection)
        notes.append(f"Projection: {args.projection} (d={domain.dim}, k={domain.k}, R={domain.radius:.4g}; {domain.source}).")
    elif args.k is not None:
        radius = args.radius
        if radius is None:
            radius = placeholder_radius(args.k)
            notes.append(
                f"Note: R = {radius:.4g} is a PLACEHOLDER (95th percentile of the norm of a standard normal in {args.k} dims); "
                "fit a projection on training embeddings for the measured value."
            )
        if args.k > args.dim:
            raise PrivacyError(f"--k ({args.k}) cannot exceed --dim ({args.dim})")
        domain = L2Ball(args.k, radius)
        notes.append(f"The {args.dim}-dim embedding is projected onto {args.k} public principal directions, whitened and clipped to this ball.")
    else:
        if args.radius is not None:
            raise PrivacyError("--radius needs --k (without projection the domain is the unit sphere)")
        domain = UnitSphere(args.dim)
    explanation = explain(args.mechanism, epsilon=args.epsilon, delta=args.delta, domain=domain, notes=tuple(notes))
    sys.stdout.write(explanation.text() + "\n")
    sys.stdout.write(measured_curve_text(args.mechanism, epsilon=args.epsilon, domain=domain if shipped else None,
                                         renderer=args.renderer) + "\n")
    return 0
