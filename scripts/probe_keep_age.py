#!/usr/bin/env python
"""Where does `--keep age` lose the age? A diagnosis on UTKFace faces held out of the renderer.

For the UTKFace faces the training bundle marks held out (never trained on; labels from the file
names), runs the pipeline with each setting given as JSON and prints, per setting: FaceRes age
MAE against the label and against FaceRes on the original, the slope of the output's FaceRes age
on the original's, and the same slope for the dlib age coordinate (the kept direction) of the
output re-embedded. ``--shrink`` / ``--stretch`` post-process the conditional release (the drawn
rest scaled towards its expected value, the kept coordinate stretched about its mean) — an
experiment, not a product option. FaceRes is an evaluation judge: use this to diagnose, not to fit.

    python scripts/probe_keep_age.py '{"inf": {"epsilon": "inf"}, "keep": {"epsilon": 1, "keep": ["age"]}}'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("settings", help='JSON {label: identitydp keyword arguments}')
    ap.add_argument("--bundle", type=Path, default=Path(".data/v2_128.npz"))
    ap.add_argument("--train", type=Path, default=Path("../shared/data/train"))
    ap.add_argument("--shrink", type=float, default=1.0)
    ap.add_argument("--stretch", type=float, default=1.0)
    ap.add_argument("--json", type=Path, help="write per-face figures here")
    args = ap.parse_args()

    import torch
    from PIL import Image

    from identitydp.eval.measure import FaceGeometry, Measurer
    from identitydp.generate.checkpoint import load_generator
    from identitydp.models.registry import weight_path
    from identitydp.pipeline import Anonymizer
    from identitydp.privacy import centre
    from identitydp.privacy import keep as keep_module

    torch.set_num_threads(1)
    rebuild = keep_module.ConditionalProjection.rebuild

    def post_processed(self, kept, coords):
        return rebuild(self, self.mean_kept + args.stretch * (kept - self.mean_kept), coords * args.shrink)

    keep_module.ConditionalProjection.rebuild = post_processed
    bundle = np.load(args.bundle)
    names = [str(n) for n, held in zip(bundle["names"], bundle["heldout"]) if held and str(n).startswith("utkface/")]
    settings = json.loads(args.settings)
    anonymizers = {label: Anonymizer("identitydp", seed=0, **kw) for label, kw in settings.items()}
    detector = next(iter(anonymizers.values())).detector
    measurer = Measurer()
    directions = keep_module.AttributeDirections.load()
    age_direction = directions.directions[directions.names.index("age")]
    mean = load_generator(weight_path("identitydp_renderer_v2"))[1].cpu().numpy().astype(np.float64)
    rows = []
    for name in names:
        image = np.asarray(Image.open(args.train / name).convert("RGB"))
        dets = detector.detect(image)
        if len(dets) == 0:
            continue
        j = int(np.argmax(dets.scores))
        face = FaceGeometry(dets.boxes[j].astype(float), dets.landmarks[j].astype(float))
        images = [image] + [a.anonymize(image, dets)[0] for a in anonymizers.values()]
        m = measurer.measure(images, [face] * len(images), ["faceres", "dlib"])
        z = centre(m["dlib"].astype(np.float64), mean)
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        rows.append({"name": name, "label": int(Path(name).name.split("_")[0]), "age": m["age"].tolist(),
                     "dlib_age": (z @ age_direction).tolist()})
    labels = ["original", *settings]
    label_age = np.array([r["label"] for r in rows])
    age = np.array([r["age"] for r in rows])
    dlib_age = np.array([r["dlib_age"] for r in rows])
    print(f"{len(rows)} held-out UTKFace faces; shrink {args.shrink}, stretch {args.stretch}")
    for i, label in enumerate(labels):
        print(f"{label:12s} FaceRes MAE vs label {np.abs(age[:, i] - label_age).mean():5.1f} y, "
              f"vs original {np.abs(age[:, i] - age[:, 0]).mean():5.1f} y, "
              f"slope on original {np.polyfit(age[:, 0], age[:, i], 1)[0]:.2f}; "
              f"dlib age slope {np.polyfit(dlib_age[:, 0], dlib_age[:, i], 1)[0]:.2f} "
              f"(r {np.corrcoef(dlib_age[:, 0], dlib_age[:, i])[0, 1]:.2f})")
    if args.json:
        args.json.write_text(json.dumps({"labels": labels, "rows": rows}))


if __name__ == "__main__":
    main()
