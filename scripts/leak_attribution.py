#!/usr/bin/env python
"""Which of the v2 renderer's inputs carries the person into an anonymized face?

At ε = 1 the identity vector the renderer gets is noise, yet an independent judge still accepts
some (original, anonymized) pairs of the same photo (full LFW: 1.4 % with v2d, 0.95 % with v2x).
The renderer's other inputs are the context outside the repaint mask, the mask's own outline (the
face's shape), the coarse colour of the inner face (a G × G grid) and the sketch (pose). This script runs one method setting
over the evaluation's LFW probes exactly as ``identitydp eval`` does (same protocol, detections,
seeded draws and FAR thresholds, the originals' measurements from the eval cache) with one of
the renderer's inputs replaced at a time, and prints, per judge, the mean similarity of each
anonymized probe to its own original, the accepted pairs at FAR 0.1 % and the rank-1 against the
original gallery — so the leak is attributed to an input, with a continuous measure (the mean
similarity) that is much less noisy than the accepted-pair count.

Variants (``--variants``, comma-separated):

* ``base``: the setting as it is;
* ``grid1`` / ``grid2``: the coarse colour on a 1 × 1 / 2 × 2 grid instead of the trained one
  (4 × 4 for v2d, 2 × 2 for v2x);
* ``fixed-id``: every face gets the same identity vector (one draw): what is left is what the
  renderer and the judge read from everything but the identity;
* ``convex``: the repaint mask is the convex hull of the trained polygon, jaw pushed out by 8 %
  (the face's own outline hidden; the renderer was not trained on it);
* ``context-blur``: the context outside the mask is blurred (σ = 4 % of the crop) before the
  renderer sees it (the renderer reads less of the hair and ears; the pasted output keeps the
  real context, so this isolates what the *renderer* takes from the context).

This is a diagnostic for the generator's developers, not a product option; the figures that count
are ``identitydp eval``'s.

    python scripts/leak_attribution.py "identitydp:epsilon=1;gender_from_context=true;sharpen=0.35" \
        --variants base,grid1,fixed-id -o runs/attrib
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

VARIANTS = ("base", "grid1", "grid2", "fixed-id", "convex", "context-blur")


@contextmanager
def patched(variant: str):
    """Replace one renderer input for the duration of the block (module-level patches)."""
    import torch

    from identitydp.generate import inpaint, inpaint_conditions

    saved = []

    def patch(obj, name, value):
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    if variant in ("grid1", "grid2"):
        grid = int(variant[-1])
        original_input = inpaint.generator_input
        patch(inpaint, "generator_input", lambda images, mask, sketch, _grid=4: original_input(images, mask, sketch, grid))
    elif variant == "fixed-id":
        original_forward = inpaint.InpaintGenerator.forward
        fixed = torch.nn.functional.normalize(torch.randn(1, 128, generator=torch.Generator().manual_seed(7)), dim=1)

        def forward(self, images, mask, sketch, z, *args, **kwargs):
            return original_forward(self, images, mask, sketch, fixed.to(z).expand_as(z), *args, **kwargs)

        patch(inpaint.InpaintGenerator, "forward", forward)
    elif variant == "convex":
        original_mask = inpaint_conditions.inner_face_mask

        def mask(landmarks68, size, feather=0.04, dilate=0.03, lift=0.55, grow=0.0, convex=False):
            return original_mask(landmarks68, size, feather, dilate, lift, max(grow, 0.08), True)

        patch(inpaint_conditions, "inner_face_mask", mask)
    elif variant == "context-blur":
        import cv2

        original_input = inpaint.generator_input

        def blurred_input(images, mask, sketch, grid=4):
            side = images.shape[-1]
            arr = images.detach().float().cpu().numpy()
            soft = np.stack([cv2.GaussianBlur(a.transpose(1, 2, 0), (0, 0), 0.04 * side).transpose(2, 0, 1) for a in arr])
            return original_input(torch.from_numpy(soft).to(images), mask, sketch, grid)

        patch(inpaint, "generator_input", blurred_input)
    elif variant != "base":
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    try:
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("setting", help="one identitydp eval method setting (a v2 renderer)")
    ap.add_argument("-o", "--out", type=Path, required=True, help="folder for attribution.json")
    ap.add_argument("--variants", default="base,grid1,fixed-id,convex,context-blur")
    ap.add_argument("--people", type=int, default=None, help="probe people (default: all 1,680)")
    ap.add_argument("--judges", default="mobileface,faceres")
    ap.add_argument("--lfw", default=str(REPO.parent / "shared" / "data" / "lfw"))
    args = ap.parse_args(argv)

    from tqdm import tqdm

    from identitydp.eval.config import EvalConfig, parse_method_spec
    from identitydp.eval.methods import make_runner
    from identitydp.eval.metrics import paired_distance, rank1
    from identitydp.eval.runner import JUDGE_METRIC, EvalRun

    judges = args.judges.split(",")
    (setting,) = parse_method_spec(args.setting)
    cfg = EvalConfig(lfw_dir=args.lfw, methods=[args.setting], people=args.people, judges=judges,
                     utility=False, realism=False, attacks=False, diversity_images=0, speed_images=0)
    args.out.mkdir(parents=True, exist_ok=True)
    run = EvalRun(cfg, args.out / "eval", progress=True)
    o = run.prepare()
    keys = run.protocol.probes
    geoms, dets = run.anonymizer_inputs(keys)
    results = {}
    for variant in args.variants.split(","):
        runner = make_runner(setting, cfg.threshold, cfg.seed)  # fresh: the same draws for every variant
        embedded = {j: [] for j in judges}
        with patched(variant):
            for start in tqdm(range(0, len(keys), cfg.batch), desc=variant, unit="batch"):
                sl = slice(start, start + cfg.batch)
                outs = runner.run([run.load(k) for k in keys[sl]], dets[sl]).images
                measured = run.measurer.measure(outs, geoms[sl], judges)
                for j in judges:
                    embedded[j].append(measured[j])
        row = {}
        for j in judges:
            anon = np.concatenate(embedded[j])
            metric = JUDGE_METRIC[j]
            d = paired_distance(o.probe[j], anon, metric)
            thr, _ = run.thresholds[j]
            hits = float(np.mean(rank1(anon, o.gallery[j], metric)))
            # The same statistic against another person's original photo: the floor of the mean.
            other = 1 - paired_distance(np.roll(o.probe[j], 1, axis=0), anon, metric) if metric == "cosine" else None
            row[j] = {"mean_similarity": float(np.mean(1 - d)) if metric == "cosine" else float(-np.mean(d)),
                      "mean_similarity_other_person": None if other is None else float(np.mean(other)),
                      "accepted": int(np.sum(d < thr)), "accept_rate": float(np.mean(d < thr)), "rank1": hits}
            print(f"{variant:>13} {j:>10}: mean similarity {row[j]['mean_similarity']:.4f} "
                  f"(other person {row[j]['mean_similarity_other_person'] or float('nan'):.4f})  "
                  f"accepted {row[j]['accepted']:3d}/{len(keys)} ({100 * row[j]['accept_rate']:.2f} %)  "
                  f"rank-1 {100 * hits:.2f} %", flush=True)
        results[variant] = row
        (args.out / "attribution.json").write_text(json.dumps({"setting": setting.key, "probes": len(keys),
                                                               "variants": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
