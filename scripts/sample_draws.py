#!/usr/bin/env python
"""Grid of several IdentityDP draws of every face of one photo: how varied and how clean they are.

Rows: the photo's largest faces; columns: the original face, then ``--draws`` anonymized versions
(seeds 0, 1, …, so reproducible and *not* private: for looking, not publishing). The method's
parameters are the product's defaults (``identitydp.jobs.with_product_defaults``: at ε ≤ 16 the
gender from the context) unless ``--gender`` says otherwise.

    python scripts/sample_draws.py samples/group.jpg -o docs/results/lfw300-gender-from-context/sample_group_context2.jpg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--faces", type=int, default=4, help="the largest faces shown")
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--gender", choices=["auto", "on", "off"], default="auto",
                    help="the new face's gender: auto = the product default, on = from the context, off = drawn")
    ap.add_argument("--weights", default=None, help="renderer weights (registry name or file; default: the registered v2)")
    ap.add_argument("--size", type=int, default=160, help="side of each cell, px")
    args = ap.parse_args()

    from compare_renderers import face_crop

    from identitydp.io import read_image
    from identitydp.jobs import AnonymizerConfig, with_product_defaults

    params: dict = {"epsilon": args.epsilon}
    if args.weights:
        params["weights"] = args.weights
    if args.gender != "auto":
        params["gender_from_context"] = args.gender == "on"
    params = with_product_defaults("identitydp", params)
    image = read_image(args.image).pixels
    outputs = []
    detections = None
    for seed in range(args.draws):
        anonymizer = AnonymizerConfig.create("identitydp", seed=seed, **params).build()
        if detections is None:
            detections = anonymizer.detect(image)
        outputs.append(anonymizer.anonymize(image, detections)[0])
    if detections is None or len(detections) == 0:
        raise SystemExit(f"no face found in {args.image}")
    boxes = detections.boxes
    order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[: args.faces]
    rows = [np.concatenate([face_crop(img, boxes[i], args.size) for img in [image, *outputs]], 1) for i in order]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
    print(f"wrote {args.out}: {len(order)} faces x {args.draws} draws, {params}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
