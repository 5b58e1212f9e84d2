#!/usr/bin/env python
"""Which anonymized LFW probes does a judge still accept as their own original, and what do they look like?

Runs one method setting over the evaluation's probes exactly as ``identitydp eval`` does (same
protocol, seed, detections and FAR threshold, the originals' measurements from the eval cache),
lists the probes whose (original, anonymized) pair the judge accepts, most similar first, and
writes a grid of them: original probe | anonymized, with the judge's similarity. For looking at
*why* a pair is accepted (a mask that missed the face, a profile, the context), not for figures:
the figures are ``identitydp eval``'s.

    python scripts/leak_cases.py "identitydp:epsilon=1;gender_from_context=true;sharpen=0.35" -o runs/leaks
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("setting", help="one identitydp eval method setting, e.g. 'identitydp:epsilon=1'")
    ap.add_argument("-o", "--out", type=Path, required=True, help="folder for cases.json and cases.jpg")
    ap.add_argument("--people", type=int, default=None, help="probe people (default: all 1,680)")
    ap.add_argument("--judge", default="mobileface", choices=["mobileface", "faceres", "dlib"])
    ap.add_argument("--show", type=int, default=24, help="accepted pairs in the grid (most similar first)")
    ap.add_argument("--lfw", default=str(REPO.parent / "shared" / "data" / "lfw"))
    args = ap.parse_args(argv)

    from identitydp.eval.config import EvalConfig, parse_method_spec
    from identitydp.eval.methods import make_runner
    from identitydp.eval.metrics import paired_distance
    from identitydp.eval.runner import JUDGE_METRIC, EvalRun, sample_crop

    (setting,) = parse_method_spec(args.setting)
    cfg = EvalConfig(lfw_dir=args.lfw, methods=[args.setting], people=args.people, judges=[args.judge],
                     utility=False, realism=False, attacks=False, diversity_images=0, speed_images=0)
    args.out.mkdir(parents=True, exist_ok=True)
    run = EvalRun(cfg, args.out / "eval", progress=True)
    o = run.prepare()
    keys = run.protocol.probes
    geoms, dets = run.anonymizer_inputs(keys)
    runner = make_runner(setting, cfg.threshold, cfg.seed)
    # In the eval's order, one seeded anonymizer: the same draws as its run of this setting.
    from tqdm import tqdm

    embedded, crops = [], []
    for start in tqdm(range(0, len(keys), cfg.batch), desc="anonymize", unit="batch"):
        sl = slice(start, start + cfg.batch)
        outs = runner.run([run.load(k) for k in keys[sl]], dets[sl]).images
        embedded.append(run.measurer.measure(outs, geoms[sl], [args.judge])[args.judge])
        crops += [sample_crop(out, g) for out, g in zip(outs, geoms[sl])]
    anon = {args.judge: np.concatenate(embedded)}
    d = paired_distance(o.probe[args.judge], anon[args.judge], JUDGE_METRIC[args.judge])
    thr, _ = run.thresholds[args.judge]
    order = np.argsort(d)
    accepted = [int(i) for i in order if d[i] < thr]
    cases = [{"key": keys[i], "distance": float(d[i]), "box": geoms[i].box.tolist(), "source": geoms[i].source}
             for i in order[: max(len(accepted), args.show)]]
    (args.out / "cases.json").write_text(json.dumps({"setting": setting.key, "judge": args.judge, "threshold": thr,
                                                     "accepted": len(accepted), "probes": len(keys), "cases": cases}, indent=1))
    print(f"{args.judge} accepts {len(accepted)} of {len(keys)} pairs (threshold {thr:.4f})")
    cells = []
    for i in order[: args.show]:
        pair = np.concatenate([sample_crop(run.load(keys[i]), geoms[i]), crops[i]], 1)
        text = f"{keys[i][:22]} {1 - d[i] if JUDGE_METRIC[args.judge] == 'cosine' else d[i]:.2f}{' *' if d[i] < thr else ''}"
        cv2.putText(pair, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 2, cv2.LINE_AA)
        cv2.putText(pair, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
        cells.append(pair)
    while len(cells) % 4:
        cells.append(np.zeros_like(cells[0]))
    rows = [np.concatenate(cells[r : r + 4], 1) for r in range(0, len(cells), 4)]
    cv2.imwrite(str(args.out / "cases.jpg"), cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out / 'cases.json'} and {args.out / 'cases.jpg'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
