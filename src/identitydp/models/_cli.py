"""`identitydp verify` (same person?) and `identitydp models` (list and check the weights)."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "verify",
        help="are the largest faces of two images the same person? (LFW-calibrated)",
        description="Detect the largest face in each image, embed both with a recognizer and print their cosine "
        "distance and a same/different verdict at the threshold calibrated on LFW View 2. Use it to check "
        "whether an anonymized output can still be matched to its original.",
    )
    p.add_argument("image_a", metavar="A.jpg")
    p.add_argument("image_b", metavar="B.jpg")
    p.add_argument("--model", choices=["dlib", "mobileface", "faceres"], default="dlib",
                   help="recognizer (default: dlib, the pipeline's own encoder; mobileface and faceres are independent)")
    p.add_argument("--strict", action="store_true", help="use the FAR = 0.1 %% threshold instead of the best-accuracy one")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_verify)

    m = subparsers.add_parser("models", help="list the pretrained weights and verify their checksums",
                              description="List every registered weight file with its source and license, and verify its SHA-256.")
    m.set_defaults(func=run_models)


def run_verify(args) -> int:
    from ..io import read_image
    from .verification import verify

    a, b = read_image(args.image_a), read_image(args.image_b)
    result = verify(a.pixels, b.pixels, args.model, names=(args.image_a, args.image_b))
    threshold = result.threshold.strict_below if args.strict else result.threshold.same_below
    same = result.distance < threshold
    if args.json:
        print(json.dumps({
            "a": args.image_a, "b": args.image_b, "model": result.model, "distance": round(result.distance, 6),
            "threshold": round(threshold, 6), "strict": bool(args.strict), "same": bool(same),
            "boxes": [[round(float(v), 1) for v in box] for box in result.boxes],
        }))
    else:
        verdict = "same person" if same else "different people"
        kind = "FAR 0.1 %" if args.strict else f"best accuracy, {100 * result.threshold.lfw_accuracy:.2f} % on LFW"
        print(f"{verdict}: {result.model} cosine distance {result.distance:.4f} "
              f"({'<' if same else '>='} threshold {threshold:.4f}, {kind})")
    return 0


def run_models(args) -> int:
    from ..errors import WeightsError
    from .registry import registry, weight_path

    bad = 0
    for entry in registry().values():
        try:
            path = weight_path(entry.name)
            status = f"ok  {path.stat().st_size / 1e6:6.2f} MB"
        except WeightsError as exc:
            status = f"BAD {exc}"
            bad += 1
        print(f"{entry.name:<22} {status}\n    {entry.source}\n    origin: {entry.origin}\n    license: {entry.license}")
    return 1 if bad else 0
