#!/usr/bin/env python3
"""Before/after grid of the IdentityDP renderers on LFW faces (evaluation data, never trained on).

Rows: LFW photos (the first image of people spread over the alphabet). Columns: the original,
then each renderer at each ε, as a crop around the face at the photo's own resolution (no
resampling), so softness and seams show as they are. Seeded (reproducible; not private). The
gender comes from the context where the product's default takes it from there (``--gender``).

    python scripts/compare_renderers.py -o docs/results/renderers_v1_v2.png \
        --renderer v1=identitydp_generator --renderer v2=runs/v2-cpu/generator_fp16.safetensors

A renderer spec may carry further anonymizer parameters after ``;``, e.g.
``--renderer "sharp=identitydp_renderer_v2;sharpen=0.35"`` (values as in ``identitydp eval``
method specs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from identitydp.detect import CenterFaceDetector  # noqa: E402
from identitydp.generate.anonymizer import RENDERERS, IdentityDPAnonymizer  # noqa: E402
from identitydp.jobs.config import GENDER_FROM_CONTEXT_MAX_EPSILON  # noqa: E402
from identitydp.eval.config import parse_method_spec  # noqa: E402
from identitydp.io import read_image  # noqa: E402


def pick_images(lfw: Path, n: int) -> list[Path]:
    people = sorted(p for p in (lfw / "lfw-deepfunneled").iterdir() if p.is_dir())
    step = max(1, len(people) // n)
    return [sorted(people[i].glob("*.jpg"))[0] for i in range(0, step * n, step)]


def face_crop(image: np.ndarray, box: np.ndarray, size: int = 160) -> np.ndarray:
    x1, y1, x2, y2 = box
    cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * 0.75
    m = np.array([[size / (2 * half), 0, size / 2 - cx * size / (2 * half)],
                  [0, size / (2 * half), size / 2 - cy * size / (2 * half)]])
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


def label(img: np.ndarray, text: str) -> np.ndarray:
    out = img.copy()
    cv2.putText(out, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--lfw", type=Path, default=REPO.parent / "shared" / "data" / "lfw")
    p.add_argument("--renderer", action="append", required=True, metavar="NAME=WEIGHTS",
                   help="label=registry name or path of an exported generator[;key=value...] (repeat)")
    p.add_argument("--epsilon", action="append", type=float, default=None, help="ε values (default 1 and inf)")
    p.add_argument("--faces", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gender", choices=["auto", "on", "off"], default="auto",
                   help="the new face's gender from the context: auto = as the product does by default (v2 renderers, "
                        "ε ≤ 16), on, or off (drawn with the rest of the identity)")
    args = p.parse_args(argv)
    epsilons = args.epsilon or [1.0, float("inf")]
    detector = CenterFaceDetector()
    columns = [("original", None, None)]
    anonymizers = {}
    for spec in args.renderer:
        name, rest = spec.split("=", 1)
        weights, _, extra = rest.partition(";")
        params = dict(parse_method_spec(f"identitydp:{extra}")[0].params) if extra.strip() else {}
        for eps in epsilons:
            v2 = weights != RENDERERS["v1"]
            from_context = v2 and (args.gender == "on" or (args.gender == "auto" and eps <= GENDER_FROM_CONTEXT_MAX_EPSILON))
            anonymizers[(name, eps)] = IdentityDPAnonymizer(epsilon=eps, weights=weights, seed=args.seed,
                                                            gender_from_context=from_context, **params)
            columns.append((f"{name} eps={eps:g}", name, eps))
    rows = []
    for path in pick_images(args.lfw, args.faces):
        image = read_image(path).pixels
        det = detector.detect(image)
        if not len(det):
            continue
        j = int(np.argmax((det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])))
        one = det.subset([j])
        cells = []
        for title, name, eps in columns:
            out = image if name is None else anonymizers[(name, eps)].anonymize_frame(image, one, None).image
            cells.append(label(face_crop(out, det.boxes[j]), title if not rows else ""))
        rows.append(np.concatenate(cells, 1))
    grid = np.concatenate(rows, 0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out} ({len(rows)} faces x {len(columns)} columns)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
